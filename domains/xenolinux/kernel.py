"""XenoLinux's boot: console, xenbus, shutdown control, block and network devices, init.

Boot order follows a PV Linux: start_info -> grant table -> timer VIRQ ->
hvc console -> xenbus (xenstore ring) -> control/shutdown watch -> blkfront
-> netfront -> (xvda connected) mount the root ext2 -> init
(domains.xenolinux.system). Each vif becomes a NetDevice in ``netdevs``
(eth<devid>); ``on_netdev`` hears of each one the first time it connects.
"""

import time
from collections.abc import Callable

from domains.kernel.console import Console
from domains.kernel.xenbus import XenbusClient
from domains.xenolinux import blkfront, netfront
from domains.xenolinux.system import XenoLinux
from hypervisor.public.blkif import vdev_devid
from hypervisor.public.start_info import StartInfo
from hypervisor.public.xen import XEN_VERSION, ShutdownReason

ROOT_DEVID = vdev_devid("xvda")
SHUTDOWN_REQUESTS = {
    "poweroff": ShutdownReason.poweroff,
    "halt": ShutdownReason.poweroff,
    "reboot": ShutdownReason.reboot,
    "crash": ShutdownReason.crash,
}


class Guest:
    """A booted XenoLinux: what kernels built on it (tests, benches) use."""

    def __init__(self, kernel, si: StartInfo) -> None:
        self.kernel, self.si = kernel, si
        self.t0 = time.monotonic()
        self.console = Console(kernel, kernel.page(si.console_mfn), si.console_evtchn)
        self.xs = XenbusClient(kernel, kernel.page(si.store_mfn), si.store_evtchn)
        self.home = f"/local/domain/{kernel.domid}"
        # Run before a requested shutdown (syncing filesystems); it calls back.
        self.before_shutdown: Callable[[Callable[[], None]], None] | None = None
        self.netdevs: dict = {}  # name -> NetDevice (a Netfront)
        self.on_netdev: Callable[[object], None] | None = None  # set by the system

    def netdev_connected(self, dev) -> None:
        if self.on_netdev is not None:
            self.on_netdev(dev)

    def printk(self, msg: str) -> None:
        # "\r\n" as Linux's hvc console writes it: readable on a raw terminal
        self.console.write(f"[{time.monotonic() - self.t0:12.6f}] {msg}\r\n")

    def watch_shutdown(self) -> None:
        for feature in ("poweroff", "reboot"):
            self.xs.write(f"control/feature-{feature}", "1")
        self.xs.watch("control/shutdown", "control-shutdown", self._on_shutdown)

    def _on_shutdown(self, path: str, token: str) -> None:
        req = self.xs.try_read("control/shutdown", "")
        reason = SHUTDOWN_REQUESTS.get(req or "")
        if reason is None:
            return
        self.xs.write("control/shutdown", "")
        self.printk(f"xenbus: shutdown request '{req}': shutting down")
        if self.before_shutdown is None:
            self.kernel.shutdown(reason)
        else:
            self.before_shutdown(lambda: self.kernel.shutdown(reason))


def boot(kernel, on_disk=None) -> Guest:
    si = kernel.early_boot()
    g = Guest(kernel, si)
    g.printk(f"Linux version 6.1.0-xenolab (XenoLinux) on Xen {XEN_VERSION[0]}."
             f"{XEN_VERSION[1]}, domid {kernel.domid}")
    g.printk(f"Memory: {si.nr_pages * 4} KiB ({kernel.frames.nr_free} free frames)")
    g.printk(f"Grant table: {kernel.boot['max_grant_frames']} frames; "
             f"timer VIRQ on port {kernel.timer_port}")
    g.printk(f"hvc0: console on port {si.console_evtchn}")
    name = g.xs.read("name")
    g.printk(f"xenbus: connected to xenstore on port {si.store_evtchn}; I am '{name}'")
    g.watch_shutdown()
    g.disks = {} if "blkfront=off" in si.cmdline.split() else blkfront.probe(g, on_disk)
    if "netfront=off" not in si.cmdline.split():
        g.netdevs = netfront.probe(g, g.netdev_connected)
    return g


def main(kernel) -> None:
    holder: list = []

    def on_disk(front) -> None:
        if front.devid == ROOT_DEVID and holder:
            holder[0].root_connected(front)

    g = boot(kernel, on_disk)
    holder.append(XenoLinux(g))
    for front in g.disks.values():  # connected while we were still booting
        if front.connected:
            on_disk(front)
    kernel.run()
