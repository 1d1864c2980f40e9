"""Domain-0's drivers for the host's physical devices.

Rules:
1. Dom0 learns its hardware from Xen (PHYSDEVOP device_list), as a PV Dom0
   learns it from the PCI bus that Xen lets it see; every device is Dom0's.
2. `probe` brings every disk up at boot: all controllers are told "init"
   first, then Dom0 waits for each one's info page with a bounded
   SCHEDOP_poll on its IRQ port. A disk that is late stays in the table and
   becomes ready when its interrupt arrives; one that fails is logged and
   left out. Probing never raises.
3. Hot replacement (hypervisor.public.platform rule 6): Dom0 binds
   VIRQ_DEVICE; on it, it reads Xen's device list and hands each disk
   driver its entry (state and generation). What a driver does with the
   commands a dead device held is Dom0's policy, per disk: `on_crash`
   ("wait", the default, or "fail") from <rundir>/disks.json, written by
   the launcher from the host description (like a module parameter), and
   switchable at run time (`xenolab dev on-crash`).
"""

import json
import os
import time

import zmq

from domains.dom0.drivers.disk import DiskDriver
from domains.kernel.hypercall import XenError
from hypervisor.public.platform import PhysdevOp
from hypervisor.public.xen import Hypercall, Virq

__all__ = ["DiskDriver", "probe", "watch"]

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
    policy = _policy(kernel)
    for dev in device_list(kernel):
        if dev.get("kind", dev.get("type")) != "disk":
            continue
        on_crash = policy.get(dev.get("name"), {}).get("on_crash", "wait")
        try:
            disks[dev["name"]] = DiskDriver(kernel, dev, _context(), on_crash=on_crash)
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


def _policy(kernel) -> dict:
    try:
        with open(os.path.join(kernel.rundir, "disks.json")) as f:
            policy = json.load(f)
    except (OSError, ValueError):
        return {}
    return policy if isinstance(policy, dict) else {}


def watch(kernel, disks: dict[str, DiskDriver]) -> int:
    """Rule 3: follow device deaths and replacements; returns the VIRQ's port."""
    def changed(_port: int) -> None:
        for dev in device_list(kernel):
            disk = disks.get(dev.get("name"))
            if disk is not None:
                disk.device_changed(dev)
    port = kernel.evtchn.bind_virq(Virq.DEVICE)
    kernel.evtchn.on(port, changed)
    changed(port)  # a device that died while we probed
    return port
