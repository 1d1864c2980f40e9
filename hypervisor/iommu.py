"""The IOMMU for Domain-0's devices, and the devices Xen knows.

Rules (hypervisor.public.platform):
1. Dom0's own frames are identity-mapped for its devices; grant frames Dom0
   maps with GNTMAP_device_map get a bus frame in the foreign window and an
   entry in the table, which devices read (never write).
2. A device receives a domain's memory object before the first entry that
   names the domain is written, so an entry it can see is always usable.
3. Unmapping clears the entry at once; the bus frame is reused later.
"""

import os
import socket
from dataclasses import dataclass, field

from hypervisor import spawn
from hypervisor.memory import MemoryObject
from hypervisor.public.platform import (
    IOMMU_ENTRIES,
    IOMMU_FOREIGN_BASE,
    DeviceState,
    iommu_decode,
    iommu_entry,
)


@dataclass(eq=False)
class Device:
    name: str
    kind: str
    secret: bytes
    ctl: socket.socket
    irq: int
    image: str = ""  # a disk's image file (absolute path): which vbd `params` it serves
    state: DeviceState = DeviceState.booting
    generation: int = 0  # 0 for the device of boot, +1 for each replacement
    doms_given: set[int] = field(default_factory=set)

    @property
    def up(self) -> bool:
        return self.state is DeviceState.up


def parse_device_arg(arg: str) -> tuple[str, str, bytes, int, int, str]:
    """NAME:KIND:SECRETHEX:CTLFD:IRQ[:IMAGEHEX] from the launcher.

    IMAGEHEX is the image path's bytes in hex (so a ':' in it is safe);
    without it the device has no image ("").
    """
    fields = arg.split(":")
    if len(fields) not in (5, 6):
        raise ValueError(f"--device {arg!r}: expected NAME:KIND:SECRETHEX:CTLFD:IRQ[:IMAGEHEX]")
    name, kind, secret, fd, irq = fields[:5]
    image = os.fsdecode(bytes.fromhex(fields[5])) if len(fields) == 6 else ""
    return name, kind, bytes.fromhex(secret), int(fd), int(irq), image


class Iommu:
    def __init__(self) -> None:
        self.table = MemoryObject("xenolab-iommu", IOMMU_ENTRIES * 8)
        self.entries = self.table.view.cast("Q")
        self.free = list(range(IOMMU_ENTRIES - 1, -1, -1))
        self.by_handle: dict[tuple[int, int], int] = {}  # (mapper, handle) -> index

    def map(self, mapper: int, handle: int, granter: int, pfn: int, writable: bool) -> int:
        """Install an entry; returns the bus frame (0 when the window is full)."""
        if not self.free:
            return 0
        index = self.free.pop()
        self.entries[index] = iommu_entry(granter, pfn, writable)
        self.by_handle[(mapper, handle)] = index
        return IOMMU_FOREIGN_BASE + index

    def unmap(self, mapper: int, handle: int) -> None:
        index = self.by_handle.pop((mapper, handle), None)
        if index is not None:
            self.entries[index] = 0
            self.free.append(index)

    def unmap_all(self, mapper: int) -> None:
        for key in [k for k in self.by_handle if k[0] == mapper]:
            self.unmap(*key)

    def granters(self) -> set[int]:
        """Every domain that some entry names (a new device needs their memory)."""
        return {iommu_decode(self.entries[i])[0] for i in self.by_handle.values()
                if self.entries[i]}

    def give_memory(self, dev: Device, domid: int, mem: MemoryObject) -> bool:
        """False if the device is gone (its control socket is closed)."""
        if domid in dev.doms_given or mem.fd < 0:
            return True
        try:
            spawn.send_memory(dev.ctl, {"dom": domid, "nr_pages": mem.nr_pages}, mem.fd)
        except OSError:
            return False  # EPIPE: the device died; the main loop notices its socket
        dev.doms_given.add(domid)
        return True

    def give_table(self, dev: Device) -> bool:
        try:
            spawn.send_memory(dev.ctl, {"iommu": IOMMU_ENTRIES}, self.table.fd)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.entries.release()
        self.table.close()
