"""XenoLinux address spaces: page tables in our own frames, validated by Xen.

Rules:
1. Layout (32-bit, two levels). ``0 .. vmmax`` is user space, private to an
   address space (vmmax <= VMMAX). ``VMMAX .. HYPERVISOR_VIRT_START`` is the
   kernel region: a direct map of our pseudo-physical memory (kernel va =
   VMMAX + pfn * PAGE_SIZE, like Linux's PAGE_OFFSET), supervisor-only, in L1
   tables built once per kernel (KernelMap) and shared by every address
   space, so each one maps the kernel like Linux does. Above is Xen's.
2. A frame in use as a page table is mapped read-only in the direct map
   (Xen refuses any writable mapping of it): KernelMap protects a frame
   before it becomes a table and unprotects it once Xen has released it.
3. Construction follows reference 6.3: a new table is zeroed while it is
   still a plain frame of ours, then filled with checked updates (an L1's
   entries, an L2's kernel slots), made read-only, then pinned (the L2) or
   hooked into a validated L2 (an L1, which Xen then validates), and only
   then loaded with NEW_BASEPTR.
4. Everything goes through one MmuBatch per address space; ``map_page`` and
   ``unmap_page`` only queue, ``flush()`` sends. Changed entries of the
   current address space get an INVLPG (or a full flush) at the end of the
   batch. The page-fault path flushes pending updates before it believes a
   fault (reference 6.1): catch PageFault, ``flush()``, decide, ``map_page``,
   ``flush()``, retry.
5. If Xen refuses an entry, the address space re-reads its tables (what Xen
   accepted is the truth) and frees tables that never got installed; the
   MmuError is raised on. Data frames belong to the caller: ``destroy()``
   frees only the page-table frames.
"""

from __future__ import annotations

import errno
import struct
import weakref

from domains.kernel.mmu import Mmu, MmuBatch, MmuError, mfn_to_pfn, pfn_to_mfn, pte_ptr
from hypervisor.public.mmu import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_USER,
    HYPERVISOR_VIRT_START,
    L1_PAGETABLE_ENTRIES,
    L2_PAGE_SPAN,
    L2_PAGETABLE_SHIFT,
    MMUEXT_INVLPG_LOCAL,
    MMUEXT_NEW_BASEPTR,
    MMUEXT_PIN_L1_TABLE,
    MMUEXT_PIN_L2_TABLE,
    MMUEXT_TLB_FLUSH_LOCAL,
    MMUEXT_UNPIN_TABLE,
    make_pte,
)
from hypervisor.public.xen import PAGE_SHIFT, PAGE_SIZE

VMMAX = 0xC000_0000  # where the kernel region starts (Linux's PAGE_OFFSET)
KERNEL_SLOTS = range(VMMAX >> L2_PAGETABLE_SHIFT, HYPERVISOR_VIRT_START >> L2_PAGETABLE_SHIFT)
INVLPG_MAX = 8  # more changed pages than this in one batch: flush the whole TLB
_TABLE = struct.Struct(f"<{L1_PAGETABLE_ENTRIES}I")
_KERNEL_PDE = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED
_USER_PDE = _KERNEL_PDE | _PAGE_USER


def kernel_va(pfn: int) -> int:
    """The direct-map address of one of our frames (supervisor-only)."""
    return VMMAX + pfn * PAGE_SIZE


def cpu_for(kernel) -> Mmu:
    """The kernel's vCPU MMU (the page walker that loads and stores use)."""
    return Mmu.of(kernel)


def _read_table(kernel, pfn: int) -> tuple[int, ...]:
    return _TABLE.unpack_from(kernel.mem, pfn * PAGE_SIZE)


_KMAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class KernelMap:
    """The kernel region every address space shares (Rule 1), and
    swapper_pg_dir: an L2 holding only it, loaded whenever no process's
    address space is. ``KernelMap.of(kernel)`` builds it on first use."""

    def __init__(self, kernel) -> None:
        self.k = kernel
        self.nr_mapped = min(kernel.boot["nr_pages"], len(KERNEL_SLOTS) * L1_PAGETABLE_ENTRIES)
        n_l1 = -(-self.nr_mapped // L1_PAGETABLE_ENTRIES)
        self.l1s = [kernel.frames.alloc() for _ in range(n_l1)]
        self.swapper = kernel.frames.alloc()
        self.ro = {*self.l1s, self.swapper}  # frames the direct map maps read-only
        batch = MmuBatch(kernel)
        for k, l1 in enumerate(self.l1s):
            _zero(kernel, l1)
            first = k * L1_PAGETABLE_ENTRIES
            for pfn in range(first, min(first + L1_PAGETABLE_ENTRIES, self.nr_mapped)):
                batch.queue_update(self._pte_ptr(pfn), self._pte(pfn))
        _zero(kernel, self.swapper)
        self.fill_l2(self.swapper, batch)
        for l1 in self.l1s:
            batch.queue_ext(MMUEXT_PIN_L1_TABLE, pfn_to_mfn(kernel, l1))
        batch.queue_ext(MMUEXT_PIN_L2_TABLE, pfn_to_mfn(kernel, self.swapper))
        batch.queue_ext(MMUEXT_NEW_BASEPTR, pfn_to_mfn(kernel, self.swapper))
        batch.flush()

    @classmethod
    def of(cls, kernel) -> KernelMap:
        kmap = _KMAPS.get(kernel)
        if kmap is None:
            kmap = _KMAPS[kernel] = cls(kernel)
        return kmap

    def fill_l2(self, l2: int, batch: MmuBatch) -> None:
        """Queue the kernel slots of a new L2 (a plain frame still)."""
        l2_mfn = pfn_to_mfn(self.k, l2)
        for k, l1 in enumerate(self.l1s):
            val = make_pte(pfn_to_mfn(self.k, l1), _KERNEL_PDE)
            batch.queue_update(pte_ptr(l2_mfn, KERNEL_SLOTS[k]), val)

    def new_table(self, batch: MmuBatch) -> int:
        """A zeroed frame, queued to become read-only in the direct map."""
        pfn = self.k.frames.alloc()
        _zero(self.k, pfn)
        self.protect(pfn, batch)
        return pfn

    def protect(self, pfn: int, batch: MmuBatch) -> None:
        if pfn < self.nr_mapped and pfn not in self.ro:
            self.ro.add(pfn)
            batch.queue_update(self._pte_ptr(pfn), self._pte(pfn))

    def unprotect(self, pfn: int, batch: MmuBatch) -> None:
        if pfn in self.ro:
            self.ro.discard(pfn)
            batch.queue_update(self._pte_ptr(pfn), self._pte(pfn))

    def switch_to(self, batch: MmuBatch) -> None:
        """Queue loading swapper_pg_dir (no process's address space)."""
        batch.queue_ext(MMUEXT_NEW_BASEPTR, pfn_to_mfn(self.k, self.swapper))

    def resync(self) -> None:
        """Re-read which frames the direct map really maps read-only."""
        self.ro = set()
        for k, l1 in enumerate(self.l1s):
            for i, pte in enumerate(_read_table(self.k, l1)):
                if pte & _PAGE_PRESENT and not pte & _PAGE_RW:
                    self.ro.add(k * L1_PAGETABLE_ENTRIES + i)

    def _pte_ptr(self, pfn: int) -> int:
        l1 = self.l1s[pfn // L1_PAGETABLE_ENTRIES]
        return pte_ptr(pfn_to_mfn(self.k, l1), pfn % L1_PAGETABLE_ENTRIES)

    def _pte(self, pfn: int) -> int:
        rw = 0 if pfn in self.ro else _PAGE_RW | _PAGE_DIRTY
        return make_pte(pfn_to_mfn(self.k, pfn), _PAGE_PRESENT | _PAGE_ACCESSED | rw)


def _zero(kernel, pfn: int) -> None:
    """Clear a frame that is not (yet) a page table: our own data page."""
    kernel.page(pfn)[:] = bytes(PAGE_SIZE)


class AddressSpace:
    """One set of page tables: user space ``0 .. vmmax`` plus the kernel region."""

    def __init__(self, kernel, vmmax: int = VMMAX) -> None:
        if not 0 < vmmax <= VMMAX or vmmax % PAGE_SIZE:
            raise ValueError(f"vmmax {vmmax:#x} must be page-aligned and at most {VMMAX:#x}")
        self.k, self.vmmax = kernel, vmmax
        self.kmap = KernelMap.of(kernel)
        self.mmu = Mmu.of(kernel)
        self.batch = MmuBatch(kernel)
        self.l2_pfn = self.kmap.new_table(self.batch)
        self.l2_mfn = pfn_to_mfn(kernel, self.l2_pfn)
        self._l1: dict[int, int] = {}  # L2 slot -> L1 pfn
        self._pte: dict[int, int] = {}  # vpn -> the entry we asked for
        self._stale: set[int] = set()  # pages whose entry changed (for the TLB)
        self.destroyed = False
        self.kmap.fill_l2(self.l2_pfn, self.batch)
        self.batch.queue_ext(MMUEXT_PIN_L2_TABLE, self.l2_mfn)
        try:
            self.batch.flush()
        except MmuError:
            self.kmap.resync()  # the pin never happened: give the frame back
            self.kmap.unprotect(self.l2_pfn, self.batch)
            self.batch.flush()
            kernel.frames.release(self.l2_pfn)
            raise

    @property
    def current(self) -> bool:
        """Is this the base pointer Xen has loaded?"""
        return self.mmu.base == self.l2_mfn

    @property
    def pending(self) -> int:
        """Queued entries not yet sent to Xen."""
        return len(self.batch)

    def map_page(self, va: int, pfn: int, writable: bool, user: bool = True) -> None:
        """Queue ``va -> pfn``; an L1 table is added on demand."""
        self._check_va(va)
        pfn_to_mfn(self.k, pfn)  # ValueError unless the frame is ours
        slot = va >> L2_PAGETABLE_SHIFT
        l1 = self._l1.get(slot)
        if l1 is None:
            l1 = self._l1[slot] = self.kmap.new_table(self.batch)
            val = make_pte(pfn_to_mfn(self.k, l1), _USER_PDE)
            self.batch.queue_update(pte_ptr(self.l2_mfn, slot), val)  # Xen validates the L1
        flags = _PAGE_PRESENT | _PAGE_ACCESSED
        flags |= (_PAGE_RW | _PAGE_DIRTY if writable else 0) | (_PAGE_USER if user else 0)
        self._set(va, l1, make_pte(pfn_to_mfn(self.k, pfn), flags))

    def unmap_page(self, va: int) -> int | None:
        """Queue removing ``va``'s mapping; returns the pfn it mapped, or None."""
        self._check_va(va)
        old = self._pte.get(va >> PAGE_SHIFT)
        if old is None:
            return None
        self._set(va, self._l1[va >> L2_PAGETABLE_SHIFT], 0)
        return mfn_to_pfn(self.k, old >> PAGE_SHIFT)

    def mapping(self, va: int) -> tuple[int, bool, bool] | None:
        """(pfn, writable, user) mapped (or queued) at ``va``, or None."""
        pte = self._pte.get(va >> PAGE_SHIFT)
        if pte is None:
            return None
        return mfn_to_pfn(self.k, pte >> PAGE_SHIFT), bool(pte & _PAGE_RW), bool(pte & _PAGE_USER)

    def l1_tables(self) -> dict[int, int]:
        """L2 slot -> pfn of the L1 table hooked there (or queued to be)."""
        return dict(self._l1)

    def flush(self) -> None:
        """Send the queued updates (Rule 4); MmuError if Xen refused one (Rule 5)."""
        if self.current and self._stale:
            if len(self._stale) > INVLPG_MAX:
                self.batch.queue_ext(MMUEXT_TLB_FLUSH_LOCAL)
            else:
                for va in sorted(self._stale):
                    self.batch.queue_ext(MMUEXT_INVLPG_LOCAL, va)
        self._stale.clear()
        try:
            self.batch.flush()
        except MmuError:
            self._resync()
            raise

    def switch_to(self) -> None:
        """Flush, then MMUEXT_NEW_BASEPTR: Xen loads these tables (and the TLB empties)."""
        self._stale.clear()
        self.batch.queue_ext(MMUEXT_NEW_BASEPTR, self.l2_mfn)
        self.flush()

    def destroy(self) -> None:
        """Unpin and free the page tables (the current base first moves to
        swapper_pg_dir). The data frames they mapped stay the caller's."""
        if self.destroyed:
            return
        if self.current:
            self.kmap.switch_to(self.batch)
        self.batch.queue_ext(MMUEXT_UNPIN_TABLE, self.l2_mfn)  # releases every L1 too
        tables = [self.l2_pfn, *self._l1.values()]
        for pfn in tables:
            self.kmap.unprotect(pfn, self.batch)
        self._stale.clear()
        self.flush()
        self.destroyed = True
        self._l1.clear()
        self._pte.clear()
        for pfn in tables:
            self.k.frames.release(pfn)

    # -- helpers -------------------------------------------------------------

    def _check_va(self, va: int) -> None:
        if self.destroyed:
            raise OSError(errno.EINVAL, "address space destroyed")
        if not 0 <= va < self.vmmax or va % PAGE_SIZE:
            raise ValueError(f"{va:#x} is not a user page below {self.vmmax:#x}")

    def _set(self, va: int, l1: int, val: int) -> None:
        vpn = va >> PAGE_SHIFT
        if vpn in self._pte:
            self._stale.add(va)
        if val:
            self._pte[vpn] = val
        else:
            self._pte.pop(vpn, None)
        index = vpn % L1_PAGETABLE_ENTRIES
        self.batch.queue_update(pte_ptr(pfn_to_mfn(self.k, l1), index), val)

    def _resync(self) -> None:
        """After a refusal: our tables as Xen accepted them are the truth."""
        self.kmap.resync()
        l2 = _read_table(self.k, self.l2_pfn)
        installed = {slot: mfn_to_pfn(self.k, l2[slot] >> PAGE_SHIFT)
                     for slot in range(-(-self.vmmax // L2_PAGE_SPAN)) if l2[slot] & _PAGE_PRESENT}
        orphans = set(self._l1.values()) - set(installed.values())
        self._l1, self._pte = installed, {}
        for slot, l1 in installed.items():
            for i, pte in enumerate(_read_table(self.k, l1)):
                if pte & _PAGE_PRESENT:
                    self._pte[slot * L1_PAGETABLE_ENTRIES + i] = pte
        for pfn in orphans:
            self.kmap.unprotect(pfn, self.batch)
        if self.current:  # the batch's INVLPGs may not have run
            self.batch.queue_ext(MMUEXT_TLB_FLUSH_LOCAL)
        self.batch.flush()
        for pfn in orphans:
            self.k.frames.release(pfn)
