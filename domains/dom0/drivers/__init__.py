"""Domain-0's drivers for the host's physical devices.

Rules:
1. Dom0 learns its hardware from Xen (PHYSDEVOP device_list), as a PV Dom0
   learns it from the PCI bus that Xen lets it see; every device is Dom0's.
2. `probe` brings every disk up at boot: all controllers are told "init"
   first, then Dom0 waits for each one's info page with a bounded
   SCHEDOP_poll on its IRQ port. A disk that is late stays in the table and
   becomes ready when its interrupt arrives; one that fails is logged and
   left out. Probing never raises.
"""

import time

import zmq

from domains.dom0.drivers.disk import DiskDriver
from domains.kernel.hypercall import XenError
from hypervisor.public.platform import PhysdevOp
from hypervisor.public.xen import Hypercall

__all__ = ["DiskDriver", "probe"]

PROBE_TIMEOUT_S = 5.0
_ctx: zmq.Context | None = None  # one context for every MMIO socket of Dom0


def _context() -> zmq.Context:
    global _ctx
    if _ctx is None:
        _ctx = zmq.Context(io_threads=1)
    return _ctx


def device_list(kernel) -> list[dict]:
    try:
        _, devs = kernel.xen.check(Hypercall.physdev_op, PhysdevOp.device_list)
    except XenError:
        return []  # a hypervisor without devices
    return devs if isinstance(devs, list) else []


def probe(kernel, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, DiskDriver]:
    """Bring up every disk controller; returns {name: driver}."""
    disks: dict[str, DiskDriver] = {}
    for dev in device_list(kernel):
        if dev.get("kind", dev.get("type")) != "disk":
            continue
        try:
            disks[dev["name"]] = DiskDriver(kernel, dev, _context())
        except (OSError, MemoryError, KeyError, ValueError) as exc:
            print(f"disk {dev.get('name')}: not probed: {exc}", flush=True)
    deadline = time.monotonic() + timeout_s
    for name, disk in disks.items():
        if disk.wait_ready(max(0.0, deadline - time.monotonic())):
            print(f"disk {name}: {disk.capacity_sectors} sectors, "
                  f"{disk.info['model'] if disk.info else ''}, IRQ {disk.irq} "
                  f"on port {disk.port}", flush=True)
        else:
            print(f"disk {name}: not ready yet ({disk.error or 'no info page'})", flush=True)
    return disks
