"""The entry point of every domain process (what Xen execs).

Xen passes three fds (control socket, memory, shared_info); the first
message on the control socket says who we are. We then load the kernel the
config names and call its ``main(kernel)``.
"""

import argparse
import importlib
import signal
import socket
import sys

import msgpack
from setproctitle import setproctitle

from domains.kernel.kernel import Kernel
from domains.kernel.osutil import die_with_parent

KERNELS = {"xenolinux": "domains.xenolinux.kernel", "dom0": "domains.dom0.kernel"}


def parse(argv):
    p = argparse.ArgumentParser(prog="domain")
    p.add_argument("--ctl-fd", type=int, required=True)
    p.add_argument("--mem-fd", type=int, required=True)
    p.add_argument("--shinfo-fd", type=int, required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    a = parse(argv)
    ctl = socket.socket(fileno=a.ctl_fd)
    boot = msgpack.unpackb(ctl.recv(4096))
    module = KERNELS.get(boot["kernel"], boot["kernel"])
    setproctitle(f"xenolab[{boot['host']}]: {boot['name']} (domid {boot['domid']}, {module})")
    kernel = Kernel(boot, ctl, a.mem_fd, a.shinfo_fd)
    importlib.import_module(module).main(kernel)
    # A kernel returns after SCHEDOP_shutdown: its vCPU never runs again,
    # and the process waits for the toolstack to destroy the domain.
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
