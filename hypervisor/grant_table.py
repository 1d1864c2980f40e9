"""Grant tables: the hypervisor's grant_table.c for v1 entries, sans-IO.

Rule 1 -- who writes what. A granting domain writes its own grant entries
(domid, frame, then flags) in its grant-table frames: pfns ``table_pfn ..
table_pfn + max_frames - 1`` of its own memory. Xen reads them and writes
back only GTF_reading and GTF_writing.

Rule 2 -- Xen's shadow state is private: an *active entry* per pinned
(granter, ref) holds the pin counts, the grantee and the frame captured at
the first pin; a *maptrack* per mapping domain holds handle -> mapping.

Rule 3 -- the shared entry is checked only at the first pin (type
permit_access, domid == grantee, no GTF_sub_page for a mapping) and again at
the first writable pin (GTF_readonly clear). Once pinned, the guest's later
writes change nothing: an entry in use cannot be revoked or retargeted.

Rule 4 -- GTF_reading is set while any pin exists, GTF_writing while a
writable one does. Python has no cmpxchg on shared memory, so Xen's bounded
cmpxchg loop becomes: write the flags, re-read the entry, retry if the guest
changed it. A guest write between our read and our write goes unseen.

Rule 5 -- frames: a frame >= the granter's nr_pages is GNTST_bad_page (as
get_paged_frame); a frame of the granter's grant table is never mappable or
copyable by grant (it would let the grantee forge grants): general_error.

Rule 6 -- lifetime (section 4.4). ``release_mappings`` (domain_kill) marks a
domain dying -- it maps nothing more and its grants take no new pins -- and
drops its maptrack, unpinning what it mapped. A dead granter whose frames are
still mapped elsewhere lingers as a zombie (``remove_domain`` -> -EBUSY, or
``mapped_by_others``) until ``reapable()`` lists it.

Rule 7 -- nothing raises on guest input: grant ops return GNTST codes,
administrative calls return 0 or a negated Errno.
"""

from __future__ import annotations

import heapq
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple, TypeGuard

from hypervisor.public.grant_table import (
    DEFAULT_MAX_GRANT_FRAMES,
    DEFAULT_MAX_MAPTRACK,
    GNTMAP_VALID,
    GNTST,
    GRANT_ENTRIES_PER_FRAME,
    GRANT_ENTRY_V1_FORMAT,
    GRANT_ENTRY_V1_SIZE,
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTMAP_device_map,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_sub_page,
    GTF_type_mask,
    GTF_writing,
)
from hypervisor.public.xen import DOMID_FIRST_RESERVED, DOMID_SELF, PAGE_SIZE, Errno

_ENTRY = struct.Struct(GRANT_ENTRY_V1_FORMAT)
_FLAGS = struct.Struct("<H")
_CMPXCHG_TRIES = 5  # Xen gives up on an entry the guest keeps changing
_FAIL = -1  # handle and frame returned with a failed map
_GNTMAP_ANY = GNTMAP_host_map | GNTMAP_device_map


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _in_range(x: object, limit: int) -> TypeGuard[int]:
    return _is_int(x) and 0 <= x < limit


class GrantMapping(NamedTuple):
    """One maptrack entry of a mapping domain (the handle is its key)."""

    granter: int
    ref: int
    pfn: int  # the frame in the granter's memory
    readonly: bool


@dataclass(frozen=True, slots=True)
class ActiveGrant:
    """Snapshot of an active entry (``active_grants``)."""

    ref: int
    domid: int  # the grantee holding the pins
    frame: int
    readers: int  # read-only pins
    writers: int  # writable pins


@dataclass(frozen=True, slots=True)
class GrantStatistics:
    domains: int
    zombies: int
    active_entries: int
    mappings: int
    maps: int
    unmaps: int
    copies: int
    copied_bytes: int
    failures: int


@dataclass(slots=True)
class _Active:
    domid: int
    frame: int
    ro: int = 0
    rw: int = 0


@dataclass(slots=True)
class _GrantDomain:
    domid: int
    mem: memoryview
    nr_pages: int
    table_pfn: int
    max_frames: int
    privileged: bool
    max_maptrack: int
    nr_frames: int = 1
    dying: bool = False
    active: dict[int, _Active] = field(default_factory=dict)
    maptrack: dict[int, GrantMapping] = field(default_factory=dict)
    # Per mapped frame: how many mappings, keyed (granter, pfn, readonly).
    frames: Counter[tuple[int, int, bool]] = field(default_factory=Counter)
    freed_handles: list[int] = field(default_factory=list)
    next_handle: int = 0

    def nr_entries(self) -> int:
        return self.nr_frames * GRANT_ENTRIES_PER_FRAME

    def entry_offset(self, ref: int) -> int:
        return self.table_pfn * PAGE_SIZE + ref * GRANT_ENTRY_V1_SIZE


_COUNTED = ("maps", "unmaps", "copies", "copied_bytes", "failures")


class GrantTables:
    """Every domain's grant table, active entries and maptrack."""

    def __init__(self) -> None:
        self._domains: dict[int, _GrantDomain] = {}
        self._n: Counter[str] = Counter()  # statistics() counters

    # -- domains ---------------------------------------------------------

    def add_domain(
        self,
        domid: int,
        mem: memoryview,
        nr_pages: int,
        table_pfn: int,
        max_frames: int = DEFAULT_MAX_GRANT_FRAMES,
        privileged: bool = False,
        max_maptrack: int = DEFAULT_MAX_MAPTRACK,
    ) -> int:
        """Register a domain's memory and where its table lives. 0, -EEXIST or -EINVAL."""
        if not _in_range(domid, DOMID_FIRST_RESERVED):
            return -Errno.EINVAL
        if domid in self._domains:
            return -Errno.EEXIST
        view = _byte_view(mem, nr_pages)
        ints_ok = all(_is_int(x) for x in (table_pfn, max_frames, max_maptrack))
        if view is None or not ints_ok or max_frames < 1 or max_maptrack < 0:
            return -Errno.EINVAL
        if table_pfn < 0 or table_pfn + max_frames > nr_pages:
            return -Errno.EINVAL
        self._domains[domid] = _GrantDomain(
            domid, view, nr_pages, table_pfn, max_frames, bool(privileged), max_maptrack
        )
        return 0

    def remove_domain(self, domid: int) -> int:
        """gnttab_release_mappings + grant_table_destroy for a dead domain.
        -EBUSY leaves it a dying zombie while others still map its frames.
        Call it before unmapping the domain's memory."""
        gd = self._get(domid)
        if gd is None:
            return -Errno.ESRCH
        self.release_mappings(domid)
        if self.mapped_by_others(domid):
            return -Errno.EBUSY
        del self._domains[domid]
        gd.mem.release()  # so the adapter can close the memory's mmap
        return 0

    def reapable(self) -> list[int]:
        """Dying domains no longer mapped by anyone: call remove_domain on them."""
        dying = [d for d in self._domains.values() if d.dying]
        return sorted(d.domid for d in dying if not self.mapped_by_others(d.domid))

    def domains(self) -> list[int]:
        return sorted(self._domains)

    # -- table size ------------------------------------------------------

    def setup_table(self, caller: int, dom: int, nr_frames: int) -> tuple[int, list[int]]:
        """GNTTABOP_setup_table: grow the table to ``nr_frames``; return its pfns."""
        gd = self._target(caller, dom)
        if isinstance(gd, int):
            return gd, []
        if not _in_range(nr_frames, gd.max_frames + 1):
            return self._fail(GNTST.general_error), []
        gd.nr_frames = max(gd.nr_frames, nr_frames)  # tables only grow
        return GNTST.okay, [gd.table_pfn + i for i in range(nr_frames)]

    def query_size(self, caller: int, dom: int) -> tuple[int, int, int]:
        """GNTTABOP_query_size: (status, nr_frames, max_nr_frames)."""
        gd = self._target(caller, dom)
        if isinstance(gd, int):
            return gd, 0, 0
        return GNTST.okay, gd.nr_frames, gd.max_frames

    # -- map / unmap -------------------------------------------------------

    def map_grant_ref(
        self, mapper: int, granter: int, ref: int, flags: int
    ) -> tuple[int, int, int]:
        """GNTTABOP_map_grant_ref: (status, handle, pfn in the granter's memory)."""
        # Xen answers bad flags with bad_gntref: no host/device map, or unknown bits.
        if not _is_int(flags) or flags & ~GNTMAP_VALID or not flags & _GNTMAP_ANY:
            return self._fail(GNTST.bad_gntref), _FAIL, _FAIL
        ld, rd = self._live(mapper), self._live(granter)
        if ld is None or rd is None:
            return self._fail(GNTST.bad_domain), _FAIL, _FAIL
        if not _in_range(ref, rd.nr_entries()):
            return self._fail(GNTST.bad_gntref), _FAIL, _FAIL
        handle = _get_handle(ld)
        if handle < 0:
            return self._fail(GNTST.no_space), _FAIL, _FAIL
        readonly = bool(flags & GNTMAP_readonly)
        rc = self._pin(rd, ref, ld.domid, readonly, mapping=True)
        if rc != GNTST.okay:
            heapq.heappush(ld.freed_handles, handle)
            return self._fail(rc), _FAIL, _FAIL
        pfn = rd.active[ref].frame
        ld.maptrack[handle] = GrantMapping(rd.domid, ref, pfn, readonly)
        ld.frames[(rd.domid, pfn, readonly)] += 1
        self._n["maps"] += 1
        return GNTST.okay, handle, pfn

    def unmap_grant_ref(self, mapper: int, handle: int) -> int:
        """GNTTABOP_unmap_grant_ref: drop the mapping and its pin."""
        ld = self._get(mapper)
        if ld is None:
            return self._fail(GNTST.bad_domain)
        m = ld.maptrack.get(handle) if _is_int(handle) else None
        if m is None:
            return self._fail(GNTST.bad_handle)
        self._drop(ld, handle, m)
        self._n["unmaps"] += 1
        return GNTST.okay

    def release_mappings(self, mapper: int) -> set[int]:
        """gnttab_release_mappings, from domain_kill: ``mapper`` is dying (it
        may map nothing more and its grants serve no new pin) and its mappings
        are dropped. Returns the granters it unpinned (some may now be reapable)."""
        ld = self._get(mapper)
        if ld is None:
            return set()
        ld.dying = True
        granters = {m.granter for m in ld.maptrack.values()}
        for handle, m in list(ld.maptrack.items()):
            self._drop(ld, handle, m)
        return granters

    def _drop(self, ld: _GrantDomain, handle: int, m: GrantMapping) -> None:
        del ld.maptrack[handle]
        heapq.heappush(ld.freed_handles, handle)
        key = (m.granter, m.pfn, m.readonly)
        ld.frames[key] -= 1
        if not ld.frames[key]:
            del ld.frames[key]
        rd = self._domains.get(m.granter)
        if rd is not None:  # always, since a mapped granter is never removed
            self._unpin(rd, m.ref, m.readonly)

    # -- copy --------------------------------------------------------------

    def copy(self, caller: int, op: object) -> int:
        """GNTTABOP_copy of ``op["len"]`` bytes between two (gref or gmfn) sides."""
        c = self._live(caller)
        if c is None:
            return self._fail(GNTST.bad_domain)
        parsed = _parse_copy(op)
        if parsed is None:
            return self._fail(GNTST.bad_copy_arg)
        src, dst, length, flags = parsed
        s = self._claim(c, src, bool(flags & GNTCOPY_source_gref), readonly=True)
        if isinstance(s, int):
            return self._fail(s)
        d = self._claim(c, dst, bool(flags & GNTCOPY_dest_gref), readonly=False)
        if isinstance(d, int):
            self._release(s, readonly=True)
            return self._fail(d)
        s_off, d_off = s.pfn * PAGE_SIZE + src.offset, d.pfn * PAGE_SIZE + dst.offset
        d.gd.mem[d_off : d_off + length] = s.gd.mem[s_off : s_off + length].tobytes()
        self._release(d, readonly=False)
        self._release(s, readonly=True)
        self._n["copies"] += 1
        self._n["copied_bytes"] += length
        return GNTST.okay

    def _claim(self, c: _GrantDomain, side: _Side, is_gref: bool, readonly: bool) -> _Claim | int:
        """gnttab_copy_lock_domain + gnttab_copy_claim_buf: a transient pin."""
        if not is_gref and side.domid not in (DOMID_SELF, c.domid) and not c.privileged:
            return GNTST.permission_denied
        gd = c if side.domid == DOMID_SELF else self._live(side.domid)
        if gd is None:
            return GNTST.bad_domain
        if not is_gref:
            ok = _in_range(side.frame, gd.nr_pages)
            return _Claim(gd, side.frame, None) if ok else GNTST.bad_page
        if not _in_range(side.frame, gd.nr_entries()):
            return GNTST.bad_gntref
        rc = self._pin(gd, side.frame, c.domid, readonly, mapping=False)
        if rc != GNTST.okay:
            return rc
        return _Claim(gd, gd.active[side.frame].frame, side.frame)

    def _release(self, claim: _Claim, readonly: bool) -> None:
        if claim.ref is not None:
            self._unpin(claim.gd, claim.ref, readonly)

    # -- pinning (the active entry and the shared flags) -------------------

    def _pin(self, gd: _GrantDomain, ref: int, grantee: int, readonly: bool, mapping: bool) -> int:
        act = gd.active.get(ref)
        if act is not None and act.domid != grantee:
            return GNTST.general_error
        if act is None or (not readonly and act.rw == 0):
            rc = _set_status(gd, ref, grantee, readonly, mapping, first=act is None)
            if rc != GNTST.okay:
                return rc
        if act is None:
            frame = _ENTRY.unpack_from(gd.mem, gd.entry_offset(ref))[2]
            rc = _check_frame(gd, frame)
            if rc != GNTST.okay:
                _clear_flags(gd, ref, GTF_reading | GTF_writing)
                return rc
            act = gd.active[ref] = _Active(grantee, frame)
        if readonly:
            act.ro += 1
        else:
            act.rw += 1
        return GNTST.okay

    @staticmethod
    def _unpin(gd: _GrantDomain, ref: int, readonly: bool) -> None:
        act = gd.active[ref]
        if readonly:
            act.ro -= 1
        else:
            act.rw -= 1
        clear = GTF_writing if act.rw == 0 else 0
        if act.ro + act.rw == 0:
            clear |= GTF_reading
            del gd.active[ref]
        if clear:
            _clear_flags(gd, ref, clear)

    # -- queries ---------------------------------------------------------

    def mapped_by_others(self, granter: int) -> bool:
        """Zombie test: does any other domain still map this domain's frames?"""
        gd = self._get(granter)
        return gd is not None and any(a.domid != gd.domid for a in gd.active.values())

    def frame_accessible(self, domid: int, granter: int, pfn: int, write: bool) -> bool:
        """May ``domid`` access ``pfn`` of ``granter``'s memory (read, or write
        if ``write``)? True for a domain's own frames, else only while mapped."""
        ld = self._get(domid)
        if ld is None or not _is_int(pfn):
            return False
        if domid == granter:
            return 0 <= pfn < ld.nr_pages
        writable = ld.frames.get((granter, pfn, False), 0) > 0
        return writable or (not write and ld.frames.get((granter, pfn, True), 0) > 0)

    def mappings_of(self, mapper: int) -> dict[int, GrantMapping]:
        """A copy of the mapper's maptrack: handle -> mapping."""
        ld = self._get(mapper)
        return {} if ld is None else dict(ld.maptrack)

    def active_grants(self, granter: int) -> list[ActiveGrant]:
        gd = self._get(granter)
        if gd is None:
            return []
        items = sorted(gd.active.items())
        return [ActiveGrant(ref, a.domid, a.frame, a.ro, a.rw) for ref, a in items]

    def statistics(self) -> GrantStatistics:
        doms = self._domains.values()
        return GrantStatistics(
            domains=len(doms),
            zombies=sum(d.dying for d in doms),
            active_entries=sum(len(d.active) for d in doms),
            mappings=sum(len(d.maptrack) for d in doms),
            **{f: self._n[f] for f in _COUNTED},
        )

    # -- helpers -----------------------------------------------------------

    def _get(self, domid: object) -> _GrantDomain | None:
        return self._domains.get(domid) if _is_int(domid) else None

    def _live(self, domid: object) -> _GrantDomain | None:
        gd = self._get(domid)
        return None if gd is None or gd.dying else gd

    def _target(self, caller: int, dom: int) -> _GrantDomain | int:
        """The table a setup/query op names: bad_domain or permission_denied."""
        c = self._live(caller)
        gd = c if dom == DOMID_SELF else self._live(dom)
        if c is None or gd is None:
            return self._fail(GNTST.bad_domain)
        if gd is not c and not c.privileged:
            return self._fail(GNTST.permission_denied)
        return gd

    def _fail(self, status: int) -> int:
        self._n["failures"] += 1
        return status


@dataclass(frozen=True, slots=True)
class _Side:
    domid: int
    frame: int  # a gref or a gmfn, as the op's flags say
    offset: int


@dataclass(frozen=True, slots=True)
class _Claim:
    gd: _GrantDomain
    pfn: int
    ref: int | None  # set when pinned through a grant


def _parse_copy(op: object) -> tuple[_Side, _Side, int, int] | None:
    """Validate a GNTTABOP_copy argument; None means GNTST_bad_copy_arg."""
    if not isinstance(op, dict):
        return None
    length, flags = op.get("len"), op.get("flags", 0)
    if not _in_range(length, PAGE_SIZE + 1) or not _is_int(flags):
        return None
    if flags & ~(GNTCOPY_source_gref | GNTCOPY_dest_gref):
        return None
    src = _parse_side(op.get("source"), bool(flags & GNTCOPY_source_gref), length)
    dst = _parse_side(op.get("dest"), bool(flags & GNTCOPY_dest_gref), length)
    if src is None or dst is None:
        return None
    return src, dst, length, flags


def _parse_side(side: object, is_gref: bool, length: int) -> _Side | None:
    if not isinstance(side, dict):
        return None
    key, other = ("ref", "gmfn") if is_gref else ("gmfn", "ref")
    frame = side.get(key, side.get(other))
    domid, offset = side.get("domid"), side.get("offset", 0)
    if not (_is_int(frame) and _is_int(domid) and _in_range(offset, PAGE_SIZE + 1)):
        return None
    if offset + length > PAGE_SIZE:  # a copy never crosses a page boundary
        return None
    return _Side(domid, frame, offset)


def _set_status(
    gd: _GrantDomain, ref: int, grantee: int, readonly: bool, mapping: bool, first: bool
) -> int:
    """_set_status_v1: check the shared entry and set GTF_reading/writing (Rules 3-4)."""
    off = gd.entry_offset(ref)
    type_mask = GTF_type_mask | (GTF_sub_page if mapping else 0)
    set_bits = GTF_reading | (0 if readonly else GTF_writing)
    for _ in range(_CMPXCHG_TRIES):
        flags, domid, _frame = _ENTRY.unpack_from(gd.mem, off)
        if first and ((flags & type_mask) != GTF_permit_access or domid != grantee):
            return GNTST.general_error
        if not readonly and flags & GTF_readonly:
            return GNTST.general_error
        _FLAGS.pack_into(gd.mem, off, flags | set_bits)
        if _ENTRY.unpack_from(gd.mem, off)[:2] == (flags | set_bits, domid):
            return GNTST.okay
    return GNTST.general_error


def _clear_flags(gd: _GrantDomain, ref: int, bits: int) -> None:
    """gnttab_clear_flags: drop status bits Xen set (the guest owns the rest)."""
    off = gd.entry_offset(ref)
    (flags,) = _FLAGS.unpack_from(gd.mem, off)
    if flags & bits:
        _FLAGS.pack_into(gd.mem, off, flags & ~bits)


def _check_frame(gd: _GrantDomain, frame: int) -> int:
    if frame >= gd.nr_pages:
        return GNTST.bad_page
    if gd.table_pfn <= frame < gd.table_pfn + gd.max_frames:
        return GNTST.general_error
    return GNTST.okay


def _get_handle(ld: _GrantDomain) -> int:
    """get_maptrack_handle: lowest freed handle first; -1 when full."""
    if ld.freed_handles:
        return heapq.heappop(ld.freed_handles)
    if ld.next_handle >= ld.max_maptrack:
        return -1
    ld.next_handle += 1
    return ld.next_handle - 1


def _byte_view(mem: object, nr_pages: object) -> memoryview | None:
    """A writable byte view holding ``nr_pages`` whole pages, or None."""
    if not isinstance(mem, memoryview) or mem.readonly or not _in_range(nr_pages, 1 << 40):
        return None
    try:
        view = mem.cast("B")
    except (TypeError, ValueError):
        return None
    if nr_pages < 1 or len(view) < nr_pages * PAGE_SIZE:
        return None
    return view
