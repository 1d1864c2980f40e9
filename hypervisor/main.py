"""Entry point of the hypervisor process (started by the launcher)."""

import argparse
import os
import signal
import socket
import sys

from setproctitle import setproctitle

from hypervisor import spawn
from hypervisor.core import HostCrash, Hypervisor
from hypervisor.iommu import parse_device_arg

EXIT_HALT = 0
EXIT_CRASH = 3


def parse(argv):
    p = argparse.ArgumentParser(prog="hypervisor")
    p.add_argument("--host", required=True)
    p.add_argument("--rundir", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--memory", type=int, default=2048, help="MiB of host memory")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--dom0-memory", type=int, default=64)
    p.add_argument("--dom0-vcpus", type=int, default=1)
    p.add_argument("--dom0-kernel", default="domains.dom0.kernel")
    p.add_argument("--device", action="append", default=[],
                   help="NAME:KIND:SECRETHEX:CTLFD:IRQ[:IMAGEHEX] of a device the launcher "
                   "started (IMAGEHEX: its image path, hex-encoded)")
    p.add_argument("--firmware-fd", type=int, default=-1,
                   help="the launcher's firmware channel (hypervisor.public.platform rule 6)")
    return p.parse_args(argv)


def _wakeup_fd() -> int:
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    _wakeup_fd.keep = (r, w)
    return r.fileno()


def main(argv=None) -> int:
    a = parse(argv)
    setproctitle(f"xenolab[{a.host}]: hypervisor (Xen)")
    spawn.die_with_parent(signal.SIGTERM)  # the launcher died: power off
    xen = Hypervisor(a.host, a.rundir, a.endpoint, a.memory, a.cpus, a.firmware_fd)
    for arg in a.device:
        xen.add_device(*parse_device_arg(arg))
    xen.console.write(f"Xen {xen.host} booting: {a.memory} MiB, {a.cpus} CPUs")
    code = EXIT_HALT
    try:
        xen.build_dom0(a.dom0_memory, a.dom0_vcpus, a.dom0_kernel)
        xen.loop(_wakeup_fd())
    except HostCrash as exc:
        xen.console.write(f"{exc}: the host goes down")
        code = EXIT_CRASH
    finally:
        xen.halt()
    return code


if __name__ == "__main__":
    sys.exit(main())
