"""Xen's frame table and the PV MMU hypercalls (xen/arch/x86/mm.c), sans-IO.

Rule 1 -- machine frames. Each domain's memory is one memory object; Xen
gives it a range of machine frames ``mfn_base .. mfn_base + nr_pages`` from a
range allocator that reuses freed ranges (frames below FIRST_GUEST_MFN are
Xen's own, so no guest frame is mfn 0). mfn = mfn_base + pfn, so the P2M is
base + pfn. Real Xen promises no contiguity (SOSP'03: memory is not
contiguous, the guest keeps a P2M array); contiguity is this model's
simplification. A PTE names a frame with 20 bits: creation fails with
-ENOMEM when 2**20 frames would be exceeded.

Rule 2 -- who owns what. A frame belongs to the domain whose range holds it.
Page tables live in their owner's frames and are filled by the guest; Xen
reads and writes PTEs through its own mapping of every domain's memory (a
memoryview per domain, like grant_table.py).

Rule 3 -- types (reference 6.4). Per frame: type (PGT_none,
PGT_writable_page, PGT_l1_page_table, PGT_l2_page_table) and type_count,
plus pinned and validated. A frame changes type only at type_count 0. On the
0->1 transition to an L1/L2 type the whole table is validated, taking a
reference for every present entry; on 1->0 those references are released.
Pinning holds one type reference (not nested: a second pin is -EINVAL);
the current base pointer (NEW_BASEPTR) holds another.

Rule 4 -- what is validated where (get_page_from_l1e / get_page_from_l2e):
  * an L1 entry maps only frames of the page-table owner, or of the
    foreign domain FD that a privileged caller names (else -EBUSY, mm.c's
    ``could_not_pin``; the clause letting FD pass the right on to a domain it
    controls is not modelled: FD must own the frame); _PAGE_RW takes a
    PGT_writable_page type reference, which fails (-EBUSY) on a frame in use
    as a page table -- and a frame with writable mappings cannot become a
    page table (-EINVAL, "Bad type");
  * an L2 entry points to a frame of the same owner that validates as an L1
    (-EINVAL otherwise). Linear self-maps (an L2 entry to an L2, which Xen
    allows read-only under pv-linear-pt) are simply refused: -EINVAL;
  * disallowed flag bits, PSE among them, are -EINVAL; L2 slots from
    HYPERVISOR_VIRT_START up are Xen's: an update there is -EPERM, and
    validation ignores them (alloc_l2_table skips non-guest slots).
  * MMU_NORMAL_PT_UPDATE on a validated table validates the new entry, then
    drops the old entry's references; on any other frame of the caller it is
    a plain write under a transient PGT_writable_page reference (how a guest
    fills a table before pinning it); a page table of another type: -EINVAL.

Rule 5 -- Xen trusts its own record. For every validated table Xen keeps
the entries it took references for, and releases exactly those. In this
model the guest kernel holds a writable mapping of all its memory (it cannot
be made read-only from outside), so a table's bytes could change behind
Xen's back; the counts never do.

Rule 6 -- batches stop at the first failing entry; ``(rc, done)`` tells how
many took effect. Nothing raises on guest input.

Rule 7 -- death (domain_relinquish_resources): the base pointer and every
pin are dropped, which releases all of the domain's tables. Its range is
freed at once unless another (privileged) domain's page tables still map
its frames: then it lingers as a zombie until the last such entry goes.
"""

from __future__ import annotations

import bisect
import struct
from collections import Counter
from dataclasses import dataclass, field

from hypervisor.mm_ext import MmuExtOps
from hypervisor.mm_types import (  # noqa: F401 - PageType and PGT_* are part of this API
    TABLES,
    PageType,
    PGT_l1_page_table,
    PGT_l2_page_table,
    PGT_none,
    PGT_writable_page,
    in_range,
    is_int,
)
from hypervisor.public import mmu as abi
from hypervisor.public.mmu import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    FASTPATH_FLAG_WHITELIST,
    L1_DISALLOW_MASK,
    L1_PAGETABLE_ENTRIES,
    L2_DISALLOW_MASK,
    L2_FIRST_XEN_SLOT,
    MAX_MFN,
    PTE_SIZE,
)
from hypervisor.public.xen import DOMID_FIRST_RESERVED, DOMID_SELF, PAGE_SHIFT, PAGE_SIZE, Errno

FIRST_GUEST_MFN = 0x100  # below: Xen's own frames (the legacy first MiB)
_PTE = struct.Struct(abi.PTE_FORMAT)
_TABLE = struct.Struct(f"<{L1_PAGETABLE_ENTRIES}I")
_AD = _PAGE_ACCESSED | _PAGE_DIRTY
_NO_MEMORY = memoryview(b"")


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """One frame-table entry (``frame_info``)."""

    mfn: int
    owner: int
    type: PageType
    type_count: int
    pinned: bool
    validated: bool


@dataclass(frozen=True, slots=True)
class MmStatistics:
    domains: int
    zombies: int
    page_tables: int  # validated L1 and L2 frames
    pinned: int
    writable_pages: int  # frames typed PGT_writable_page (count > 0)
    updates: int  # mmu_update entries that took effect
    ext_ops: int  # mmuext_op entries that took effect
    tlb_flushes: int
    invlpgs: int
    failures: int


@dataclass(eq=False, slots=True)
class _Dom:
    domid: int
    base: int  # mfn_base
    nr_pages: int
    mem: memoryview  # Xen's view of the domain's memory; empty once it died
    privileged: bool
    dying: bool = False
    cr3: int = 0  # the current base pointer's mfn; holds a type reference
    foreign_refs: int = 0  # entries in other domains' tables mapping our frames
    ldt: tuple[int, int] = (0, 0)


@dataclass(eq=False, slots=True)
class _Page:
    owner: _Dom
    type: PageType = PGT_none
    count: int = 0
    pinned: bool = False
    validated: bool = False
    # index -> entry, for the present entries Xen took references for (Rule 5)
    entries: dict[int, int] = field(default_factory=dict)


class MfnRanges:
    """First-fit allocator of machine-frame ranges; freed ranges coalesce."""

    def __init__(self, first: int = FIRST_GUEST_MFN, end: int = MAX_MFN) -> None:
        self._free: list[tuple[int, int]] = [(first, end - first)]  # (start, length)

    def alloc(self, n: int) -> int | None:
        for i, (start, length) in enumerate(self._free):
            if length >= n:
                self._free[i:i + 1] = [(start + n, length - n)] if length > n else []
                return start
        return None

    def free(self, start: int, n: int) -> None:
        i = bisect.bisect(self._free, (start, n))
        self._free.insert(i, (start, n))
        merged: list[tuple[int, int]] = []
        for s, length in self._free:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((s, length))
        self._free = merged

    def free_frames(self) -> int:
        return sum(length for _, length in self._free)


_COUNTED = ("updates", "ext_ops", "tlb_flushes", "invlpgs", "failures")


class FrameTable(MmuExtOps):
    """Every machine frame's owner and type, and the PV MMU hypercalls."""

    def __init__(self, first_mfn: int = FIRST_GUEST_MFN, end_mfn: int = MAX_MFN) -> None:
        self._ranges = MfnRanges(first_mfn, end_mfn)
        self._doms: dict[int, _Dom] = {}
        self._bases: list[int] = []  # sorted mfn_base of every domain, zombies too
        self._by_base: dict[int, _Dom] = {}
        self._frames: dict[int, _Page] = {}  # frames with type_count > 0
        self._n: Counter[str] = Counter()
        self._ext = self._ext_table()

    # -- domains ---------------------------------------------------------

    def add_domain(self, domid: int, nr_pages: int, mem: memoryview,
                   privileged: bool = False) -> int:
        """Give a domain its machine frames: mfn_base, or -EINVAL/-EEXIST/-ENOMEM."""
        if not in_range(domid, DOMID_FIRST_RESERVED) or not in_range(nr_pages, MAX_MFN + 1):
            return -Errno.EINVAL
        if domid in self._doms:
            return -Errno.EEXIST
        view = _byte_view(mem, nr_pages)
        if view is None or nr_pages < 1:
            return -Errno.EINVAL
        base = self._ranges.alloc(nr_pages)
        if base is None:
            view.release()
            return -Errno.ENOMEM
        d = self._doms[domid] = _Dom(domid, base, nr_pages, view, bool(privileged))
        bisect.insort(self._bases, base)
        self._by_base[base] = d
        return base

    def remove_domain(self, domid: int) -> int:
        """domain_relinquish_resources (Rule 7): 0, -EBUSY (a zombie whose frames
        others still map; freed with the last such entry) or -ESRCH.
        Afterwards Xen no longer touches the domain's memory."""
        d = self._live(domid)
        if d is None:
            return -Errno.ESRCH
        d.dying = True
        if d.cr3:
            old, d.cr3 = d.cr3, 0
            self._put_type(old)
        for mfn in [m for m, pg in self._frames.items() if pg.owner is d and pg.pinned]:
            pg = self._frames.get(mfn)
            if pg is not None and pg.pinned:
                pg.pinned = False
                self._put_type(mfn)
        d.mem.release()
        d.mem = _NO_MEMORY
        if d.foreign_refs:
            return -Errno.EBUSY
        self._free(d)
        return 0

    def _free(self, d: _Dom) -> None:
        for mfn in [m for m, pg in self._frames.items() if pg.owner is d]:
            del self._frames[mfn]  # nothing should be left: be safe
        self._ranges.free(d.base, d.nr_pages)
        self._bases.remove(d.base)
        del self._by_base[d.base]
        self._doms.pop(d.domid, None)

    def mfn_base(self, domid: int) -> int | None:
        d = self._doms.get(domid) if is_int(domid) else None
        return None if d is None else d.base

    def domains(self) -> list[int]:
        return sorted(domid for domid, d in self._doms.items() if not d.dying)

    def zombies(self) -> list[int]:
        return sorted(domid for domid, d in self._doms.items() if d.dying)

    def free_frames(self) -> int:
        return self._ranges.free_frames()

    # -- HYPERVISOR_mmu_update ---------------------------------------------

    def mmu_update(self, domid: int, reqs: object, foreigndom: int = DOMID_SELF
                   ) -> tuple[int, int]:
        """do_mmu_update: ``reqs`` is [(ptr, val), ...]; returns (rc, done)."""
        d = self._live(domid)
        if d is None:
            return self._fail(-Errno.ESRCH), 0
        if not isinstance(reqs, list | tuple):
            return self._fail(-Errno.EINVAL), 0
        if not reqs:
            return 0, 0
        owners = self._update_owners(d, foreigndom)
        if isinstance(owners, int):
            return self._fail(owners), 0
        for done, req in enumerate(reqs):
            rc = self._one_update(d, *owners, req)
            if rc:
                return self._fail(rc), done
            self._n["updates"] += 1
        return 0, len(reqs)

    def _update_owners(self, d: _Dom, foreigndom: object) -> tuple[_Dom, _Dom] | int:
        """foreigndom: bits 15:0 FD (owner of the data frames), 31:16 PFD+1
        (owner of the page tables)."""
        if not in_range(foreigndom, 1 << 32):
            return -Errno.EINVAL
        pt, pfd = d, foreigndom >> 16
        if pfd:
            pt = self._live(pfd - 1)
            if pt is None:
                return -Errno.ESRCH
        pg = self._pg_owner(d, foreigndom & 0xFFFF)
        if pg is None:
            return -Errno.ESRCH
        if (pt is not d or pg is not d) and not d.privileged:
            return -Errno.EPERM  # xsm_mmu_update(XSM_TARGET): not privileged over them
        return pt, pg

    def _pg_owner(self, d: _Dom, fd: int) -> _Dom | None:
        """get_pg_owner. Naming oneself explicitly is refused, as in Xen;
        DOMID_IO and DOMID_XEN are not modelled."""
        if fd == DOMID_SELF:
            return d
        if fd == d.domid or fd >= DOMID_FIRST_RESERVED:
            return None
        return self._live(fd)

    def _one_update(self, d: _Dom, pt: _Dom, pg_owner: _Dom, req: object) -> int:
        if not (isinstance(req, list | tuple) and len(req) == 2
                and all(in_range(x, 1 << 64) for x in req)):
            return -Errno.EINVAL
        ptr, val = req
        cmd = ptr & abi.MMU_CMD_MASK
        ptr -= cmd
        if cmd == abi.MMU_MACHPHYS_UPDATE:
            return self._machphys(d, pt, pg_owner, ptr, val)
        mfn, idx = ptr >> PAGE_SHIFT, (ptr & (PAGE_SIZE - 1)) // PTE_SIZE
        if val >> 32 or self._owner(mfn) is not pt:
            return -Errno.EINVAL  # a 32-bit PTE; "Could not get page for normal update"
        page = self._frames.get(mfn)
        if page is not None and page.validated and page.type is PGT_l1_page_table:
            return self._mod_l1(mfn, page, idx, val, pg_owner, cmd)
        if page is not None and page.validated and page.type is PGT_l2_page_table:
            if pg_owner is not pt:
                return -Errno.EINVAL
            return self._mod_l2(mfn, page, idx, val, cmd)
        return self._plain_write(mfn, pt, idx, val)

    def _plain_write(self, mfn: int, owner: _Dom, idx: int, val: int) -> int:
        """Not a page table: a checked write under a transient writable ref."""
        if self._get_type(mfn, owner, PGT_writable_page):
            return -Errno.EINVAL
        _write_pte(owner, mfn, idx, val)
        self._put_type(mfn)
        return 0

    def _mod_l1(self, mfn: int, page: _Page, idx: int, new: int, pg_owner: _Dom,
                cmd: int) -> int:
        old = page.entries.get(idx, 0)
        if cmd == abi.MMU_PT_UPDATE_PRESERVE_AD:
            new |= old & _AD
        if new & _PAGE_PRESENT:
            if new & L1_DISALLOW_MASK:
                return -Errno.EINVAL
            if old and not (old ^ new) & ~FASTPATH_FLAG_WHITELIST:
                _set_entry(page, mfn, idx, new)  # same frame, same rights: no new refs
                return 0
            rc = self._get_l1e(new, page.owner, pg_owner)
            if rc:
                return rc
        _set_entry(page, mfn, idx, new)
        if old:
            self._put_l1e(old, page.owner)
        return 0

    def _mod_l2(self, mfn: int, page: _Page, idx: int, new: int, cmd: int) -> int:
        if idx >= L2_FIRST_XEN_SLOT:
            return -Errno.EPERM  # "L2 update in Xen-private area"
        old = page.entries.get(idx, 0)
        if cmd == abi.MMU_PT_UPDATE_PRESERVE_AD:
            new |= old & _AD
        if new & _PAGE_PRESENT:
            if new & L2_DISALLOW_MASK:
                return -Errno.EINVAL
            if old and not (old ^ new) & ~FASTPATH_FLAG_WHITELIST:
                _set_entry(page, mfn, idx, new)
                return 0
            rc = self._get_l2e(new, page.owner)
            if rc:
                return rc
        _set_entry(page, mfn, idx, new)
        if old:
            self._put_l2e(old, mfn)
        return 0

    def _machphys(self, d: _Dom, pt: _Dom, pg_owner: _Dom, ptr: int, val: int) -> int:
        """MMU_MACHPHYS_UPDATE. The model's M2P is fixed (mfn - mfn_base), so
        only the entry it already holds can be written."""
        if d is not pt:
            return -Errno.EPERM
        mfn = ptr >> PAGE_SHIFT
        if self._owner(mfn) is not pg_owner:
            return -Errno.EINVAL  # "Could not get page for mach->phys update"
        return 0 if val == mfn - pg_owner.base else -Errno.EINVAL

    # -- types and references ----------------------------------------------

    def _get_type(self, mfn: int, owner: _Dom, kind: PageType) -> int:
        """get_page_type: take a type reference; validate on 0 -> 1."""
        page = self._frames.get(mfn)
        if page is not None:
            if page.type is not kind or not page.validated:
                return -Errno.EINVAL  # "Bad type": the frame is in use as another type
            page.count += 1
            return 0
        # The type is set before validating, so a table that maps itself
        # writable fails, as in Xen.
        page = self._frames[mfn] = _Page(owner, kind, 1)
        if kind is PGT_writable_page:
            page.validated = True
            return 0
        rc = self._validate(mfn, page)
        if rc:
            del self._frames[mfn]
        return rc

    def _put_type(self, mfn: int) -> None:
        """put_page_type: on 1 -> 0 a table releases its entries' references."""
        page = self._frames[mfn]
        page.count -= 1
        if page.count:
            return
        if page.type in TABLES and page.validated:
            page.validated = False
            self._release_entries(mfn, page)
        del self._frames[mfn]

    def _validate(self, mfn: int, page: _Page) -> int:
        """alloc_l1_table / alloc_l2_table: every present entry, all or nothing."""
        table = _TABLE.unpack_from(page.owner.mem, (mfn - page.owner.base) * PAGE_SIZE)
        l1 = page.type is PGT_l1_page_table
        for idx in range(L1_PAGETABLE_ENTRIES if l1 else L2_FIRST_XEN_SLOT):
            pte = table[idx]
            if not pte & _PAGE_PRESENT:
                continue
            rc = self._get_l1e(pte, page.owner, page.owner) if l1 else self._get_l2e(
                pte, page.owner)
            if rc:
                self._release_entries(mfn, page)
                return rc
            page.entries[idx] = pte
        page.validated = True
        return 0

    def _release_entries(self, mfn: int, page: _Page) -> None:
        entries, page.entries = page.entries, {}
        for pte in entries.values():
            if page.type is PGT_l1_page_table:
                self._put_l1e(pte, page.owner)
            else:
                self._put_l2e(pte, mfn)

    def _get_l1e(self, pte: int, l1e_owner: _Dom, pg_owner: _Dom) -> int:
        """get_page_from_l1e (xen/arch/x86/mm.c)."""
        if pte & L1_DISALLOW_MASK:
            return -Errno.EINVAL  # "Bad L1 flags"
        mfn = pte >> PAGE_SHIFT
        real = self._owner(mfn)
        # mm.c: a frame of neither the PT owner nor FD goes to could_not_pin,
        # and so does a failed PGT_writable_page reference: both are -EBUSY.
        if real is None or real is not pg_owner:
            return -Errno.EBUSY
        if pte & _PAGE_RW and self._get_type(mfn, real, PGT_writable_page):
            return -Errno.EBUSY
        if real is not l1e_owner:
            real.foreign_refs += 1
        return 0

    def _put_l1e(self, pte: int, l1e_owner: _Dom) -> None:
        mfn = pte >> PAGE_SHIFT
        real = self._owner(mfn, dying_too=True)
        if real is None:
            return
        if pte & _PAGE_RW:
            self._put_type(mfn)
        if real is not l1e_owner:
            real.foreign_refs -= 1
            if real.dying and not real.foreign_refs:
                self._free(real)  # the zombie's last foreign mapping went

    def _get_l2e(self, pte: int, d: _Dom) -> int:
        """get_page_from_l2e: the target must validate as an L1 of the same
        owner (get_page_and_type_from_mfn: -EINVAL otherwise). A linear map
        (to an L2) fails the L1 type: refused, Xen's linear fallback is not
        modelled."""
        if pte & L2_DISALLOW_MASK:
            return -Errno.EINVAL  # "Bad L2 flags"
        mfn = pte >> PAGE_SHIFT
        if self._owner(mfn) is not d:
            return -Errno.EINVAL
        return self._get_type(mfn, d, PGT_l1_page_table)

    def _put_l2e(self, pte: int, l2_mfn: int) -> None:
        mfn = pte >> PAGE_SHIFT
        if mfn != l2_mfn:
            self._put_type(mfn)

    # -- queries -----------------------------------------------------------

    def frame_info(self, mfn: int) -> FrameInfo | None:
        """The frame's owner and type; None for a frame no domain owns."""
        owner = self._owner(mfn, dying_too=True) if is_int(mfn) else None
        if owner is None:
            return None
        page = self._frames.get(mfn)
        if page is None:
            return FrameInfo(mfn, owner.domid, PGT_none, 0, False, False)
        return FrameInfo(mfn, owner.domid, page.type, page.count, page.pinned, page.validated)

    def typed_frames(self) -> list[FrameInfo]:
        """Every frame with type_count > 0."""
        return [info for mfn in sorted(self._frames) if (info := self.frame_info(mfn))]

    def entries(self, mfn: int) -> dict[int, int]:
        """The present entries Xen validated in a page table (Rule 5)."""
        page = self._frames.get(mfn)
        return dict(page.entries) if page is not None and page.validated else {}

    def base_pointer(self, domid: int) -> int:
        d = self._doms.get(domid)
        return 0 if d is None else d.cr3

    def statistics(self) -> MmStatistics:
        pages = self._frames.values()
        return MmStatistics(
            domains=len(self.domains()), zombies=len(self.zombies()),
            page_tables=sum(p.type in TABLES and p.validated for p in pages),
            pinned=sum(p.pinned for p in pages),
            writable_pages=sum(p.type is PGT_writable_page for p in pages),
            **{f: self._n[f] for f in _COUNTED})

    # -- helpers -----------------------------------------------------------

    def _live(self, domid: object) -> _Dom | None:
        d = self._doms.get(domid) if is_int(domid) else None
        return None if d is None or d.dying else d

    def _owner(self, mfn: int, dying_too: bool = False) -> _Dom | None:
        i = bisect.bisect_right(self._bases, mfn) - 1
        if i < 0:
            return None
        d = self._by_base[self._bases[i]]
        if mfn >= d.base + d.nr_pages or (d.dying and not dying_too):
            return None
        return d

    def _fail(self, rc: int) -> int:
        self._n["failures"] += 1
        return rc


def _write_pte(owner: _Dom, mfn: int, idx: int, val: int) -> None:
    _PTE.pack_into(owner.mem, (mfn - owner.base) * PAGE_SIZE + idx * PTE_SIZE, val)


def _set_entry(page: _Page, mfn: int, idx: int, val: int) -> None:
    _write_pte(page.owner, mfn, idx, val)
    if val & _PAGE_PRESENT:
        page.entries[idx] = val
    else:
        page.entries.pop(idx, None)


def _byte_view(mem: object, nr_pages: int) -> memoryview | None:
    """A writable byte view holding ``nr_pages`` whole pages, or None."""
    if not isinstance(mem, memoryview) or mem.readonly:
        return None
    try:
        view = mem.cast("B")
    except (TypeError, ValueError):
        return None
    if len(view) < nr_pages * PAGE_SIZE:
        view.release()
        return None
    return view
