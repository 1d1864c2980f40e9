"""blkfront core <-> blkback core through one real ring, a fake disk and fake grants.

The in-process half of the split-driver conformance suite (STYLE.md 10): the
same properties are later checked across real processes.
"""

from __future__ import annotations

import random

import pytest

from domains.dom0.blkback import BlkbackCore, DiskOp, VbdConfig
from domains.kernel.xenbus_state import Duty, Event, Role, Switch, next_actions
from domains.xenolinux.blkfront_core import BlkifState
from domains.xenolinux.blkfront_io import BlockIo
from hypervisor.public.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    SECTOR_SIZE,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
)
from hypervisor.public.ring import REQ_PROD
from hypervisor.public.xenbus import XenbusState as S
from tests.unit.blk_fakes import Disk, Guest, Mapper, Pair, get, pattern, read_io, ring_pair
from tests.unit.blk_fakes import write_io as write

WRAP = 2**32 - 7  # indices cross 2^32 within the first ring's worth of requests


def sectors_of(disk: Disk, sector: int, n: int) -> bytes:
    return bytes(disk.data[sector * SECTOR_SIZE : (sector + n) * SECTOR_SIZE])


def all_ok(done) -> bool:
    return all(c.status == BLKIF_RSP_OKAY for c in done)


@pytest.mark.parametrize("persistent", [True, False])
def test_read_after_write(persistent):
    p = Pair(persistent=persistent)
    writes = [write(p.guest, 128 * i, pattern(i, 1 + 13 * i)) for i in range(8)]
    p.submit(*writes)
    assert all_ok(p.run())
    for i in range(8):  # the bytes are at the right offset of the disk
        assert sectors_of(p.disk, 128 * i, 1 + 13 * i) == pattern(i, 1 + 13 * i)
    reads = [read_io(p.guest, 128 * i, 1 + 13 * i) for i in range(8)]
    p.submit(*reads)
    done = p.run()
    assert all_ok(done) and {c.io for c in done} == set(reads)
    for i, io in enumerate(reads):
        assert get(io.buffers, io.nr_sectors) == pattern(i, 1 + 13 * i)
    assert p.mapper.live == [] or persistent


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("persistent", [True, False])
def test_many_in_flight_across_index_wrap(seed, persistent):
    rng = random.Random(seed)
    p = Pair(start=WRAP, persistent=persistent, sectors=64 * 100)
    sizes = [rng.randint(1, 64) for _ in range(100)]
    order = rng.sample(range(100), 100)
    p.submit(*(write(p.guest, 64 * i, pattern(i, sizes[i]), cookie=i) for i in order))
    done = p.run(pick=rng.randrange)
    assert all_ok(done) and sorted(c.io.cookie for c in done) == list(range(100))
    reads = [read_io(p.guest, 64 * i, sizes[i], cookie=i) for i in order]
    p.submit(*reads)
    assert all_ok(p.run(pick=rng.randrange))
    for io in reads:
        assert get(io.buffers, io.nr_sectors) == pattern(io.cookie, sizes[io.cookie])
    stats = p.front.ring.statistics()
    assert stats.req_prod < WRAP and stats.rsp_prod == stats.req_prod  # wrapped, all answered
    assert p.front.statistics().in_flight == 0 and p.back.in_flight() == 0


def test_notifications_are_suppressed_under_load():
    p = Pair(start=WRAP)
    p.submit(*(read_io(p.guest, 8 * i, 8) for i in range(32)))
    p.run()
    assert p.notifies["front_to_back"] == 1  # 32 requests, one event


@pytest.mark.parametrize("seed", range(4))
def test_flush_and_barrier_ordering(seed):
    rng = random.Random(seed)
    p = Pair()
    early = [write(p.guest, 16 * i, pattern(i, 16), cookie=i) for i in range(4)]
    barrier = BlockIo(BLKIF_OP_WRITE_BARRIER, 200, 8, p.guest.buffers(8, pattern(9, 8)))
    late = [write(p.guest, 300 + 16 * i, pattern(20 + i, 16), cookie=20 + i) for i in range(3)]
    flush = BlockIo(BLKIF_OP_FLUSH_DISKCACHE)
    p.submit(*early, barrier, *late, flush)
    assert all_ok(p.run(pick=rng.randrange))
    log = [(op, sector) for op, sector, _, _ in p.disk.log]
    at = log.index((DiskOp.WRITE, 200))
    assert {s for _, s in log[:at]} == {0, 16, 32, 48}  # every earlier write went first
    assert {s for _, s in log[at + 1 : at + 4]} == {300, 316, 332}  # the later ones after
    assert log[-1] == (DiskOp.FLUSH, 0)  # the flush waited for all before it


def test_discard():
    p = Pair()
    p.submit(write(p.guest, 0, pattern(1, 64)))
    p.run()
    p.submit(BlockIo(BLKIF_OP_DISCARD, 16, 32))
    (done,) = p.run()
    assert done.status == BLKIF_RSP_OKAY
    rd = read_io(p.guest, 0, 64)
    p.submit(rd)
    p.run()
    data = get(rd.buffers, 64)
    assert data[: 16 * 512] == pattern(1, 64)[: 16 * 512]
    assert data[16 * 512 : 48 * 512] == bytes(32 * 512)
    assert data[48 * 512 :] == pattern(1, 64)[48 * 512 :]


def test_persistent_grants_need_no_map_or_unmap_in_steady_state():
    p = Pair(persistent=True)
    p.submit(*(write(p.guest, 88 * i, pattern(i, 88)) for i in range(32)))  # warm the pool
    p.run()
    maps, grants = p.mapper.map_calls, p.guest.grant_calls
    bufs = [p.guest.buffers(88) for _ in range(32)]
    for _ in range(5):  # 32 requests of 11 pages in flight: the whole pool is busy
        p.submit(*(BlockIo(BLKIF_OP_READ, 88 * i, 88, bufs[i]) for i in range(16)))
        p.submit(*(BlockIo(BLKIF_OP_WRITE, 88 * i, 88, bufs[i]) for i in range(16, 32)))
        assert all_ok(p.run())
    assert (p.mapper.map_calls, p.mapper.unmap_calls, p.guest.grant_calls) == (maps, 0, grants)
    assert p.back.statistics().persistent_grants == p.front.statistics().persistent_pages


def test_without_persistent_grants_every_request_maps_and_unmaps():
    p = Pair(persistent=False)
    p.submit(*(read_io(p.guest, 8 * i, 8) for i in range(10)))
    p.run()
    assert p.back.statistics().grant_maps == 10 == p.back.statistics().grant_unmaps
    assert p.guest.entries == {}


# -- a malicious frontend next to an honest one ---------------------------------------


class Attacker:
    """A guest that writes its own slots and indices, served by its own blkback."""

    def __init__(self, disk: Disk) -> None:
        self.buf, self.front, back = ring_pair()
        self.guest = Guest(16, first_gref=1000)  # its grefs differ from the honest guest's
        self.mapper = Mapper(self.guest)
        self.back = BlkbackCore(back, VbdConfig(sectors=len(disk.data) // 512), self.mapper)
        self.disk = disk

    def send(self, *reqs: BlkifRequest) -> list[BlkifResponse]:
        for req in reqs:
            self.front.put_request(req.pack())
        self.front.push_requests()
        out = self.back.poll()
        while out.plans:
            out = self.back.complete_all([(pl.tag, self.disk.execute(pl)) for pl in out.plans])
        return [BlkifResponse.unpack(raw) for raw in self.front.take_responses()]


def test_a_malicious_frontend_is_refused_and_an_honest_one_is_untouched():
    disk = Disk(4096)
    honest = Pair(disk=disk)
    evil = Attacker(disk)
    honest.submit(write(honest.guest, 0, pattern(1, 64)))
    honest.run()
    # a grant of a page the attacker does not own: the honest guest's gref numbers
    stolen = next(iter(honest.guest.entries), 8)
    mine = evil.guest.grant(evil.guest.alloc()[0], False)

    def rw(id_, op, sector, *segs):
        return BlkifRequest(op, id_, sector, 51712, len(segs), segs)

    rsps = evil.send(
        rw(1, BLKIF_OP_READ, 0, BlkifSegment(stolen, 0, 7)),  # not its grant
        rw(2, BLKIF_OP_WRITE, 0, BlkifSegment(mine, 0, 9)),  # oversized segment
        rw(3, BLKIF_OP_WRITE, 4095, BlkifSegment(mine, 0, 7)),  # past the end
        BlkifRequest(BLKIF_OP_WRITE, 4, 0, 0, 12, (BlkifSegment(mine, 0, 7),) * 11),
    )
    assert sorted((r.id, r.status) for r in rsps) == [(i, BLKIF_RSP_ERROR) for i in (1, 2, 3, 4)]
    assert sectors_of(disk, 0, 64) == pattern(1, 64)  # nothing landed on the disk
    honest.submit(write(honest.guest, 64, pattern(2, 64)))  # interleaved honest I/O
    evil.buf[REQ_PROD : REQ_PROD + 4] = (5 + 1000).to_bytes(4, "little")  # bogus index
    out = evil.back.poll()
    assert out.disconnect is not None and out.disconnect.culprit == "frontend"
    assert next_actions(Role.BACKEND, S.Connected, S.Connected, Event.FATAL) == [
        Duty.REPORT_ERROR, Switch(S.Closing)]  # fmt: skip
    assert evil.back.shutdown() and evil.mapper.live == []
    assert all_ok(honest.run())
    rd = read_io(honest.guest, 0, 128)
    honest.submit(rd)
    assert all_ok(honest.run())
    assert get(rd.buffers, 128) == pattern(1, 64) + pattern(2, 64)
    assert honest.front.state is BlkifState.CONNECTED and not honest.disconnects


# -- backend restart with requests in flight (reference 2.6) ------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("before", "after"), [(True, True), (True, False), (False, True)])
def test_backend_restart_with_requests_in_flight_loses_nothing(seed, before, after):
    rng = random.Random(seed)
    p = Pair(start=WRAP, persistent=before, sectors=64 * 80)
    p.submit(*(write(p.guest, 64 * i, pattern(i, 40)) for i in range(40)))
    assert all_ok(p.run())
    # Overwrite half, read the other half; the backend dies part way through.
    ios = [write(p.guest, 64 * i, pattern(100 + i, 40), cookie=i) for i in range(0, 40, 2)]
    ios += [read_io(p.guest, 64 * i, 40, cookie=i) for i in range(1, 40, 2)]
    rng.shuffle(ios)
    p.submit(*ios)
    for _ in range(rng.randint(0, 30)):
        p.step(pick=rng.randrange)
    for plan in p.device[: rng.randint(0, len(p.device))]:
        p.disk.execute(plan)  # done by the device, never answered: applied, then re-issued
    seen, p.done = p.done, []  # completions the frontend saw before the crash
    p.mapper.drop_all()  # Xen unmaps the dead backend's grants

    # The new backend instance probes; the frontend follows the xenbus table.
    actions = next_actions(Role.FRONTEND, S.Connected, S.InitWait)
    assert actions == [Duty.FREE_RING, Duty.SETUP_RING, Switch(S.Initialised)]
    p.front.suspend()
    parked = p.front.requests_to_reissue()
    assert next_actions(Role.BACKEND, S.InitWait, S.Initialised)[:1] == [Duty.MAP_RING]
    assert next_actions(Role.FRONTEND, S.Initialised, S.Connected)[0] is Duty.CONNECT
    p.front.want_persistent = after
    assert p.connect() == parked
    done = seen + p.run(pick=rng.randrange)

    assert all_ok(done) and sorted(c.io.cookie for c in done) == list(range(40))
    for io in ios:
        i = io.cookie
        want = pattern(100 + i, 40) if i % 2 == 0 else pattern(i, 40)
        assert sectors_of(p.disk, 64 * i, 40) == want
        if io.operation == BLKIF_OP_READ:
            assert get(io.buffers, 40) == pattern(i, 40)
    assert p.front.grants_still_mapped() == 0
    pool = p.front.statistics().persistent_pages
    assert len(p.guest.entries) == pool  # only the new pool's grants remain
