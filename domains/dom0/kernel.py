"""Domain-0's kernel: xenstored, xenconsoled and the toolstack in one process.

Boot order: Xen's start_info -> grant table and timer -> the physical
devices (drivers.probe) -> xenstored (binds
VIRQ_DOM_EXC) -> xenconsoled -> toolstack and its control socket -> the
domains listed in <rundir>/auto (like xendomains) -> idle.

A restarted Domain-0 (start_info flag SIF_DOM0_RESTART: the one before it
died and Xen kept the DomUs) boots the same way, but each service takes up
what the run directory says was running: xenstored its tree and the guests'
rings, xenconsoled the guests' consoles, the toolstack its domain records
(<rundir>/libxl), blkback every vbd (a new handshake, so each blkfront
re-issues what was in flight), netback every vif (each netfront rebuilds
its rings; frames in flight are lost). Nothing is autostarted again.

Networking: ``bridges`` holds Dom0's learning switches by name ("xenbr0"
always exists; a vif naming another bridge creates it); netback makes each
vif a port, physical NIC drivers add theirs.
"""

import glob
import json
import os
import sys
import time

from domains.dom0.blkback.service import BlkbackService
from domains.dom0.bridge import Bridge
from domains.dom0.drivers import nic, probe, watch
from domains.dom0.drivers.ops import build_phys_ops
from domains.dom0.netback.service import NetbackService
from domains.dom0.toolstack import ops
from domains.dom0.toolstack.control import ControlServer
from domains.dom0.toolstack.toolstack import Toolstack, ToolstackError
from domains.dom0.xenconsoled import Xenconsoled
from domains.dom0.xenstored.service import XenstoredService
from hypervisor.public.start_info import SIF_DOM0_RESTART
from hypervisor.public.xen import ShutdownReason

HALT_GRACE_S = 3.0
STOPPED = ("shutdown", "crashed", "dying")


class Dom0:
    def __init__(self, kernel) -> None:
        self.kernel = kernel
        si = kernel.early_boot()
        self.restarted = bool(si.flags & SIF_DOM0_RESTART)
        self.bridges: dict[str, Bridge] = {"xenbr0": Bridge("xenbr0")}  # before any NIC
        self.disks = probe(kernel)  # the physical devices Xen assigned to us
        self.nics = nic.probe(kernel)
        watch(kernel, {**self.disks, **self.nics})  # their deaths and replacements
        nic.attach(self.bridges, self.nics)
        self.xenstored = XenstoredService(kernel, restart=self.restarted)
        self.xs = self.xenstored.local
        self.consoled = Xenconsoled(kernel, kernel.rundir)
        self.toolstack = Toolstack(self)
        if self.restarted:
            self.toolstack.take_over()
        self.blkback = BlkbackService(self)
        self.netback = NetbackService(self)
        self.control = ControlServer(self, {**ops.build_ops(self), **build_phys_ops(self),
                                            **nic.build_nic_ops(self)})
        self.consoled.on_output.append(lambda _d: self.control.recheck())
        self.toolstack.listeners.append(self.control.recheck)
        # Parked requests may wait on any node of a domain (xs_wait).
        self.xs.watch("/local/domain", "control", lambda *_: self._recheck_soon())
        self.halting = False

    def _recheck_soon(self) -> None:
        if self.control.parked:
            self.kernel.call_soon_once(self.control.recheck)

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic():12.6f}] {msg}", flush=True)
        try:
            self.kernel.console_io(msg)
        except OSError:
            pass

    def autostart(self) -> None:
        if self.restarted:
            return  # the domains it started are still running
        for path in sorted(glob.glob(os.path.join(self.kernel.rundir, "auto", "*.json"))):
            with open(path) as f:
                spec = json.load(f)
            try:
                self.toolstack.create(spec)
            except (ToolstackError, OSError) as exc:
                self.log(f"autostart {os.path.basename(path)}: {exc}")

    def halt(self) -> None:
        """Shut every guest down (destroying stragglers), then power off."""
        self.halting = True
        guests = [i["domid"] for i in self.toolstack.infos() if i["domid"] != 0]
        for domid in guests:
            for key in ("on_poweroff", "on_reboot", "on_crash"):
                self.toolstack.specs.get(domid, {})[key] = "destroy"
            try:
                self.toolstack.request_shutdown(domid, "poweroff")
            except Exception:
                pass
        self.kernel.call_later(HALT_GRACE_S, self._power_off)
        self.toolstack.listeners.append(self._check_halted)
        self._check_halted()

    def _check_halted(self) -> None:
        # a domain already shut down, crashed (preserved) or dying (a zombie
        # whose pages are still mapped) has nothing left to do: no grace for it
        if self.halting and all(i["domid"] == 0 or i["state"] in STOPPED
                                for i in self.toolstack.infos()):
            self.halting = False
            self.kernel.call_soon(self._power_off)

    def _power_off(self) -> None:
        if not self.kernel.running:
            return
        for info in self.toolstack.infos():
            if info["domid"] != 0:
                try:
                    self.toolstack.destroy(info["domid"])
                except Exception as exc:
                    self.log(f"halt: destroy {info['domid']}: {exc}")
        self.log("Domain-0: power off")
        self.control.close()
        self.kernel.shutdown(ShutdownReason.poweroff)


def main(kernel) -> None:
    dom0 = Dom0(kernel)
    again = "restarted" if dom0.restarted else "up"
    dom0.log(f"Domain-0 {again}: xenstored, xenconsoled and the toolstack ready "
             f"(pid {os.getpid()})")
    dom0.autostart()
    kernel.run()
    sys.stdout.flush()
