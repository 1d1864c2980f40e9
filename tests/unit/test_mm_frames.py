"""Xen's frame table and PV MMU (hypervisor.mm), alone; then the guest side
(domains.kernel.mmu, domains.xenolinux.vm) over the real hypercall handlers
and an in-process frame table."""

import struct
from collections import Counter
from types import SimpleNamespace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.kernel.mm import FrameAllocator
from domains.kernel.mmu import MmuBatch, MmuError
from domains.xenolinux.vm import AddressSpace, cpu_for, kernel_va
from hypervisor import hc_mmu, hypercalls  # noqa: F401 (hc_mmu registers its handlers)
from hypervisor.args import BadArg
from hypervisor.mm import (
    FIRST_GUEST_MFN,
    FrameTable,
    PGT_l1_page_table,
    PGT_l2_page_table,
    PGT_none,
    PGT_writable_page,
)
from hypervisor.public import mmu as M
from hypervisor.public.xen import DOMID_IO, DOMID_SELF, PAGE_SIZE, Errno, Hypercall

P, RW, U, A, D, PSE, PCD = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80, 0x10
EPERM, EINVAL, EBUSY = -Errno.EPERM, -Errno.EINVAL, -Errno.EBUSY


class Dom:
    """A domain's memory as Xen sees it, with helpers for PTE addresses."""

    def __init__(self, ft: FrameTable, domid: int, nr: int = 16, privileged: bool = False):
        self.ft, self.domid = ft, domid
        self.mem = memoryview(bytearray(nr * PAGE_SIZE))
        self.base = ft.add_domain(domid, nr, self.mem, privileged)
        assert self.base >= FIRST_GUEST_MFN

    def mfn(self, pfn: int) -> int:
        return self.base + pfn

    def ptr(self, pfn: int, idx: int, cmd: int = M.MMU_NORMAL_PT_UPDATE) -> int:
        return self.mfn(pfn) << 12 | idx * 4 | cmd

    def pte(self, pfn: int, flags: int) -> int:
        return self.mfn(pfn) << 12 | flags

    def raw(self, pfn: int, idx: int) -> int:
        return struct.unpack_from("<I", self.mem, pfn * PAGE_SIZE + idx * 4)[0]

    def poke(self, pfn: int, idx: int, val: int) -> None:
        """A write behind Xen's back (the guest holds all of its memory)."""
        struct.pack_into("<I", self.mem, pfn * PAGE_SIZE + idx * 4, val)

    def update(self, *reqs, fd: int = DOMID_SELF):
        return self.ft.mmu_update(self.domid, list(reqs), fd)

    def ext(self, *ops, fd: int = DOMID_SELF):
        return self.ft.mmuext_op(self.domid, [(*op, 0, 0)[:3] for op in ops], fd)

    def info(self, pfn: int):
        return self.ft.frame_info(self.mfn(pfn))

    def build(self, l2: int, l1: int, maps: dict[int, tuple[int, int]]) -> None:
        """Fill an L1 (index -> (pfn, flags)) and an L2 slot 0 -> it, then pin the L2."""
        reqs = [(self.ptr(l1, i), self.pte(pfn, fl)) for i, (pfn, fl) in maps.items()]
        reqs.append((self.ptr(l2, 0), self.pte(l1, P | RW | U)))
        assert self.update(*reqs) == (0, len(reqs))
        assert self.ext((M.MMUEXT_PIN_L2_TABLE, self.mfn(l2))) == (0, 1)


@pytest.fixture
def ft():
    return FrameTable()


@pytest.fixture
def d1(ft):
    return Dom(ft, 1)


@pytest.fixture
def d2(ft):
    return Dom(ft, 2)


# ---- machine frames --------------------------------------------------------


def test_each_domain_gets_its_own_range_and_freed_ranges_are_reused():
    ft = FrameTable(FIRST_GUEST_MFN, FIRST_GUEST_MFN + 40)
    a, b = Dom(ft, 1, 16), Dom(ft, 2, 16)
    assert (a.base, b.base) == (FIRST_GUEST_MFN, FIRST_GUEST_MFN + 16)
    assert ft.add_domain(3, 9, memoryview(bytearray(9 * PAGE_SIZE))) == -Errno.ENOMEM
    assert ft.remove_domain(1) == 0 and ft.remove_domain(2) == 0
    assert ft.free_frames() == 40  # the two ranges coalesced
    assert Dom(ft, 4, 40).base == FIRST_GUEST_MFN
    assert ft.add_domain(4, 1, memoryview(bytearray(PAGE_SIZE))) == -Errno.EEXIST
    assert ft.add_domain(5, 2, memoryview(bytearray(PAGE_SIZE))) == -Errno.EINVAL


def test_frame_owner_comes_from_the_range(ft, d1, d2):
    assert d1.info(3).owner == 1 and d2.info(3).owner == 2
    assert ft.frame_info(FIRST_GUEST_MFN - 1) is None  # Xen's own
    assert ft.frame_info(d2.mfn(16)) is None


# ---- building and validating tables ------------------------------------------


def test_plain_writes_build_a_table_then_pin_validates_it(d1):
    assert d1.update((d1.ptr(5, 0), d1.pte(7, P | RW | U)), (d1.ptr(5, 1), d1.pte(8, P))) == (0, 2)
    assert d1.raw(5, 0) == d1.pte(7, P | RW | U)
    assert d1.info(5).type is PGT_none  # just bytes until it is used as a table
    assert d1.ext((M.MMUEXT_PIN_L1_TABLE, d1.mfn(5))) == (0, 1)
    l1 = d1.info(5)
    assert (l1.type, l1.type_count, l1.pinned, l1.validated) == (PGT_l1_page_table, 1, True, True)
    assert (d1.info(7).type, d1.info(7).type_count) == (PGT_writable_page, 1)
    assert d1.info(8).type is PGT_none  # a read-only mapping takes no type reference
    assert d1.ft.entries(d1.mfn(5)) == {0: d1.pte(7, P | RW | U), 1: d1.pte(8, P)}


def test_an_l1_entry_may_not_map_another_domains_frame(d1, d2):
    foreign = d2.pte(3, P | RW | U)
    d1.build(2, 1, {})
    assert d1.update((d1.ptr(1, 0), foreign)) == (EBUSY, 0)  # mm.c could_not_pin
    assert d1.update((d1.ptr(1, 0), d2.pte(3, P))) == (EBUSY, 0)  # even read-only
    assert d1.update((d1.ptr(1, 0), foreign), fd=2) == (EPERM, 0)  # not privileged over d2
    d1.update((d1.ptr(4, 0), foreign))  # a plain write: bytes, then validation refuses them
    assert d1.ext((M.MMUEXT_PIN_L1_TABLE, d1.mfn(4))) == (EBUSY, 0)
    assert d2.info(3).type is PGT_none


def test_a_privileged_domain_maps_a_foreign_frame_by_naming_its_owner(ft, d2):
    d0 = Dom(ft, 0, privileged=True)
    d0.build(2, 1, {})
    assert d0.update((d0.ptr(1, 0), d2.pte(3, P | RW))) == (EBUSY, 0)  # no FD given
    assert d0.update((d0.ptr(1, 0), d2.pte(3, P | RW)), fd=2) == (0, 1)
    assert (d2.info(3).type, d2.info(3).type_count) == (PGT_writable_page, 1)
    assert d0.update((d0.ptr(1, 1), d0.pte(5, P)), fd=2) == (EBUSY, 0)  # FD: only its frames
    assert d0.update((d0.ptr(1, 0), 0)) == (0, 1)
    assert d2.info(3).type_count == 0


def test_a_page_table_is_never_mapped_writable(d1):
    d1.build(2, 1, {})
    for table in (1, 2):
        assert d1.update((d1.ptr(1, 5), d1.pte(table, P | RW | U))) == (EBUSY, 0)
        assert d1.update((d1.ptr(1, 5), d1.pte(table, P | U))) == (0, 1)  # read-only is fine
    assert d1.info(1).type is PGT_l1_page_table and d1.info(2).type is PGT_l2_page_table


def test_a_writably_mapped_frame_cannot_become_a_page_table(d1):
    d1.build(2, 1, {0: (6, P | RW)})
    assert d1.ext((M.MMUEXT_PIN_L1_TABLE, d1.mfn(6))) == (EINVAL, 0)  # "Bad type"
    assert d1.ext((M.MMUEXT_PIN_L2_TABLE, d1.mfn(6))) == (EINVAL, 0)
    assert d1.update((d1.ptr(2, 1), d1.pte(6, P | RW | U))) == (EINVAL, 0)  # as an L1 via L2
    assert d1.update((d1.ptr(1, 0), 0)) == (0, 1)  # unmap it ...
    assert d1.ext((M.MMUEXT_PIN_L1_TABLE, d1.mfn(6))) == (0, 1)  # ... now it may


def test_a_table_mapping_itself_writable_does_not_validate(d1):
    d1.update((d1.ptr(4, 0), d1.pte(4, P | RW)))
    assert d1.ext((M.MMUEXT_PIN_L1_TABLE, d1.mfn(4))) == (EBUSY, 0)
    d1.update((d1.ptr(4, 0), d1.pte(4, P)))
    assert d1.ext((M.MMUEXT_PIN_L1_TABLE, d1.mfn(4))) == (0, 1)


def test_an_l2_entry_must_point_to_a_frame_that_validates_as_an_l1(d1, d2):
    d1.build(2, 1, {0: (6, P | RW)})
    assert d1.update((d1.ptr(2, 1), d1.pte(6, P | RW))) == (EINVAL, 0)  # a writable data page
    assert d1.update((d1.ptr(2, 1), d1.pte(2, P))) == (EINVAL, 0)  # linear self-map: refused
    assert d1.update((d1.ptr(2, 1), d2.pte(4, P | RW))) == (EINVAL, 0)  # not ours
    d1.update((d1.ptr(7, 0), d1.pte(2, P | RW)))  # an L1 that would map the L2 writable
    assert d1.update((d1.ptr(2, 1), d1.pte(7, P | RW))) == (EBUSY, 0)  # its validation fails
    assert d1.update((d1.ptr(2, 1), d1.pte(8, P | RW | U))) == (0, 1)  # an empty L1 is fine
    assert d1.info(8).type is PGT_l1_page_table and not d1.info(8).pinned


def test_xen_slots_are_refused_and_ignored_by_validation(d1):
    d1.update((d1.ptr(3, M.L2_FIRST_XEN_SLOT + 2), d1.pte(9, P | RW)))  # junk before pinning
    d1.build(2, 1, {})
    assert d1.update((d1.ptr(2, M.L2_FIRST_XEN_SLOT), d1.pte(1, P | RW))) == (EPERM, 0)
    assert d1.update((d1.ptr(2, 1023), 0)) == (EPERM, 0)
    assert d1.ext((M.MMUEXT_PIN_L2_TABLE, d1.mfn(3))) == (0, 1)  # slot 1010 not looked at
    assert d1.info(9).type is PGT_none and d1.ft.entries(d1.mfn(3)) == {}


@pytest.mark.parametrize("bits", [PSE, PCD, 0x8])
def test_disallowed_flag_bits(d1, bits):
    d1.build(2, 1, {})
    assert d1.update((d1.ptr(1, 0), d1.pte(6, P | bits))) == (EINVAL, 0)
    assert d1.update((d1.ptr(2, 1), d1.pte(7, P | RW | bits))) == (EINVAL, 0)
    assert d1.update((d1.ptr(1, 0), d1.pte(6, bits))) == (0, 1)  # not present: not checked


def test_pinning_is_not_nested(d1):
    assert d1.ext((M.MMUEXT_PIN_L1_TABLE, d1.mfn(4))) == (0, 1)
    assert d1.ext((M.MMUEXT_PIN_L1_TABLE, d1.mfn(4))) == (EINVAL, 0)
    assert d1.info(4).type_count == 1
    assert d1.ext((M.MMUEXT_PIN_L2_TABLE, d1.mfn(4))) == (EINVAL, 0)  # it is an L1
    assert d1.ext((M.MMUEXT_UNPIN_TABLE, d1.mfn(4))) == (0, 1)
    assert d1.ext((M.MMUEXT_UNPIN_TABLE, d1.mfn(4))) == (EINVAL, 0)  # not pinned
    assert d1.info(4).type is PGT_none
    # Levels the model does not have are ignored, as Xen ignores them.
    assert d1.ext((M.MMUEXT_PIN_L3_TABLE, d1.mfn(4)), (M.MMUEXT_PIN_L4_TABLE, 1)) == (0, 2)


def test_unpin_of_the_current_base_keeps_it_validated_until_it_is_replaced(d1):
    """Xen allows the unpin (the base pointer holds its own type reference);
    the table stays a page table, so unpinning is no way round the rules."""
    d1.build(2, 1, {0: (6, P | RW)})
    assert d1.ext((M.MMUEXT_NEW_BASEPTR, d1.mfn(2))) == (0, 1)
    assert d1.ext((M.MMUEXT_UNPIN_TABLE, d1.mfn(2))) == (0, 1)
    base = d1.info(2)
    assert (base.type, base.type_count, base.pinned, base.validated) == (
        PGT_l2_page_table, 1, False, True)
    assert d1.update((d1.ptr(1, 1), d1.pte(2, P | RW))) == (EBUSY, 0)
    d1.build(4, 3, {})
    assert d1.ext((M.MMUEXT_NEW_BASEPTR, d1.mfn(4))) == (0, 1)
    assert [d1.info(p).type for p in (1, 2, 6)] == [PGT_none] * 3  # released in cascade
    assert d1.ft.base_pointer(1) == d1.mfn(4)


def test_new_baseptr_rules(ft, d1, d2):
    d1.build(2, 1, {0: (6, P | RW)})
    assert d1.ext((M.MMUEXT_NEW_BASEPTR, d2.mfn(2))) == (EINVAL, 0)  # not ours
    assert d1.ext((M.MMUEXT_NEW_BASEPTR, d1.mfn(6))) == (EINVAL, 0)  # writable: no L2
    assert d1.ext((M.MMUEXT_NEW_BASEPTR, d1.mfn(1))) == (EINVAL, 0)  # an L1
    assert d1.ext((M.MMUEXT_NEW_BASEPTR, d1.mfn(2))) == (0, 1)
    assert d1.ext((M.MMUEXT_NEW_BASEPTR, d1.mfn(2))) == (0, 1)  # the same: no new reference
    assert d1.info(2).type_count == 2  # pin + base
    d0 = Dom(ft, 0, privileged=True)
    assert d0.ext((M.MMUEXT_NEW_BASEPTR, d1.mfn(2)), fd=1) == (EPERM, 0)
    assert d0.ext((M.MMUEXT_TLB_FLUSH_LOCAL, 0), fd=1) == (EPERM, 0)
    assert d1.ext((M.MMUEXT_NEW_BASEPTR, d1.mfn(2)), fd=2) == (EPERM, 0)  # xsm: not privileged


def test_batches_stop_at_the_first_failure_and_count_what_was_done(d1, d2):
    d1.build(2, 1, {})
    good = [(d1.ptr(1, i), d1.pte(5 + i, P | RW | U)) for i in range(2)]
    bad = (d1.ptr(1, 2), d2.pte(5, P))
    assert d1.update(*good, bad, (d1.ptr(1, 3), d1.pte(8, P))) == (EBUSY, 2)
    assert d1.raw(1, 1) == d1.pte(6, P | RW | U) and d1.raw(1, 3) == 0
    ops = [(M.MMUEXT_PIN_L1_TABLE, d1.mfn(9)), (M.MMUEXT_TLB_FLUSH_LOCAL, 0),
           (M.MMUEXT_PIN_L1_TABLE, d1.mfn(9)), (M.MMUEXT_PIN_L1_TABLE, d1.mfn(10))]
    assert d1.ext(*ops) == (EINVAL, 2)
    assert d1.info(10).type is PGT_none
    assert d1.update() == (0, 0)


def test_an_update_releases_what_the_old_entry_held(d1):
    d1.build(2, 1, {0: (6, P | RW)})
    assert d1.update((d1.ptr(1, 0), d1.pte(7, P | RW))) == (0, 1)
    assert d1.info(6).type_count == 0 and d1.info(7).type_count == 1
    assert d1.update((d1.ptr(1, 0), d1.pte(7, P))) == (0, 1)  # downgrade to read-only
    assert d1.info(7).type_count == 0
    d1.update((d1.ptr(1, 0), d1.pte(7, P | RW)))
    assert d1.update((d1.ptr(2, 0), 0)) == (0, 1)  # unhook the L1: it and its maps go
    assert d1.info(1).type is PGT_none and d1.info(7).type is PGT_none


def test_preserve_ad_and_the_fast_path(ft, d2):
    d0 = Dom(ft, 0, privileged=True)
    d0.build(2, 1, {})
    d0.update((d0.ptr(1, 0), d2.pte(3, P | RW | A | D)), fd=2)
    # Same frame and rights, other A/D/AVAIL bits: no revalidation, so no FD needed.
    assert d0.update((d0.ptr(1, 0), d2.pte(3, P | RW | 0x200))) == (0, 1)
    assert d2.info(3).type_count == 1
    ptr = d0.ptr(1, 0, M.MMU_PT_UPDATE_PRESERVE_AD)
    assert d0.update((ptr, d2.pte(3, P | RW | U))) == (0, 1)
    assert d0.raw(1, 0) == d2.pte(3, P | RW | U)  # A/D were dropped by the fast path write
    d0.update((d0.ptr(1, 0), d2.pte(3, P | RW | U | A | D)))
    assert d0.update((ptr, d2.pte(3, P | RW))) == (0, 1)
    assert d0.raw(1, 0) == d2.pte(3, P | RW | A | D)


def test_other_extended_commands(ft, d1):
    assert d1.ext((99, 0)) == (-Errno.ENOSYS, 0)
    assert d1.ext((M.MMUEXT_MARK_SUPER, d1.mfn(3))) == (-Errno.EOPNOTSUPP, 0)
    assert d1.ext((M.MMUEXT_NEW_USER_BASEPTR, d1.mfn(3))) == (EINVAL, 0)
    assert d1.ext((M.MMUEXT_FLUSH_CACHE, 0)) == (-Errno.EACCES, 0)  # no I/O memory
    assert d1.ext((M.MMUEXT_FLUSH_CACHE_GLOBAL, 0)) == (EINVAL, 0)
    assert Dom(ft, 0, privileged=True).ext((M.MMUEXT_FLUSH_CACHE, 0)) == (0, 1)
    assert d1.ext((M.MMUEXT_SET_LDT, 0x1000, 8), (M.MMUEXT_SET_LDT, 0x1001, 8)) == (EINVAL, 1)
    flushes = [(M.MMUEXT_TLB_FLUSH_LOCAL, 0), (M.MMUEXT_INVLPG_LOCAL, 0x4000),
               (M.MMUEXT_TLB_FLUSH_ALL, 0), (M.MMUEXT_INVLPG_MULTI, 0x4000, 1)]
    assert d1.ext(*flushes) == (0, 4)
    s = ft.statistics()
    assert (s.tlb_flushes, s.invlpgs) == (2, 2)


def test_clear_and_copy_page(d1):
    d1.mem[5 * PAGE_SIZE:6 * PAGE_SIZE] = b"\x5a" * PAGE_SIZE
    assert d1.ext((M.MMUEXT_COPY_PAGE, d1.mfn(6), d1.mfn(5))) == (0, 1)
    assert bytes(d1.mem[6 * PAGE_SIZE:7 * PAGE_SIZE]) == b"\x5a" * PAGE_SIZE
    assert d1.ext((M.MMUEXT_CLEAR_PAGE, d1.mfn(5))) == (0, 1)
    assert not any(d1.mem[5 * PAGE_SIZE:6 * PAGE_SIZE])
    d1.ext((M.MMUEXT_PIN_L1_TABLE, d1.mfn(7)))
    assert d1.ext((M.MMUEXT_CLEAR_PAGE, d1.mfn(7))) == (EINVAL, 0)  # a page table
    assert d1.ext((M.MMUEXT_COPY_PAGE, d1.mfn(7), d1.mfn(6))) == (EINVAL, 0)


def test_machphys_update_checks_the_owner(ft, d1, d2):
    mfn = d1.mfn(4)
    assert d1.update((mfn << 12 | M.MMU_MACHPHYS_UPDATE, 4)) == (0, 1)
    assert d1.update((mfn << 12 | M.MMU_MACHPHYS_UPDATE, 5)) == (EINVAL, 0)  # M2P is fixed
    assert d1.update((d2.mfn(4) << 12 | M.MMU_MACHPHYS_UPDATE, 4)) == (EINVAL, 0)


def test_malformed_requests_are_einval_and_unknown_domains_esrch(ft, d1, d2):
    for req in ([1, 2, 3], (-1, 0), (0, 2**64), ("a", 1), None, (True, 0)):
        assert ft.mmu_update(1, [req]) == (EINVAL, 0), req
    assert ft.mmu_update(1, "junk") == (EINVAL, 0)
    assert d1.update((d1.ptr(3, 0), 2**32)) == (EINVAL, 0)  # a 32-bit PTE
    assert d1.update((d2.ptr(3, 0), 0)) == (EINVAL, 0)  # someone else's frame
    assert ft.mmuext_op(1, [(1, 2)]) == (EINVAL, 0)
    assert ft.mmuext_op(1, [(0, 1, 2)], 2**16) == (EINVAL, 0)
    assert ft.mmu_update(1, [(0, 0)], 2**32) == (EINVAL, 0)
    assert ft.mmu_update(7, [(0, 0)]) == (-Errno.ESRCH, 0)
    for fd in (1, 9, DOMID_IO):  # itself by id, nobody, DOMID_IO (not modelled)
        assert d1.update((d1.ptr(3, 0), 0), fd=fd) == (-Errno.ESRCH, 0), fd
        assert d1.ext((M.MMUEXT_TLB_FLUSH_LOCAL, 0), fd=fd) == (-Errno.ESRCH, 0), fd
    pfd = DOMID_SELF | (9 + 1) << 16  # page tables of domain 9
    assert d1.update((d1.ptr(3, 0), 0), fd=pfd) == (-Errno.ESRCH, 0)
    assert d1.update((d2.ptr(3, 0), 0), fd=DOMID_SELF | (2 + 1) << 16) == (EPERM, 0)


# ---- lifetime ------------------------------------------------------------------


def test_domain_death_releases_every_table_and_its_range(ft, d1):
    d1.build(2, 1, {0: (6, P | RW), 1: (7, P)})
    d1.ext((M.MMUEXT_NEW_BASEPTR, d1.mfn(2)), (M.MMUEXT_PIN_L1_TABLE, d1.mfn(9)))
    free = ft.free_frames()
    assert ft.remove_domain(1) == 0
    assert ft.typed_frames() == [] and ft.free_frames() == free + 16
    assert ft.remove_domain(1) == -Errno.ESRCH
    assert ft.mmu_update(1, [(0, 0)]) == (-Errno.ESRCH, 0)


def test_a_dead_domain_mapped_by_dom0_lingers_until_the_mapping_goes(ft, d2):
    d0 = Dom(ft, 0, privileged=True)
    d0.build(2, 1, {})
    d0.update((d0.ptr(1, 0), d2.pte(3, P | RW)), (d0.ptr(1, 1), d2.pte(4, P)), fd=2)
    assert ft.remove_domain(2) == -Errno.EBUSY
    assert ft.zombies() == [2] and ft.domains() == [0]
    assert d0.update((d0.ptr(1, 2), d2.pte(5, P)), fd=2) == (-Errno.ESRCH, 0)
    assert d0.update((d0.ptr(1, 0), 0)) == (0, 1)
    assert ft.zombies() == [2]
    assert d0.update((d0.ptr(1, 1), 0)) == (0, 1)
    assert ft.zombies() == [] and ft.frame_info(d2.mfn(3)) is None
    assert Dom(ft, 3).base == d2.base  # the range is reused


def test_entries_written_behind_xens_back_do_not_change_its_counts(d1, d2):
    d1.build(2, 1, {0: (6, P | RW)})
    d1.poke(1, 0, d2.pte(3, P | RW))  # forge: a foreign frame, in a pinned table
    d1.poke(1, 1, d1.pte(2, P | RW))  # forge: the L2 writable
    assert d1.ft.entries(d1.mfn(1)) == {0: d1.pte(6, P | RW)}  # Xen's record
    assert d1.update((d1.ptr(1, 0), 0)) == (0, 1)  # releases frame 6, as validated
    assert d1.info(6).type_count == 0 and d2.info(3).type is PGT_none
    assert d1.ext((M.MMUEXT_UNPIN_TABLE, d1.mfn(2))) == (0, 1)
    assert d1.ft.typed_frames() == []


# ---- the invariant, under random batches -------------------------------------------


def check_invariants(ft: FrameTable, doms: list[Dom]) -> None:
    """No frame is both a page table and writably mapped; every type_count is
    exactly the references Xen's records explain; records match memory."""
    frames = {f.mfn: f for f in ft.typed_frames()}
    writable, as_l1 = Counter(), Counter()
    for f in frames.values():
        for pte in ft.entries(f.mfn).values():
            if f.type is PGT_l1_page_table and pte & RW:
                writable[pte >> 12] += 1
            elif f.type is PGT_l2_page_table:
                as_l1[pte >> 12] += 1
    bases = Counter(ft.base_pointer(d.domid) for d in doms)
    for mfn, f in frames.items():
        assert f.validated
        if f.type is PGT_writable_page:
            assert f.type_count == writable[mfn]
        else:
            assert writable[mfn] == 0, f"page table {mfn:#x} is writably mapped"
            held = as_l1[mfn] if f.type is PGT_l1_page_table else bases[mfn]
            assert f.type_count == held + f.pinned
    assert all(mfn in frames for mfn in writable)
    for d in doms:
        for pfn in range(len(d.mem) // PAGE_SIZE):
            recorded = ft.entries(d.mfn(pfn))
            for idx, pte in recorded.items():
                assert d.raw(pfn, idx) == pte


_FLAGS = st.sampled_from([P, P | RW, P | U, P | RW | U, P | RW | A | D, P | PSE, 0, RW])
_EXT_CMDS = [M.MMUEXT_PIN_L1_TABLE, M.MMUEXT_PIN_L2_TABLE, M.MMUEXT_UNPIN_TABLE,
             M.MMUEXT_NEW_BASEPTR, M.MMUEXT_CLEAR_PAGE]
# A frame: (of the other domain? -- mostly not, pfn)
_frame = st.tuples(st.sampled_from([False, False, False, True]), st.integers(0, 3))
# An update: (page-table pfn, index, target frame, flags, cmd)
_req = st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 2, M.L2_FIRST_XEN_SLOT]), _frame,
                 _FLAGS, st.sampled_from([M.MMU_NORMAL_PT_UPDATE, M.MMU_PT_UPDATE_PRESERVE_AD]))
# A batch: (kind, caller, Domain-0 names domain 1 as FD?, entries)
_updates = st.tuples(st.just("update"), st.integers(0, 1), st.booleans(),
                     st.lists(_req, min_size=1, max_size=4))
_exts = st.tuples(st.just("ext"), st.integers(0, 1), st.booleans(),
                  st.lists(st.tuples(st.sampled_from(_EXT_CMDS), _frame), min_size=1, max_size=3))


@settings(max_examples=400, deadline=None)
@given(st.lists(_updates | _exts, max_size=25), st.booleans())
def test_random_batches_never_break_the_invariants(batches, domu_dies_first):
    ft = FrameTable()
    doms = [Dom(ft, 0, 4, privileged=True), Dom(ft, 1, 4)]
    for d in doms:
        d.build(0, 1, {})  # start from a pinned L2 (pfn 0) holding an L1 (pfn 1)
    for kind, caller, foreign, entries in batches:
        who = doms[caller]

        fd = 1 if foreign and caller == 0 else DOMID_SELF

        def frame(f, who=who, fd=fd):  # with an FD, mostly the FD's frames
            return doms[1 - who.domid] if f[0] != (fd == 1) else who, f[1]
        if kind == "update":
            reqs = [(who.ptr(pt, idx, cmd), d.pte(pfn, flags))
                    for pt, idx, f, flags, cmd in entries for d, pfn in [frame(f)]]
            rc, done = ft.mmu_update(who.domid, reqs, fd)
        else:
            ops = [(cmd, d.mfn(pfn), 0) for cmd, f in entries for d, pfn in [frame(f)]]
            rc, done = ft.mmuext_op(who.domid, ops, fd)
        assert (rc == 0) == (done == len(entries)) and 0 <= done <= len(entries)
        check_invariants(ft, doms)
    for d in reversed(doms) if domu_dies_first else doms:
        assert ft.remove_domain(d.domid) in (0, -Errno.EBUSY)  # EBUSY: Domain-0 maps it
        check_invariants(ft, doms)
    assert ft.typed_frames() == [] and ft.zombies() == [] and ft.domains() == []


# ---- the hypercall handlers ------------------------------------------------------


def _call(ft: FrameTable, domid: int, hc: int, args):
    xen, dom = SimpleNamespace(mm=ft), SimpleNamespace(domid=domid)
    try:
        return hypercalls.TABLE[(hc, 0)](xen, dom, 1, args)
    except BadArg as exc:
        return (-exc.errno, None)


def test_handlers_decode_packed_structs_and_refuse_malformed_batches(ft, d1):
    reqs = M.pack_mmu_updates([(d1.ptr(3, 0), d1.pte(4, P))])
    assert _call(ft, 1, Hypercall.mmu_update, {"reqs": reqs}) == (0, {"done": 1})
    ops = M.pack_mmuext_ops([(M.MMUEXT_PIN_L1_TABLE, d1.mfn(3), 0)] * 2)
    assert _call(ft, 1, Hypercall.mmuext_op, {"ops": ops}) == (EINVAL, {"done": 1})
    too_many = M.pack_mmu_updates([(d1.ptr(5, 0), 0)] * (hypercalls.MAX_BATCH + 1))
    for args in ({"reqs": reqs[:-1]}, {"reqs": "x"}, {}, [reqs], {"reqs": too_many},
                 {"reqs": reqs, "foreigndom": -1}, {"reqs": reqs, "foreigndom": 2**32}):
        assert _call(ft, 1, Hypercall.mmu_update, args) == (EINVAL, None), args
    assert _call(ft, 1, Hypercall.mmuext_op, {"ops": ops, "foreigndom": 2**16}) == (EINVAL, None)
    assert M.MAX_MMU_BATCH == hypercalls.MAX_BATCH


# ---- the guest side over an in-process Xen ------------------------------------------


class _Client:
    """Traps through msgpack into the real handlers, like the real client."""

    def __init__(self, ft: FrameTable, domid: int) -> None:
        self.ft, self.domid, self.calls = ft, domid, 0

    def call(self, hc, cmd=0, args=None):
        self.calls += 1
        return _call(self.ft, self.domid, hc, msgpack.unpackb(msgpack.packb(args)))


class FakeKernel:
    def __init__(self, ft: FrameTable, domid: int, nr_pages: int = 2048) -> None:
        self.domid = domid
        self.mem = memoryview(bytearray(nr_pages * PAGE_SIZE))
        self.boot = {"nr_pages": nr_pages, "mfn_base": ft.add_domain(domid, nr_pages, self.mem)}
        self.frames = FrameAllocator(3, nr_pages - 8)
        self.xen = _Client(ft, domid)

    def page(self, pfn: int) -> memoryview:
        return self.mem[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE]


def test_address_spaces_over_the_real_core(ft):
    k = FakeKernel(ft, 1)
    cpu, a = cpu_for(k), AddressSpace(k)
    p1, p2, p3 = (k.frames.alloc() for _ in range(3))
    a.map_page(0x400000, p1, writable=True)
    a.map_page(0x401000, p2, writable=True)
    a.flush()
    a.switch_to()
    cpu.store(0x400FFC, b"crossing")
    assert bytes(k.page(p1)[-4:]) + bytes(k.page(p2)[:4]) == b"crossing"
    b = AddressSpace(k)
    b.map_page(0x400000, p3, writable=True)
    b.switch_to()
    cpu.store(0x400000, b"bbbb")
    a.switch_to()
    assert cpu.load(0x400FFC, 8) == b"crossing" and cpu.load(0x400000, 4) == bytes(4)
    with pytest.raises(cpu.PageFault) as pf:
        cpu.load(kernel_va(p1), 1)  # the kernel region is supervisor-only
    assert pf.value.reason == "protection"
    assert cpu.load(kernel_va(p3), 4, user=False) == b"bbbb"
    with pytest.raises(cpu.PageFault):  # a page table is read-only in the direct map
        cpu.store(kernel_va(a.l2_pfn), b"x", user=False)
    assert a.unmap_page(0x400000) == p1 and a.unmap_page(0x400000) is None
    a.flush()
    with pytest.raises(cpu.PageFault) as pf:
        cpu.load(0x400000, 1)  # the INVLPG reached the TLB
    assert pf.value.reason == "not-present"
    a.destroy()  # the current one: swapper_pg_dir is loaded first
    b.destroy()
    assert cpu.base == k.boot["mfn_base"] + a.kmap.swapper
    kernel_tables = len(a.kmap.l1s) + 1
    assert ft.statistics().page_tables == kernel_tables


def test_a_refused_mapping_leaves_the_address_space_as_xen_has_it(ft):
    k = FakeKernel(ft, 1)
    a, b = AddressSpace(k), AddressSpace(k)
    data = k.frames.alloc()
    a.map_page(0x1000, data, writable=True)
    a.map_page(0x800000, b.l2_pfn, writable=True)  # a page table, writable: refused
    with pytest.raises(MmuError) as err:
        a.flush()
    assert err.value.errno == Errno.EBUSY and err.value.index == 5  # 2 x (L1, hook, leaf)
    assert a.mapping(0x1000) == (data, True, True) and a.mapping(0x800000) is None
    a.map_page(0x800000, b.l2_pfn, writable=False)
    a.flush()
    free = k.frames.nr_free
    a.destroy()
    b.destroy()
    assert k.frames.nr_free == free + 4  # two L2s and two L1s came back


def test_a_table_queued_after_a_refused_entry_is_given_back(ft):
    k = FakeKernel(ft, 1)
    a = AddressSpace(k)
    a.map_page(0x1000, k.frames.alloc(), writable=True)
    a.flush()
    free = k.frames.nr_free
    a.map_page(0x2000, a.l2_pfn, writable=True)  # refused ...
    a.map_page(0x800000, k.frames.alloc(), writable=True)  # ... so this L1 is never hooked
    with pytest.raises(MmuError):
        a.flush()
    assert list(a.l1_tables()) == [0] and a.mapping(0x800000) is None
    assert k.frames.nr_free == free - 1  # only the data frame we took is out
    orphan_free = [f for f in ft.typed_frames() if f.type is not PGT_writable_page]
    assert len(orphan_free) == len(a.kmap.l1s) + 1 + 2  # kernel L1s, swapper, a's L2 and L1


def test_mmu_batch_reports_the_failing_index_across_runs(ft):
    k = FakeKernel(ft, 1, 64)
    other = Dom(ft, 2)
    batch = MmuBatch(k)
    base = k.boot["mfn_base"]
    batch.queue_update((base + 10) << 12, (base + 11) << 12 | P)
    batch.queue_ext(M.MMUEXT_PIN_L1_TABLE, base + 10)
    batch.queue_update((base + 10) << 12 | 4, other.pte(1, P))
    with pytest.raises(MmuError) as err:
        batch.flush()
    assert (err.value.index, err.value.errno, err.value.hypercall) == (2, Errno.EBUSY,
                                                                       "mmu_update")
    assert len(batch) == 0 and k.xen.calls == 3
