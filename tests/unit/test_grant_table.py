"""GrantTables core: every map/unmap/copy rule, lifetimes and fuzzing."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hypervisor.grant_table as gt_mod
from hypervisor.grant_table import ActiveGrant, GrantMapping, GrantStatistics, GrantTables
from hypervisor.public.grant_table import (
    GNTST,
    GRANT_ENTRIES_PER_FRAME,
    GRANT_ENTRY_V1_FORMAT,
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTMAP_device_map,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GTF_accept_transfer,
    GTF_invalid,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_sub_page,
    GTF_writing,
)
from hypervisor.public.xen import DOMID_SELF, PAGE_SIZE, Errno

DOM0, D1, D2 = 0, 1, 2
NR_PAGES, TABLE_PFN, MAX_FRAMES = 16, 12, 4
RW = GNTMAP_host_map
RO = GNTMAP_host_map | GNTMAP_readonly
BOTH_GREFS = GNTCOPY_source_gref | GNTCOPY_dest_gref
SELF = DOMID_SELF


class Host:
    """Three domains' memories; tables at pfns 12..15."""

    def __init__(self, max_maptrack: int = 64) -> None:
        self.gt = GrantTables()
        self.mem = {d: bytearray(NR_PAGES * PAGE_SIZE) for d in (DOM0, D1, D2)}
        for d in (DOM0, D1, D2):
            rc = self.gt.add_domain(
                d, memoryview(self.mem[d]), NR_PAGES, TABLE_PFN, MAX_FRAMES, d == DOM0, max_maptrack
            )
            assert rc == 0

    def grant(self, d: int, ref: int, domid: int, frame: int, flags: int = GTF_permit_access):
        """The guest's protocol: domid, frame, then flags."""
        off = TABLE_PFN * PAGE_SIZE + ref * 8
        struct.pack_into("<HI", self.mem[d], off + 2, domid, frame)
        struct.pack_into("<H", self.mem[d], off, flags)

    def entry(self, d: int, ref: int) -> tuple[int, int, int]:
        return struct.unpack_from(
            GRANT_ENTRY_V1_FORMAT, self.mem[d], TABLE_PFN * PAGE_SIZE + ref * 8
        )

    def flags(self, d: int, ref: int) -> int:
        return self.entry(d, ref)[0]

    def page(self, d: int, pfn: int) -> bytearray:
        return self.mem[d][pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE]


@pytest.fixture
def h() -> Host:
    return Host()


# -- setup_table / query_size ------------------------------------------------


def test_setup_table_grows_and_checks(h: Host) -> None:
    assert h.gt.query_size(D1, DOMID_SELF) == (GNTST.okay, 1, MAX_FRAMES)
    assert h.gt.setup_table(D1, DOMID_SELF, 2) == (GNTST.okay, [12, 13])
    assert h.gt.query_size(D1, D1) == (GNTST.okay, 2, MAX_FRAMES)
    assert h.gt.setup_table(D1, DOMID_SELF, 1) == (GNTST.okay, [12])  # never shrinks
    assert h.gt.query_size(D1, D1)[1] == 2
    assert h.gt.setup_table(D1, DOMID_SELF, MAX_FRAMES + 1) == (GNTST.general_error, [])
    assert h.gt.setup_table(D1, DOMID_SELF, -1) == (GNTST.general_error, [])


def test_setup_table_permissions(h: Host) -> None:
    assert h.gt.setup_table(D1, D2, 1) == (GNTST.permission_denied, [])
    assert h.gt.query_size(D1, D2) == (GNTST.permission_denied, 0, 0)
    assert h.gt.setup_table(DOM0, D2, 3)[0] == GNTST.okay
    assert h.gt.setup_table(D1, 9, 1) == (GNTST.bad_domain, [])
    assert h.gt.query_size(9, DOMID_SELF) == (GNTST.bad_domain, 0, 0)


def test_add_domain_validates(h: Host) -> None:
    mv = memoryview(bytearray(4 * PAGE_SIZE))
    assert h.gt.add_domain(D1, mv, 4, 3, 1) == -Errno.EEXIST
    assert h.gt.add_domain(5, mv, 4, 3, 2) == -Errno.EINVAL  # table past the end
    assert h.gt.add_domain(5, mv, 5, 0, 1) == -Errno.EINVAL  # memory too small
    assert h.gt.add_domain(5, memoryview(bytes(4 * PAGE_SIZE)), 4, 3, 1) == -Errno.EINVAL
    assert h.gt.add_domain(DOMID_SELF, mv, 4, 3, 1) == -Errno.EINVAL
    assert h.gt.add_domain(5, mv, 4, 3, 1) == 0
    assert h.gt.domains() == [DOM0, D1, D2, 5]


# -- map / unmap ---------------------------------------------------------------


def test_map_sets_reading_and_writing(h: Host) -> None:
    h.grant(D1, 8, D2, 3)
    status, handle, pfn = h.gt.map_grant_ref(D2, D1, 8, RW)
    assert (status, handle, pfn) == (GNTST.okay, 0, 3)
    assert h.flags(D1, 8) == GTF_permit_access | GTF_reading | GTF_writing
    assert h.gt.mappings_of(D2) == {0: GrantMapping(D1, 8, 3, False)}
    assert h.gt.active_grants(D1) == [ActiveGrant(8, D2, 3, 0, 1)]
    assert h.gt.unmap_grant_ref(D2, handle) == GNTST.okay
    assert h.flags(D1, 8) == GTF_permit_access
    assert h.gt.active_grants(D1) == [] and h.gt.mappings_of(D2) == {}


def test_readonly_map_sets_only_reading(h: Host) -> None:
    h.grant(D1, 8, D2, 3, GTF_permit_access | GTF_readonly)
    status, handle, _ = h.gt.map_grant_ref(D2, D1, 8, RO)
    assert status == GNTST.okay
    assert h.flags(D1, 8) == GTF_permit_access | GTF_readonly | GTF_reading
    h.gt.unmap_grant_ref(D2, handle)
    assert h.flags(D1, 8) == GTF_permit_access | GTF_readonly


def test_pin_counts_clear_flags_in_order(h: Host) -> None:
    h.grant(D1, 9, D2, 4)
    _, ro, _ = h.gt.map_grant_ref(D2, D1, 9, RO)
    assert h.flags(D1, 9) == GTF_permit_access | GTF_reading
    _, rw, _ = h.gt.map_grant_ref(D2, D1, 9, RW | GNTMAP_device_map)
    assert h.flags(D1, 9) & GTF_writing
    assert h.gt.active_grants(D1) == [ActiveGrant(9, D2, 4, 1, 1)]
    h.gt.unmap_grant_ref(D2, rw)
    assert h.flags(D1, 9) == GTF_permit_access | GTF_reading
    h.gt.unmap_grant_ref(D2, ro)
    assert h.flags(D1, 9) == GTF_permit_access


def test_map_wrong_domid(h: Host) -> None:
    h.grant(D1, 8, DOM0, 3)
    assert h.gt.map_grant_ref(D2, D1, 8, RW) == (GNTST.general_error, -1, -1)
    assert h.flags(D1, 8) == GTF_permit_access  # untouched


def test_write_map_of_readonly_grant(h: Host) -> None:
    h.grant(D1, 8, D2, 3, GTF_permit_access | GTF_readonly)
    assert h.gt.map_grant_ref(D2, D1, 8, RW)[0] == GNTST.general_error
    assert h.flags(D1, 8) == GTF_permit_access | GTF_readonly
    _, handle, _ = h.gt.map_grant_ref(D2, D1, 8, RO)
    assert h.gt.map_grant_ref(D2, D1, 8, RW)[0] == GNTST.general_error  # first write pin
    assert h.flags(D1, 8) == GTF_permit_access | GTF_readonly | GTF_reading
    h.gt.unmap_grant_ref(D2, handle)


@pytest.mark.parametrize(
    "flags", [GTF_invalid, GTF_accept_transfer, 3, GTF_permit_access | GTF_sub_page]
)
def test_map_not_permitted(h: Host, flags: int) -> None:
    h.grant(D1, 8, D2, 3, flags)
    assert h.gt.map_grant_ref(D2, D1, 8, RO)[0] == GNTST.general_error
    assert h.flags(D1, 8) == flags


def test_map_revoked_before_first_pin(h: Host) -> None:
    h.grant(D1, 8, D2, 3)
    struct.pack_into("<H", h.mem[D1], TABLE_PFN * PAGE_SIZE + 8 * 8, 0)  # guest revokes
    assert h.gt.map_grant_ref(D2, D1, 8, RW)[0] == GNTST.general_error


def test_entry_in_use_cannot_be_retargeted(h: Host) -> None:
    h.grant(D1, 8, D2, 3)
    _, first, _ = h.gt.map_grant_ref(D2, D1, 8, RO)
    h.grant(D1, 8, DOM0, 5, GTF_permit_access | GTF_reading)  # guest misbehaves
    assert h.gt.map_grant_ref(DOM0, D1, 8, RO)[0] == GNTST.general_error
    status, _, pfn = h.gt.map_grant_ref(D2, D1, 8, RO)
    assert (status, pfn) == (GNTST.okay, 3)  # the active entry holds the frame
    assert first == 0


def test_map_ref_out_of_range(h: Host) -> None:
    h.grant(D1, 8, D2, 3)
    for ref in (GRANT_ENTRIES_PER_FRAME, -1, 1 << 40):
        assert h.gt.map_grant_ref(D2, D1, ref, RW)[0] == GNTST.bad_gntref
    h.gt.setup_table(D1, DOMID_SELF, 2)
    h.grant(D1, GRANT_ENTRIES_PER_FRAME, D2, 3)
    assert h.gt.map_grant_ref(D2, D1, GRANT_ENTRIES_PER_FRAME, RW)[0] == GNTST.okay


@pytest.mark.parametrize("flags", [0, GNTMAP_readonly, RW | (1 << 5), -1, 1 << 40])
def test_map_bad_flags(h: Host, flags: int) -> None:
    h.grant(D1, 8, D2, 3)
    assert h.gt.map_grant_ref(D2, D1, 8, flags)[0] == GNTST.bad_gntref


def test_map_unknown_domains(h: Host) -> None:
    assert h.gt.map_grant_ref(D2, 9, 8, RW)[0] == GNTST.bad_domain
    assert h.gt.map_grant_ref(D2, DOMID_SELF, 8, RW)[0] == GNTST.bad_domain
    assert h.gt.map_grant_ref(9, D1, 8, RW)[0] == GNTST.bad_domain
    assert h.gt.map_grant_ref(D2, -1, 8, RW)[0] == GNTST.bad_domain


def test_map_bad_frames_clear_status(h: Host) -> None:
    h.grant(D1, 8, D2, NR_PAGES)  # beyond the granter's memory
    assert h.gt.map_grant_ref(D2, D1, 8, RW)[0] == GNTST.bad_page
    assert h.flags(D1, 8) == GTF_permit_access
    h.grant(D1, 9, D2, TABLE_PFN + 3)  # a grant-table frame: would allow forging
    assert h.gt.map_grant_ref(D2, D1, 9, RW)[0] == GNTST.general_error
    assert h.flags(D1, 9) == GTF_permit_access
    assert h.gt.active_grants(D1) == [] and h.gt.mappings_of(D2) == {}


def test_maptrack_full_and_handle_reuse() -> None:
    h = Host(max_maptrack=2)
    h.grant(D1, 8, D2, 3)
    handles = [h.gt.map_grant_ref(D2, D1, 8, RO)[1] for _ in range(2)]
    assert handles == [0, 1]
    assert h.gt.map_grant_ref(D2, D1, 8, RO) == (GNTST.no_space, -1, -1)
    h.gt.unmap_grant_ref(D2, 0)
    assert h.gt.map_grant_ref(D2, D1, 8, RO)[:2] == (GNTST.okay, 0)


def test_unmap_bad_handle(h: Host) -> None:
    for handle in (0, -1, 1 << 40, "x"):
        assert h.gt.unmap_grant_ref(D2, handle) == GNTST.bad_handle  # type: ignore[arg-type]
    h.grant(D1, 8, D2, 3)
    _, handle, _ = h.gt.map_grant_ref(D2, D1, 8, RW)
    assert h.gt.unmap_grant_ref(D1, handle) == GNTST.bad_handle  # not d1's handle
    assert h.gt.unmap_grant_ref(D2, handle) == GNTST.okay
    assert h.gt.unmap_grant_ref(D2, handle) == GNTST.bad_handle
    assert h.gt.unmap_grant_ref(9, handle) == GNTST.bad_domain


# -- lifetimes -------------------------------------------------------------------


def test_release_mappings_on_grantee_death(h: Host) -> None:
    h.grant(D1, 8, D2, 3)
    h.grant(DOM0, 8, D2, 4, GTF_permit_access | GTF_readonly)
    h.gt.map_grant_ref(D2, D1, 8, RW)
    h.gt.map_grant_ref(D2, D1, 8, RO)
    h.gt.map_grant_ref(D2, DOM0, 8, RO)
    assert h.gt.release_mappings(D2) == {D1, DOM0}
    assert h.flags(D1, 8) == GTF_permit_access
    assert h.flags(DOM0, 8) == GTF_permit_access | GTF_readonly
    assert h.gt.mappings_of(D2) == {} and h.gt.active_grants(D1) == []
    assert h.gt.map_grant_ref(D2, D1, 8, RW)[0] == GNTST.bad_domain  # dying
    assert h.gt.release_mappings(99) == set()


def test_zombie_granter(h: Host) -> None:
    h.grant(D1, 8, D2, 3)
    h.grant(D1, 9, DOM0, 4)
    _, handle, _ = h.gt.map_grant_ref(D2, D1, 8, RW)
    assert h.gt.mapped_by_others(D1)
    assert h.gt.remove_domain(D1) == -Errno.EBUSY
    assert h.gt.statistics().zombies == 1
    assert h.gt.map_grant_ref(DOM0, D1, 9, RW)[0] == GNTST.bad_domain
    assert h.gt.reapable() == []
    assert h.gt.frame_accessible(D2, D1, 3, write=True)  # the backend's mapping lives on
    assert h.gt.unmap_grant_ref(D2, handle) == GNTST.okay
    assert h.flags(D1, 8) == GTF_permit_access
    assert h.gt.reapable() == [D1]
    assert h.gt.remove_domain(D1) == 0
    assert h.gt.remove_domain(D1) == -Errno.ESRCH
    assert h.gt.domains() == [DOM0, D2]


def test_self_mapping_is_not_a_zombie(h: Host) -> None:
    h.grant(D1, 8, D1, 3)
    assert h.gt.map_grant_ref(D1, D1, 8, RW)[0] == GNTST.okay
    assert not h.gt.mapped_by_others(D1)
    assert h.gt.remove_domain(D1) == 0


def test_frame_accessible(h: Host) -> None:
    h.grant(D1, 8, D2, 3, GTF_permit_access | GTF_readonly)
    h.grant(D1, 9, D2, 5)
    h.gt.map_grant_ref(D2, D1, 8, RO)
    h.gt.map_grant_ref(D2, D1, 9, RW)
    assert h.gt.frame_accessible(D2, D1, 3, write=False)
    assert not h.gt.frame_accessible(D2, D1, 3, write=True)
    assert h.gt.frame_accessible(D2, D1, 5, write=True)
    assert not h.gt.frame_accessible(DOM0, D1, 5, write=False)
    assert not h.gt.frame_accessible(D2, D1, 6, write=False)
    assert h.gt.frame_accessible(D1, D1, 6, write=True)  # its own memory
    assert not h.gt.frame_accessible(D1, D1, NR_PAGES, write=False)
    h.gt.release_mappings(D2)
    assert not h.gt.frame_accessible(D2, D1, 5, write=True)


# -- copy --------------------------------------------------------------------------


def _op(src: dict, dst: dict, length: int, flags: int) -> dict:
    return {"source": src, "dest": dst, "len": length, "flags": flags}


def test_copy_from_grant_to_own_frame(h: Host) -> None:
    h.mem[D1][3 * PAGE_SIZE + 100 : 3 * PAGE_SIZE + 105] = b"hello"
    h.grant(D1, 8, D2, 3, GTF_permit_access | GTF_readonly)
    op = _op(
        {"ref": 8, "domid": D1, "offset": 100},
        {"gmfn": 5, "domid": DOMID_SELF, "offset": 4000},
        5,
        GNTCOPY_source_gref,
    )
    assert h.gt.copy(D2, op) == GNTST.okay
    assert h.page(D2, 5)[4000:4005] == b"hello"
    assert h.flags(D1, 8) == GTF_permit_access | GTF_readonly  # transient pin gone
    assert h.gt.statistics().copied_bytes == 5


def test_copy_into_a_grant(h: Host) -> None:
    h.mem[D2][6 * PAGE_SIZE : 6 * PAGE_SIZE + 3] = b"abc"
    h.grant(D1, 8, D2, 3)
    op = _op(
        {"gmfn": 6, "domid": D2, "offset": 0},
        {"ref": 8, "domid": D1, "offset": 10},
        3,
        GNTCOPY_dest_gref,
    )
    assert h.gt.copy(D2, op) == GNTST.okay
    assert h.page(D1, 3)[10:13] == b"abc"
    assert h.flags(D1, 8) == GTF_permit_access
    h.grant(D1, 9, D2, 3, GTF_permit_access | GTF_readonly)
    op["dest"]["ref"] = 9
    assert h.gt.copy(D2, op) == GNTST.general_error  # read-only grant as dest
    assert h.flags(D1, 9) == GTF_permit_access | GTF_readonly


def test_copy_keeps_map_pins(h: Host) -> None:
    h.grant(D1, 8, D2, 3)
    h.gt.map_grant_ref(D2, D1, 8, RW)
    op = _op({"ref": 8, "domid": D1, "offset": 0}, {"gmfn": 1, "domid": D2, "offset": 0}, 8, 1)
    assert h.gt.copy(D2, op) == GNTST.okay
    assert h.flags(D1, 8) == GTF_permit_access | GTF_reading | GTF_writing


def test_copy_gref_to_gref_same_entry_and_sub_page(h: Host) -> None:
    h.grant(D1, 8, D2, 3, GTF_permit_access | GTF_sub_page)  # copy-only grant
    h.mem[D1][3 * PAGE_SIZE : 3 * PAGE_SIZE + 2] = b"xy"
    op = _op(
        {"ref": 8, "domid": D1, "offset": 0}, {"ref": 8, "domid": D1, "offset": 2}, 2, BOTH_GREFS
    )
    assert h.gt.copy(D2, op) == GNTST.okay
    assert h.page(D1, 3)[:4] == b"xyxy"
    assert h.flags(D1, 8) == GTF_permit_access | GTF_sub_page


def test_copy_gmfn_permissions(h: Host) -> None:
    op = _op({"gmfn": 3, "domid": D1, "offset": 0}, {"gmfn": 4, "domid": D2, "offset": 0}, 4, 0)
    assert h.gt.copy(D2, op) == GNTST.permission_denied  # d1's frame named by gmfn
    h.mem[D1][3 * PAGE_SIZE : 3 * PAGE_SIZE + 4] = b"priv"
    assert h.gt.copy(DOM0, op) == GNTST.okay  # privileged
    assert h.page(D2, 4)[:4] == b"priv"
    op["source"]["gmfn"] = NR_PAGES
    assert h.gt.copy(DOM0, op) == GNTST.bad_page
    op["source"].update(gmfn=3, domid=9)
    assert h.gt.copy(DOM0, op) == GNTST.bad_domain


def test_copy_grant_errors(h: Host) -> None:
    h.grant(D1, 8, DOM0, 3)
    dst = {"gmfn": 4, "domid": DOMID_SELF, "offset": 0}
    assert h.gt.copy(D2, _op({"ref": 8, "domid": D1}, dst, 1, 1)) == GNTST.general_error
    bad_ref = _op({"ref": 1 << 20, "domid": D1}, dst, 1, 1)
    assert h.gt.copy(D2, bad_ref) == GNTST.bad_gntref
    assert h.gt.copy(D2, _op({"ref": 8, "domid": 9}, dst, 1, 1)) == GNTST.bad_domain
    assert h.gt.copy(9, _op({"ref": 8, "domid": D1}, dst, 1, 1)) == GNTST.bad_domain
    assert h.flags(D1, 8) == GTF_permit_access


def test_copy_dest_failure_releases_source_pin(h: Host) -> None:
    h.grant(D1, 8, D2, 3)
    op = _op({"ref": 8, "domid": D1}, {"gmfn": NR_PAGES, "domid": DOMID_SELF}, 1, 1)
    assert h.gt.copy(D2, op) == GNTST.bad_page
    assert h.flags(D1, 8) == GTF_permit_access and h.gt.active_grants(D1) == []


@pytest.mark.parametrize(
    "op",
    [
        _op({"gmfn": 1, "domid": SELF, "offset": 4000}, {"gmfn": 2, "domid": SELF}, 97, 0),
        _op({"gmfn": 1, "domid": SELF}, {"gmfn": 2, "domid": SELF, "offset": 4095}, 2, 0),
        _op({"gmfn": 1, "domid": DOMID_SELF}, {"gmfn": 2, "domid": DOMID_SELF}, PAGE_SIZE + 1, 0),
        _op({"gmfn": 1, "domid": DOMID_SELF}, {"gmfn": 2, "domid": DOMID_SELF}, -1, 0),
        _op({"gmfn": 1, "domid": DOMID_SELF, "offset": -1}, {"gmfn": 2, "domid": DOMID_SELF}, 1, 0),
        _op({"gmfn": 1, "domid": DOMID_SELF}, {"gmfn": 2, "domid": DOMID_SELF}, 1, 4),
        _op({"gmfn": 1}, {"gmfn": 2, "domid": DOMID_SELF}, 1, 0),
        {"source": {"gmfn": 1, "domid": DOMID_SELF}, "len": 1},
        [1, 2, 3],
        None,
    ],
)
def test_copy_bad_args(h: Host, op: object) -> None:
    assert h.gt.copy(D2, op) == GNTST.bad_copy_arg


def test_copy_whole_page_within_bounds(h: Host) -> None:
    h.mem[D2][PAGE_SIZE : 2 * PAGE_SIZE] = bytes(range(256)) * 16
    op = _op({"gmfn": 1, "domid": D2}, {"gmfn": 2, "domid": DOMID_SELF}, PAGE_SIZE, 0)
    assert h.gt.copy(D2, op) == GNTST.okay
    assert h.page(D2, 2) == h.page(D2, 1)


# -- the guest racing Xen's flag update -----------------------------------------------


class _RacingFlags:
    """Stands in for the flags Struct: after each Xen write the guest zeroes the entry."""

    def __init__(self, real: struct.Struct) -> None:
        self.real = real

    def unpack_from(self, buf: bytearray, off: int) -> tuple[int, ...]:
        return self.real.unpack_from(buf, off)

    def pack_into(self, buf: bytearray, off: int, value: int) -> None:
        self.real.pack_into(buf, off, value)
        self.real.pack_into(buf, off, value & ~GTF_reading)


def test_unstable_entry_fails_after_bounded_retries(
    h: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.grant(D1, 8, D2, 3)
    monkeypatch.setattr(gt_mod, "_FLAGS", _RacingFlags(gt_mod._FLAGS))
    assert h.gt.map_grant_ref(D2, D1, 8, RO)[0] == GNTST.general_error
    assert h.gt.active_grants(D1) == []


# -- statistics and fuzz ------------------------------------------------------------


def test_statistics(h: Host) -> None:
    h.grant(D1, 8, D2, 3)
    _, handle, _ = h.gt.map_grant_ref(D2, D1, 8, RW)
    h.gt.map_grant_ref(D2, D1, 9, RW)
    s = h.gt.statistics()
    assert isinstance(s, GrantStatistics)
    assert (s.domains, s.active_entries, s.mappings, s.maps, s.failures) == (3, 1, 1, 1, 1)
    h.gt.unmap_grant_ref(D2, handle)
    assert h.gt.statistics().unmaps == 1


anyint = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-2, 20),
    st.sampled_from([DOMID_SELF, 0x7FEF, 0xFFFF, GRANT_ENTRIES_PER_FRAME, PAGE_SIZE]),
)
side = st.fixed_dictionaries(
    {},
    optional={"ref": anyint, "gmfn": anyint, "domid": st.sampled_from([0, 1, 2, 9, DOMID_SELF])}
    | {"offset": anyint},
)
copy_op = st.one_of(
    st.fixed_dictionaries(
        {"source": side, "dest": side, "len": anyint, "flags": st.integers(-1, 4)}
    ),
    st.none(),
    anyint,
)
calls = st.one_of(
    st.tuples(st.just("setup_table"), anyint, anyint, anyint),
    st.tuples(st.just("query_size"), anyint, anyint),
    st.tuples(st.just("map_grant_ref"), anyint, anyint, anyint, anyint),
    st.tuples(st.just("unmap_grant_ref"), anyint, anyint),
    st.tuples(st.just("copy"), anyint, copy_op),
    st.tuples(st.just("release_mappings"), anyint),
    st.tuples(st.just("remove_domain"), anyint),
    st.tuples(st.just("mapped_by_others"), anyint),
    st.tuples(st.just("frame_accessible"), anyint, anyint, anyint, st.booleans()),
    st.tuples(st.just("mappings_of"), anyint),
    st.tuples(st.just("active_grants"), anyint),
)
RESULT_TYPES = {
    "setup_table": tuple,
    "query_size": tuple,
    "map_grant_ref": tuple,
    "release_mappings": set,
    "mapped_by_others": bool,
    "frame_accessible": bool,
    "mappings_of": dict,
    "active_grants": list,
}


@settings(max_examples=200, deadline=None)
@given(st.lists(calls, max_size=30), st.lists(st.tuples(anyint, anyint, anyint), max_size=8))
def test_fuzz_never_raises(ops: list[tuple], guest_writes: list[tuple[int, int, int]]) -> None:
    h = Host()
    for i in range(8, 16):
        h.grant(D1, i, D2, i % NR_PAGES, GTF_permit_access | (GTF_readonly if i % 2 else 0))
    for ref, flags, frame in guest_writes:  # the guest scribbles over its table
        h.grant(D2, ref % 32, flags % 3, frame % (1 << 32), flags & 0xFFFF)
    for name, *args in ops:
        rc = getattr(h.gt, name)(*args)
        kind = RESULT_TYPES.get(name, int)
        assert isinstance(rc, kind), (name, rc)
        if kind is int:
            assert rc in set(GNTST) or -rc in set(Errno)
        if name == "map_grant_ref":
            assert rc[0] in set(GNTST) and all(isinstance(x, int) for x in rc)
    _check_flags_match_pins(h)


def _check_flags_match_pins(h: Host) -> None:
    """Every pinned entry shows GTF_reading (and GTF_writing iff write-pinned)."""
    for d in h.gt.domains():
        for act in h.gt.active_grants(d):
            flags = h.flags(d, act.ref)
            assert flags & GTF_reading
            assert bool(flags & GTF_writing) == (act.writers > 0)
