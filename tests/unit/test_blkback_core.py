"""blkback's sans-IO core (domains/dom0/blkback), driven by a hand-written frontend."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.dom0.blkback import (
    BlkbackCore,
    DiskFlags,
    DiskOp,
    PersistentGrants,
    VbdConfig,
    backend_keys,
    check_request,
)
from domains.kernel.ring import RingError
from hypervisor.public.blkif import (
    BLKIF_ENTRY_SIZE,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_RESERVED_1,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
)
from hypervisor.public.ring import REQ_PROD
from tests.unit.blk_fakes import Guest, Mapper, ring_pair

VBD = VbdConfig(sectors=1000)
R, W = BLKIF_OP_READ, BLKIF_OP_WRITE


def seg(gref: int = 8, first: int = 0, last: int = 7) -> BlkifSegment:
    return BlkifSegment(gref, first, last)


def rw(op: int, id_: int, sector: int, *segs: BlkifSegment) -> BlkifRequest:
    return BlkifRequest(op, id_, sector, 51712, len(segs), segs)


class Harness:
    """A raw front ring (the test is the frontend), a guest's grants and a blkback core."""

    def __init__(self, vbd: VbdConfig = VBD, *, persistent: bool = False, start: int = 0):
        self.buf, self.front, back = ring_pair(start)
        self.guest = Guest(64)
        self.mapper = Mapper(self.guest)
        self.core = BlkbackCore(back, vbd, self.mapper, persistent=persistent)

    def grant(self, readonly: bool = False) -> int:
        return self.guest.grant(self.guest.alloc()[0], readonly)

    def send(self, *reqs: BlkifRequest):
        for req in reqs:
            self.front.put_request(req.pack())
        self.front.push_requests()
        return self.core.poll()

    def responses(self) -> list[BlkifResponse]:
        return [BlkifResponse.unpack(raw) for raw in self.front.take_responses()]


# -- validation of the private copy ------------------------------------------------


@pytest.mark.parametrize(
    ("req", "status"),
    [
        (rw(R, 1, 0, seg()), None),
        (rw(R, 1, 0), BLKIF_RSP_ERROR),  # READ needs a segment
        (rw(W, 1, 0, *[seg()] * 11), None),
        (BlkifRequest(R, 1, 0, 0, 12, (seg(),) * 11), BLKIF_RSP_ERROR),
        (BlkifRequest(R, 1, 0, 0, 200, (seg(),) * 11), BLKIF_RSP_ERROR),
        (rw(R, 1, 0, seg(first=3, last=2)), BLKIF_RSP_ERROR),
        (rw(R, 1, 0, seg(first=0, last=8)), BLKIF_RSP_ERROR),
        (rw(R, 1, 0, seg(first=200, last=255)), BLKIF_RSP_ERROR),
        (rw(R, 1, 992, seg()), None),  # the last 8 sectors
        (rw(R, 1, 993, seg()), BLKIF_RSP_ERROR),
        (rw(R, 1, 2**64 - 1, seg()), BLKIF_RSP_ERROR),
        (rw(BLKIF_OP_FLUSH_DISKCACHE, 1, 2**64 - 1), None),  # no data, no range
        (rw(BLKIF_OP_WRITE_BARRIER, 1, 0), None),
        (rw(BLKIF_OP_WRITE_BARRIER, 1, 996, seg()), BLKIF_RSP_ERROR),
        (rw(BLKIF_OP_INDIRECT, 1, 0, seg()), BLKIF_RSP_EOPNOTSUPP),
        (rw(BLKIF_OP_RESERVED_1, 1, 0), BLKIF_RSP_EOPNOTSUPP),
        (rw(255, 1, 0), BLKIF_RSP_EOPNOTSUPP),
        (BlkifRequest(BLKIF_OP_DISCARD, 1, 990, nr_sectors=10), None),
        (BlkifRequest(BLKIF_OP_DISCARD, 1, 990, nr_sectors=11), BLKIF_RSP_ERROR),
        (BlkifRequest(BLKIF_OP_DISCARD, 1, 0, nr_sectors=0), BLKIF_RSP_ERROR),
        (BlkifRequest(BLKIF_OP_DISCARD, 1, 0, nr_sectors=2**64 - 1), BLKIF_RSP_ERROR),
        (BlkifRequest(BLKIF_OP_DISCARD, 1, 0, flag=1, nr_sectors=1), BLKIF_RSP_EOPNOTSUPP),
        (BlkifRequest(BLKIF_OP_DISCARD, 1, 0, flag=2, nr_sectors=1), BLKIF_RSP_ERROR),
    ],
)
def test_check_request(req, status):
    refusal = check_request(req, VBD)
    assert (refusal and refusal[0]) == status


def test_read_only_device_refuses_all_but_read():
    vbd = dataclasses.replace(VBD, readonly=True)
    assert check_request(rw(R, 1, 0, seg()), vbd) is None
    for req in (rw(W, 1, 0, seg()), rw(BLKIF_OP_FLUSH_DISKCACHE, 1, 0),
                BlkifRequest(BLKIF_OP_DISCARD, 1, 0, nr_sectors=1)):  # fmt: skip
        assert check_request(req, vbd)[0] == BLKIF_RSP_ERROR


def test_operations_not_offered_are_eopnotsupp():
    vbd = VbdConfig(1000, feature_flush_cache=False, feature_barrier=False, feature_discard=False)
    for req in (rw(BLKIF_OP_FLUSH_DISKCACHE, 1, 0), rw(BLKIF_OP_WRITE_BARRIER, 1, 0),
                BlkifRequest(BLKIF_OP_DISCARD, 1, 0, nr_sectors=1)):  # fmt: skip
        assert check_request(req, vbd)[0] == BLKIF_RSP_EOPNOTSUPP


def test_backend_keys():
    keys = backend_keys(VbdConfig(2048, readonly=True, feature_discard=False))
    assert keys["sectors"] == "2048" and keys["info"] == "4" and keys["sector-size"] == "512"
    assert keys["feature-flush-cache"] == "1" and keys["feature-discard"] == "0"


# -- plans --------------------------------------------------------------------------


def test_a_read_becomes_a_plan_and_a_response():
    h = Harness()
    g1, g2 = h.grant(), h.grant()
    out = h.send(rw(R, 77, 16, seg(g1, 0, 7), seg(g2, 0, 3)))
    assert not out.rejected and out.disconnect is None and not out.notify
    (plan,) = out.plans
    assert (plan.id, plan.disk_op, plan.flags, plan.sector, plan.nr_sectors) == (
        77, DiskOp.READ, DiskFlags.NONE, 16, 12)  # fmt: skip
    assert [(s.gref, s.first_sect, s.last_sect) for s in plan.segments] == [(g1, 0, 7), (g2, 0, 3)]
    assert not plan.segments[0].mapping.page.readonly  # the backend writes read data
    assert h.guest.entries[g1].maps == 1
    out = h.core.complete(plan.tag)
    assert out.notify and out.plans == ()
    assert h.responses() == [BlkifResponse(77, R, BLKIF_RSP_OKAY)]
    assert h.guest.entries[g1].maps == 0  # unmapped before the response was written


def test_write_pages_are_mapped_read_only_without_persistent_grants():
    h = Harness()
    g = h.grant(readonly=True)
    (plan,) = h.send(rw(W, 1, 0, seg(g))).plans
    assert plan.segments[0].mapping.page.readonly


@pytest.mark.parametrize(
    ("op", "nsegs", "disk_op", "flags"),
    [
        (BLKIF_OP_FLUSH_DISKCACHE, 0, DiskOp.FLUSH, DiskFlags.PREFLUSH),
        (BLKIF_OP_FLUSH_DISKCACHE, 1, DiskOp.WRITE, DiskFlags.PREFLUSH),
        (BLKIF_OP_WRITE_BARRIER, 0, DiskOp.FLUSH, DiskFlags.PREFLUSH),
        (BLKIF_OP_WRITE_BARRIER, 1, DiskOp.WRITE, DiskFlags.PREFLUSH | DiskFlags.FUA),
    ],
)
def test_flush_and_barrier_plans(op, nsegs, disk_op, flags):
    h = Harness()
    segs = [seg(h.grant())] * nsegs
    (plan,) = h.send(rw(op, 1, 8, *segs)).plans
    assert (plan.disk_op, plan.flags) == (disk_op, flags)


def test_discard_plan():
    h = Harness(dataclasses.replace(VBD, discard_secure=True))
    (plan,) = h.send(BlkifRequest(BLKIF_OP_DISCARD, 5, 100, flag=1, nr_sectors=50)).plans
    assert (plan.disk_op, plan.flags, plan.sector, plan.nr_sectors, plan.segments) == (
        DiskOp.DISCARD, DiskFlags.SECURE, 100, 50, ())  # fmt: skip


def test_refusals_are_answered_at_once_with_reasons():
    h = Harness()
    out = h.send(rw(R, 1, 0), rw(255, 2, 0), rw(R, 3, 0, seg(h.grant())))
    assert [r.status for r in out.rejected] == [BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP]
    assert "nr_segments" in out.rejected[0].reason
    assert out.notify and len(out.plans) == 1
    assert h.responses() == [BlkifResponse(1, R, BLKIF_RSP_ERROR),
                             BlkifResponse(2, 255, BLKIF_RSP_EOPNOTSUPP)]  # fmt: skip


def test_a_grant_the_frontend_never_made_is_an_error_and_nothing_stays_mapped():
    h = Harness()
    good = h.grant()
    out = h.send(rw(W, 9, 0, seg(good), seg(4242)))
    assert out.plans == () and out.rejected[0].reason == "grant map failed"
    assert h.responses() == [BlkifResponse(9, W, BLKIF_RSP_ERROR)]
    assert h.mapper.live == [] and h.guest.entries[good].maps == 0


def test_device_status_becomes_a_wire_status():
    h = Harness()
    p1, p2, p3 = h.send(*(rw(R, i, 0, seg(h.grant())) for i in range(3))).plans
    h.core.complete_all([(p1.tag, BLKIF_RSP_EOPNOTSUPP), (p2.tag, -5), (p3.tag, BLKIF_RSP_OKAY)])
    assert [r.status for r in h.responses()] == [-2, -1, 0]
    stats = h.core.statistics()
    assert (stats.errors, stats.eopnotsupp, stats.responses, stats.by_op) == (1, 1, 3, {"read": 3})
    with pytest.raises(ValueError):
        h.core.complete(p1.tag)


# -- ordering -------------------------------------------------------------------------


def test_barrier_waits_for_earlier_and_holds_later_requests():
    h = Harness()
    g = h.grant()
    w1, w2 = rw(W, 1, 0, seg(g)), rw(W, 2, 8, seg(g))
    out = h.send(w1, w2, rw(BLKIF_OP_WRITE_BARRIER, 3, 16, seg(g)), rw(W, 4, 24, seg(g)))
    assert [p.id for p in out.plans] == [1, 2]
    p1, p2 = out.plans
    assert h.core.complete(p1.tag).plans == ()
    (barrier,) = h.core.complete(p2.tag).plans
    assert barrier.id == 3
    (later,) = h.core.complete(barrier.tag).plans
    assert later.id == 4


def test_flush_waits_for_earlier_requests_only():
    h = Harness()
    g = h.grant()
    out = h.send(rw(W, 1, 0, seg(g)), rw(BLKIF_OP_FLUSH_DISKCACHE, 2, 0), rw(W, 3, 8, seg(g)))
    assert [p.id for p in out.plans] == [1, 3]
    (flush,) = h.core.complete(out.plans[0].tag).plans
    assert flush.id == 2


# -- persistent grants ---------------------------------------------------------------------


def test_persistent_grants_are_mapped_once_and_writable():
    h = Harness(persistent=True)
    g = h.grant()
    (p,) = h.send(rw(W, 1, 0, seg(g))).plans
    assert not p.segments[0].mapping.page.readonly
    h.core.complete(p.tag)
    for i in range(10):
        (p,) = h.send(rw(R if i % 2 else W, i, 0, seg(g))).plans
        h.core.complete(p.tag)
    assert h.mapper.map_calls == 1 and h.mapper.unmap_calls == 0
    stats = h.core.statistics()
    assert (stats.persistent_hits, stats.persistent_grants, stats.grant_unmaps) == (10, 1, 0)
    assert h.core.shutdown() and h.mapper.live == []


def test_persistent_cache_evicts_the_least_recently_used_idle_grant():
    h = Harness(dataclasses.replace(VBD, max_persistent_grants=2), persistent=True)
    a, b, c = h.grant(), h.grant(), h.grant()
    for g in (a, b):
        h.core.complete(h.send(rw(R, 1, 0, seg(g))).plans[0].tag)
    held = h.send(rw(R, 2, 0, seg(b))).plans[0]  # b busy, a idle and older
    (p,) = h.send(rw(R, 3, 0, seg(c))).plans
    assert h.guest.entries[a].maps == 0 and c in h.core.grants and a not in h.core.grants
    h.core.complete_all([(held.tag, 0), (p.tag, 0)])
    assert len(h.core.grants) == 2


def test_a_full_cache_of_busy_grants_maps_transiently():
    cache = PersistentGrants(limit=1)
    assert cache.add(1, "m1") and not cache.add(2, "m2") and not cache.add(1, "again")
    cache.put(1)
    assert cache.add(2, "m2") and cache.take_evicted() == ["m1"]
    assert cache.get(1) is None and cache.get(2) == "m2" and cache.busy() == 1
    assert cache.clear() == ["m2"] and len(cache) == 0
    with pytest.raises(ValueError):
        PersistentGrants(0)


# -- a lying frontend -------------------------------------------------------------------------


def test_bogus_indices_disconnect_without_an_exception():
    h = Harness(persistent=True)
    g = h.grant()
    (plan,) = h.send(rw(R, 1, 0, seg(g))).plans
    h.buf[REQ_PROD : REQ_PROD + 4] = (1 + 1000).to_bytes(4, "little")
    out = h.core.poll()
    assert isinstance(out.disconnect, RingError) and out.disconnect.culprit == "frontend"
    assert out.disconnect.rule == "RING_REQUEST_PROD_OVERFLOW"
    assert h.core.poll().disconnect is out.disconnect
    assert not h.core.shutdown()  # the device still holds a plan
    out = h.core.complete(plan.tag)
    assert not out.notify and h.front.unconsumed_responses() == 0  # nothing more written
    assert h.core.shutdown() and h.mapper.live == []
    assert h.core.statistics().disconnected


def test_req_prod_going_backwards_disconnects():
    h = Harness(start=2**32 - 2)
    h.send(*(rw(R, i, 0, seg(h.grant())) for i in range(4)))
    h.buf[REQ_PROD : REQ_PROD + 4] = (2**32 - 1).to_bytes(4, "little")
    assert h.core.poll().disconnect.rule == "req_prod went backwards"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(min_size=BLKIF_ENTRY_SIZE, max_size=BLKIF_ENTRY_SIZE), max_size=40),
       st.integers(0, 2**32 - 1))  # fmt: skip
def test_any_slot_contents_get_exactly_one_response(slots, start):
    """STYLE.md 3: garbage from a guest gets an error code, never a backend crash."""
    h = Harness(dataclasses.replace(VBD, discard_secure=True), persistent=True, start=start)
    grants = [h.grant() for _ in range(4)]
    raws = [bytearray(s) for s in slots]
    for i, raw in enumerate(raws):
        if i % 3 == 0:  # a third are nearly valid, so some requests reach the device
            raw[0], raw[1] = i % 7, 1 + raw[1] % 2
            raw[16:24] = (raw[16] * 3).to_bytes(8, "little")
            for off in (24, 32):
                raw[off : off + 6] = grants[raw[off] % 4].to_bytes(4, "little") + bytes(
                    [raw[off + 4] % 8, 7]
                )
    ids, answered = [], []
    for batch in (raws[i : i + 16] for i in range(0, len(raws), 16)):
        out = h.send(*[_Raw(bytes(r)) for r in batch])
        ids += [int.from_bytes(r[8:16], "little") for r in batch]
        while out.plans:
            out = h.core.complete_all([(p.tag, BLKIF_RSP_OKAY) for p in out.plans])
        answered += [r.id for r in h.responses()]
    assert sorted(answered) == sorted(ids)
    assert h.core.in_flight() == 0 and h.core.shutdown() and h.mapper.live == []


class _Raw:
    """Slot bytes exactly as a hostile frontend wrote them."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def pack(self) -> bytes:
        return self.raw


def test_a_disconnected_core_issues_nothing_more_and_shutdown_unmaps_what_waited():
    h = Harness()
    g = h.grant()
    out = h.send(rw(W, 1, 0, seg(g)), rw(BLKIF_OP_WRITE_BARRIER, 2, 8, seg(h.grant())))
    (first,) = out.plans  # the barrier waits, with its grant mapped
    h.buf[REQ_PROD : REQ_PROD + 4] = (2 + 100).to_bytes(4, "little")
    assert h.core.poll().disconnect is not None
    assert h.core.complete(first.tag).plans == ()  # the barrier is not released
    assert h.core.shutdown() and h.mapper.live == []
    assert h.core.poll().plans == ()
