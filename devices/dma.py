"""The device side of the IOMMU: bus addresses to the exact frames, or no.

Rules (hypervisor.public.platform):
1. A bus frame number (bfn) below Dom0's nr_pages is Dom0's own pfn
   (identity map, writable). A bfn in [foreign_base, foreign_base + entries)
   is an entry of the table Xen writes; we map that table read-only and read
   each entry with one aligned 8-byte load. Anything else is refused.
2. An entry must be valid, and writable if the device writes the frame
   (a disk READ). The entry's domain memory must be one Xen gave us; Xen
   sends it before writing the first entry that names the domain, so a
   missing one is fetched from the control socket (`refresh`) once.
3. Translation returns memoryviews of the exact frames and nothing more;
   a refused translation raises DmaFault and the caller touches no memory.
4. Translation is checked when a command is accepted. Xen may clear an
   entry afterwards (Dom0 unmapped a grant with a command in flight): that
   is the driver's bug, as on hardware, where the transfer would fault.
"""

import mmap
from collections.abc import Callable

from hypervisor.public.diskdev import SECTOR_SIZE
from hypervisor.public.platform import iommu_decode
from hypervisor.public.xen import PAGE_SHIFT, PAGE_SIZE


class DmaFault(Exception):
    """The IOMMU refused an access; the message says which and why."""


class Iommu:
    """Translate bfns for one device (sans-IO: views in, views out)."""

    def __init__(self, dom0_pages: int, foreign_base: int,
                 refresh: Callable[[], None] = lambda: None) -> None:
        self.dom0_pages = dom0_pages
        self.foreign_base = foreign_base
        self.table: memoryview | None = None  # cast("Q") of the read-only table
        self.memories: dict[int, memoryview] = {}
        self.refresh = refresh
        self.faults = 0

    def set_table(self, table: memoryview) -> None:
        self.table = table if table.format == "Q" else table.cast("Q")

    def add_memory(self, domid: int, view: memoryview) -> None:
        """A domain's memory (replaces an older object for a reused domid)."""
        self.memories[domid] = view

    def drop_memory(self, domid: int) -> None:
        self.memories.pop(domid, None)

    def translate(self, bfn: int, write: bool) -> tuple[int, int]:
        """(domid, pfn) the device may access; DmaFault otherwise."""
        if 0 <= bfn < self.dom0_pages:
            return 0, bfn
        index = bfn - self.foreign_base
        if self.table is None or not 0 <= index < len(self.table):
            raise self._fault(f"bfn {bfn:#x} is outside every IOMMU window")
        decoded = iommu_decode(self.table[index])  # one aligned 8-byte load
        if decoded is None:
            raise self._fault(f"bfn {bfn:#x} is not mapped")
        domid, pfn, writable = decoded
        if write and not writable:
            raise self._fault(f"bfn {bfn:#x} (d{domid} pfn {pfn:#x}) is read-only")
        return domid, pfn

    def frame(self, bfn: int, write: bool) -> memoryview:
        """The 4 KiB frame at ``bfn`` (writable view only if ``write``)."""
        domid, pfn = self.translate(bfn, write)
        mem = self._memory(domid)
        if (pfn + 1) << PAGE_SHIFT > len(mem):
            raise self._fault(f"bfn {bfn:#x}: d{domid} pfn {pfn:#x} beyond its memory")
        page = mem[pfn << PAGE_SHIFT:(pfn + 1) << PAGE_SHIFT]
        return page if write else page.toreadonly()

    def span(self, bfn: int, first: int, last: int, write: bool) -> memoryview:
        """Bytes of sectors first..last (inclusive, 512-byte units) of ``bfn``."""
        page = self.frame(bfn, write)
        return page[first * SECTOR_SIZE:(last + 1) * SECTOR_SIZE]

    def contiguous(self, bfn: int, nr_frames: int, write: bool) -> memoryview:
        """One view over ``nr_frames`` frames that must be consecutive Dom0
        memory (queue pairs; the identity map makes Dom0 frames contiguous)."""
        if bfn < 0 or bfn + nr_frames > self.dom0_pages:
            raise self._fault(f"bfns {bfn:#x}+{nr_frames} are not Dom0 memory")
        mem = self._memory(0)
        return mem[bfn * PAGE_SIZE:(bfn + nr_frames) * PAGE_SIZE]

    def _memory(self, domid: int) -> memoryview:
        mem = self.memories.get(domid)
        if mem is None:
            self.refresh()  # Xen sent it before the entry (rule 2)
            mem = self.memories.get(domid)
        if mem is None:
            raise self._fault(f"no memory object for d{domid}")
        return mem

    def _fault(self, why: str) -> DmaFault:
        self.faults += 1
        return DmaFault(why)


def map_memory(fd: int, nr_bytes: int, writable: bool = True) -> tuple[mmap.mmap, memoryview]:
    """mmap a memory object Xen handed us (the IOMMU table: read-only)."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    m = mmap.mmap(fd, nr_bytes, flags=mmap.MAP_SHARED, prot=prot)
    return m, memoryview(m)
