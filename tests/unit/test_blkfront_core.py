"""blkfront's sans-IO core (domains/xenolinux/blkfront_core.py), with the test as backend."""

from __future__ import annotations

import dataclasses

import pytest

from domains.xenolinux.blkfront_core import BlkfrontCore, BlkifState, ShadowState
from domains.xenolinux.blkfront_io import BackendFeatures, BlockIo, split_io
from hypervisor.public.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    BlkifRequest,
    BlkifResponse,
)
from hypervisor.public.ring import RSP_PROD
from tests.unit.blk_fakes import Guest, get, pattern, read_io, ring_pair, write_io

FEATURES = BackendFeatures(sectors=4096, feature_flush_cache=True, feature_discard=True)
R, W = BLKIF_OP_READ, BLKIF_OP_WRITE


class Harness:
    """A blkfront core on one ring; the test plays blkback on the BackRing."""

    def __init__(self, features: BackendFeatures = FEATURES, *, persistent: bool = False,
                 start: int = 0, connect: bool = True) -> None:  # fmt: skip
        self.guest = Guest(512)
        self.core = BlkfrontCore(self.guest, self.guest, handle=51712, want_persistent=persistent)
        self.features = features
        if connect:
            self.reconnect(start)

    def reconnect(self, start: int = 0):
        self.buf, front, self.back = ring_pair(start)
        return self.core.connect(front, self.features)

    def requests(self) -> list[BlkifRequest]:
        self.core.push()
        return [BlkifRequest.unpack(raw) for raw in self.back.take_requests()]

    def answer(self, *pairs: tuple[BlkifRequest, int]):
        for req, status in pairs:
            self.back.put_response(BlkifResponse(req.id, req.operation, status).pack())
        self.back.push_responses()
        return self.core.handle_responses()

    def serve(self, req: BlkifRequest, data: bytes = b"") -> None:
        """Do what a backend does for one segment list: DMA through the grants."""
        off = 0
        for s in req.segments:
            page = self.guest.page(self.guest.entries[s.gref].pfn)
            n = (s.last_sect - s.first_sect + 1) * 512
            if req.operation == R:
                page[s.first_sect * 512 : s.first_sect * 512 + n] = data[off : off + n]
            off += n


# -- building requests -----------------------------------------------------------------


def test_submit_before_connect_queues_and_connect_issues():
    h = Harness(connect=False)
    h.core.submit(read_io(h.guest, 0, 8))
    assert h.core.statistics().queued == 1 and not h.core.push()
    h.reconnect()
    (req,) = h.requests()
    assert (req.operation, req.id, req.handle, req.sector_number, req.nr_segments) == (
        R, 0, 51712, 0, 1)  # fmt: skip


def test_batching_many_requests_one_notification():
    h = Harness()
    for i in range(10):
        h.core.submit(read_io(h.guest, 8 * i, 8))
    assert h.core.push() is True
    stats = h.core.statistics()
    assert (stats.requests, stats.pushes, stats.notifications, stats.in_flight) == (10, 1, 1, 10)


def test_ids_stay_below_ring_size_and_the_rest_queue():
    h = Harness()
    for i in range(40):
        h.core.submit(read_io(h.guest, i, 1))
    reqs = h.requests()
    assert sorted(r.id for r in reqs) == list(range(32))
    assert h.core.statistics().queued == 8
    h.answer(*((r, BLKIF_RSP_OKAY) for r in reqs[:5]))
    assert h.core.statistics().queued == 3  # refilled, not yet published
    assert {r.id for r in h.requests()} == {r.id for r in reqs[:5]}


def test_large_io_splits_into_requests_of_eleven_pages():
    h = Harness()
    io = write_io(h.guest, 1000, pattern(1, 100))
    h.core.submit(io)
    a, b = h.requests()
    assert (a.sector_number, a.nr_segments, b.sector_number, b.nr_segments) == (1000, 11, 1088, 2)
    assert [(s.first_sect, s.last_sect) for s in b.segments] == [(0, 7), (0, 3)]
    assert h.answer((a, BLKIF_RSP_OKAY)) == []  # half done
    (done,) = h.answer((b, BLKIF_RSP_OKAY))
    assert done.io is io and done.status == BLKIF_RSP_OKAY


def test_one_failed_part_fails_the_whole_io():
    h = Harness()
    h.core.submit(read_io(h.guest, 0, 96))
    a, b = h.requests()
    h.answer((a, BLKIF_RSP_ERROR))
    (done,) = h.answer((b, BLKIF_RSP_OKAY))
    assert done.status == BLKIF_RSP_ERROR


def test_split_io_numbers_parts_in_order():
    io = BlockIo(R, 0, 200, tuple(Guest(32).buffers(200)))
    parts = split_io(io, 10)
    assert [p.seq for p in parts] == [10, 11, 12] and parts[0].owner.left == 3


@pytest.mark.parametrize(
    "bad",
    [
        BlockIo(R, 0, 0),
        BlockIo(R, 0, 9, ((0, memoryview(bytearray(4096))),)),  # 9 sectors need 2 pages
        BlockIo(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, ((0, memoryview(bytearray(4096))),)),
        BlockIo(BLKIF_OP_FLUSH_DISKCACHE, 0, 8),
        BlockIo(BLKIF_OP_DISCARD, 0, 0),
        BlockIo(BLKIF_OP_WRITE_BARRIER, 0, 96, tuple((0, memoryview(b"")) for _ in range(12))),
        BlockIo(7, 0, 0),
        BlockIo(R, -1, 8, ((0, memoryview(bytearray(4096))),)),
    ],
)
def test_broken_block_io_is_a_local_value_error(bad):
    with pytest.raises(ValueError):
        Harness().core.submit(bad)


def test_flush_discard_and_barrier_requests():
    h = Harness()
    h.core.submit(BlockIo(BLKIF_OP_FLUSH_DISKCACHE))
    h.core.submit(BlockIo(BLKIF_OP_DISCARD, 64, 128, secure=True))
    h.core.submit(BlockIo(BLKIF_OP_WRITE_BARRIER, 8, 8, h.guest.buffers(8, bytes(4096))))
    flush, discard, barrier = h.requests()
    assert (flush.operation, flush.nr_segments) == (BLKIF_OP_FLUSH_DISKCACHE, 0)
    assert (discard.sector_number, discard.nr_sectors, discard.flag) == (64, 128, 1)
    assert (barrier.operation, barrier.nr_segments) == (BLKIF_OP_WRITE_BARRIER, 1)


def test_flush_goes_out_as_a_barrier_when_only_barriers_are_offered():
    h = Harness(BackendFeatures(4096, feature_barrier=True))
    h.core.submit(BlockIo(BLKIF_OP_FLUSH_DISKCACHE))
    assert h.requests()[0].operation == BLKIF_OP_WRITE_BARRIER


def test_eopnotsupp_turns_the_feature_off():
    h = Harness()
    h.core.submit(BlockIo(BLKIF_OP_DISCARD, 0, 8))
    (req,) = h.requests()
    (done,) = h.answer((req, BLKIF_RSP_EOPNOTSUPP))
    assert done.status == BLKIF_RSP_EOPNOTSUPP and not h.core.features.feature_discard


# -- grants ----------------------------------------------------------------------------------


def test_transient_grants_read_only_for_writes_and_ended_on_response():
    h = Harness()
    h.core.submit(write_io(h.guest, 0, pattern(1, 8)))
    h.core.submit(read_io(h.guest, 0, 8))
    w, r = h.requests()
    assert h.guest.entries[w.segments[0].gref].readonly
    assert not h.guest.entries[r.segments[0].gref].readonly
    h.answer((w, BLKIF_RSP_OKAY), (r, BLKIF_RSP_OKAY))
    assert h.guest.entries == {}


def test_persistent_pool_copies_data_and_is_reused():
    h = Harness(dataclasses.replace(FEATURES, feature_persistent=True), persistent=True)
    data = pattern(7, 16)
    io = write_io(h.guest, 0, data)
    h.core.submit(io)
    (w,) = h.requests()
    pool_pfns = [h.guest.entries[s.gref].pfn for s in w.segments]
    assert pool_pfns != [pfn for pfn, _ in io.buffers]  # copied into pool pages
    assert b"".join(bytes(h.guest.page(p)) for p in pool_pfns) == data
    h.answer((w, BLKIF_RSP_OKAY))
    rd = read_io(h.guest, 0, 16)
    h.core.submit(rd)
    (r,) = h.requests()
    assert {s.gref for s in r.segments} == {s.gref for s in w.segments}  # the same grants
    h.serve(r, pattern(9, 16))
    (done,) = h.answer((r, BLKIF_RSP_OKAY))
    assert get(done.io.buffers, 16) == pattern(9, 16)  # copied out of the pool
    stats = h.core.statistics()
    assert (stats.grants, stats.persistent_pages, stats.end_access) == (2, 2, 0)


# -- validating responses ----------------------------------------------------------------------


def answer_raw(h: Harness, rsp: BlkifResponse):
    h.back.put_response(rsp.pack())
    h.back.push_responses()
    return h.core.handle_responses()


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (lambda req: BlkifResponse(32, req.operation, 0), "response id"),
        (lambda req: BlkifResponse(2**64 - 1, req.operation, 0), "response id"),
        (lambda req: BlkifResponse(5, req.operation, 0), "response id"),  # not in flight
        (lambda req: BlkifResponse(req.id, BLKIF_OP_WRITE, 0), "response operation"),
    ],
)
def test_a_bad_response_puts_the_device_in_error(make, rule):
    h = Harness()
    h.core.submit(read_io(h.guest, 0, 8))
    h.core.submit(read_io(h.guest, 8, 8))
    req, other = h.requests()
    assert answer_raw(h, make(req)) == []
    assert h.core.state is BlkifState.ERROR and h.core.error.rule == rule
    assert h.core.error.culprit == "backend"
    # Stopped: a later good response is not even read, and nothing is pushed.
    assert answer_raw(h, BlkifResponse(other.id, R, 0)) == [] and not h.core.push()
    assert h.core.in_flight() == 2


def test_rsp_prod_running_ahead_is_an_error():
    h = Harness()
    h.core.submit(read_io(h.guest, 0, 8))
    h.requests()
    h.buf[RSP_PROD : RSP_PROD + 4] = (40).to_bytes(4, "little")
    assert h.core.handle_responses() == []
    assert h.core.error.rule == "RING_RESPONSE_PROD_OVERFLOW"


def test_a_backend_still_mapping_a_transient_grant_is_an_error():
    h = Harness()
    h.core.submit(read_io(h.guest, 0, 8))
    (req,) = h.requests()
    h.guest.entries[req.segments[0].gref].maps = 1  # the backend "forgot" to unmap
    assert h.answer((req, BLKIF_RSP_OKAY)) == []
    assert h.core.error.rule == "backend has not unmapped grant"
    assert h.core.shadow[req.id].state is ShadowState.WAITING  # parked by suspend()


# -- recovery (reference 2.6) ---------------------------------------------------------------------


def test_suspend_parks_in_flight_and_connect_reissues_in_order():
    h = Harness()
    ios = [write_io(h.guest, 8 * i, pattern(i, 8)) for i in range(5)]
    for io in ios[:4]:
        h.core.submit(io)
    reqs = h.requests()
    h.answer((reqs[1], BLKIF_RSP_OKAY))  # consumed: never repeated
    h.back.put_response(BlkifResponse(reqs[2].id, W, 0).pack())  # answered, not yet consumed
    h.back.push_responses()
    h.core.suspend()
    h.core.submit(ios[4])  # queued behind the parked ones
    assert h.core.state is BlkifState.SUSPENDED and not h.core.push()
    assert h.core.requests_to_reissue() == [ios[0], ios[2], ios[3]]
    assert h.guest.entries == {}  # every grant ended
    assert h.reconnect() == [ios[0], ios[2], ios[3]]
    again = h.requests()
    assert [r.sector_number for r in again] == [0, 16, 24, 32]
    assert [r.id for r in again] == [0, 1, 2, 3]  # fresh ids on the new ring
    done = h.answer(*((r, BLKIF_RSP_OKAY) for r in again))
    assert [c.io for c in done] == [ios[0], ios[2], ios[3], ios[4]]
    assert h.core.statistics().reissued == 3 and h.core.requests_to_reissue() == []


def test_grants_the_old_backend_still_maps_are_ended_later():
    h = Harness()
    h.core.submit(read_io(h.guest, 0, 8))
    (req,) = h.requests()
    entry = h.guest.entries[req.segments[0].gref]
    entry.maps = 1
    h.core.suspend()
    assert h.core.grants_still_mapped() == 1
    entry.maps = 0  # Xen dropped the dead backend's mappings
    h.reconnect()
    assert h.core.grants_still_mapped() == 0 and req.segments[0].gref not in h.guest.entries


def test_error_state_recovers_through_suspend_and_connect():
    h = Harness(start=2**32 - 1)
    io = read_io(h.guest, 0, 8)
    h.core.submit(io)
    (req,) = h.requests()
    answer_raw(h, BlkifResponse(req.id, W, 0))
    assert h.core.state is BlkifState.ERROR
    with pytest.raises(ValueError):  # the shadows must be parked first
        h.core.connect(ring_pair()[1], FEATURES)
    h.core.suspend()
    assert h.reconnect() == [io]
    (req,) = h.requests()
    h.serve(req, pattern(3, 8))
    (done,) = h.answer((req, BLKIF_RSP_OKAY))
    assert done.io is io and get(io.buffers, 8) == pattern(3, 8)


def test_connect_twice_is_refused():
    h = Harness()
    with pytest.raises(ValueError):
        h.reconnect()


def test_backend_features_from_xenstore_keys():
    f = BackendFeatures.from_keys({"sectors": "2048", "info": "4", "feature-persistent": "1"})
    assert (f.sectors, f.readonly, f.feature_persistent, f.feature_flush_cache) == (
        2048, True, True, False)  # fmt: skip
    with pytest.raises(ValueError):
        BackendFeatures.from_keys({"sectors": "lots"})
    with pytest.raises(KeyError):
        BackendFeatures.from_keys({})


def test_statistics_is_frozen():
    stats = Harness().core.statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.requests = 1  # type: ignore[misc]


def test_abandon_fails_every_parked_and_queued_io():
    h = Harness()
    ios = [read_io(h.guest, 8 * i, 8) for i in range(40)]
    for io in ios:
        h.core.submit(io)
    h.requests()
    with pytest.raises(ValueError):
        h.core.abandon()
    h.core.suspend()  # backend Closing: FREE_RING, then the device is removed
    done = h.core.abandon()
    assert [c.io for c in done] == ios and {c.status for c in done} == {BLKIF_RSP_ERROR}
    assert h.core.requests_to_reissue() == [] and h.core.statistics().queued == 0
    assert h.guest.entries == {}
