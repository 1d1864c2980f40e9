"""Unit tests for the disk controller: its ABI, IOMMU walker, command core,
latency models, fault switches, queue pair and image store. No process, no
sleep: memory is a bytearray, the clock and the random seed are injected."""

from __future__ import annotations

import os
import random
import struct

import pytest

from devices.diskcore import Command, DeviceDeath, DiskCore, Faults, decode, validate
from devices.dma import DmaFault, Iommu
from devices.image import ImageFile
from devices.latency import FixedLatency, HddLatency, NoLatency, parse_latency
from devices.queue import QueuePair
from domains.kernel.ring import BackRing, FrontRing
from hypervisor.public import diskdev as dd
from hypervisor.public.diskdev import DISK_FLAG_FUA, DiskOp, DiskStatus
from hypervisor.public.platform import IOMMU_FOREIGN_BASE, iommu_entry
from hypervisor.public.ring import SRING_HEADER_SIZE
from hypervisor.public.xen import PAGE_SIZE

DOM0_PAGES = 64
CAPACITY = 1024  # sectors: 512 KiB
FOREIGN = IOMMU_FOREIGN_BASE


# -- fixtures: memory, IOMMU, store -------------------------------------------


class FakeStore:
    """A bytearray disk that logs every call, so ordering can be asserted."""

    def __init__(self, sectors: int = CAPACITY) -> None:
        self.data = bytearray(sectors * 512)
        self.log: list[tuple] = []
        self.fail: OSError | None = None
        self.short = 0

    def readv(self, offset, views):
        self._maybe_fail("readv", offset)
        for v in views:
            v[:] = self.data[offset:offset + len(v)]
            offset += len(v)
        return sum(len(v) for v in views) - self.short

    def writev(self, offset, views):
        self._maybe_fail("writev", offset)
        for v in views:
            self.data[offset:offset + len(v)] = v
            offset += len(v)
        return sum(len(v) for v in views)

    def sync(self):
        self._maybe_fail("sync", 0)

    def discard(self, offset, length):
        self._maybe_fail("discard", offset)
        self.data[offset:offset + length] = bytes(length)

    def _maybe_fail(self, what, offset):
        self.log.append((what, offset))
        if self.fail is not None:
            raise self.fail


class Platform:
    """Dom0's memory, one DomU's memory (d5) and an IOMMU table."""

    def __init__(self) -> None:
        self.dom0 = bytearray(DOM0_PAGES * PAGE_SIZE)
        self.d5 = bytearray(16 * PAGE_SIZE)
        self.table = memoryview(bytearray(64 * 8)).cast("Q")
        self.refreshes = 0
        self.iommu = Iommu(DOM0_PAGES, FOREIGN, refresh=self._refresh)
        self.iommu.set_table(self.table)
        self.iommu.add_memory(0, memoryview(self.dom0))

    def _refresh(self) -> None:
        self.refreshes += 1

    def grant(self, index: int, domid: int, pfn: int, writable: bool) -> int:
        """What Xen does on GNTMAP_device_map: returns the bfn."""
        self.table[index] = iommu_entry(domid, pfn, writable)
        return FOREIGN + index


@pytest.fixture
def plat():
    p = Platform()
    p.iommu.add_memory(5, memoryview(p.d5))
    return p


def make_core(plat, store=None, latency=None, faults=None):
    return DiskCore(store or FakeStore(), plat.iommu, CAPACITY, latency or NoLatency(),
                    faults or Faults())


def cmd(op, sector, segments, flags=0, id_=7, nr_sectors=None) -> bytes:
    """A command as the ring slot copy the device gets (128 bytes)."""
    raw = dd.pack_command(op, id_, sector, segments, flags, nr_sectors)
    return raw.ljust(dd.CMD_SIZE, b"\0")


# -- ABI -----------------------------------------------------------------------


def test_format_sizes():
    assert struct.calcsize(dd.CMD_HEADER_FORMAT) == dd.CMD_HEADER_SIZE == 24
    assert struct.calcsize(dd.SEG_FORMAT) == dd.SEG_SIZE == 8
    assert dd.CMD_HEADER_SIZE + dd.DISK_MAX_SEGMENTS * dd.SEG_SIZE <= dd.CMD_SIZE == 128
    assert dd.DISK_MAX_SEGMENTS >= 11  # blkback's largest request fits one command
    assert struct.calcsize(dd.CPL_FORMAT) == dd.CPL_SIZE == 16
    assert struct.calcsize(dd.INFO_FORMAT) == dd.INFO_SIZE == 128


def test_completion_has_blkif_response_layout():
    raw = dd.pack_completion(0x1122334455667788, DiskOp.read, DiskStatus.dma_fault)
    assert struct.unpack_from("<Q", raw, 0)[0] == 0x1122334455667788  # id @0
    assert raw[8] == DiskOp.read  # operation @8
    assert struct.unpack_from("<h", raw, 10)[0] == DiskStatus.dma_fault  # status @10
    assert dd.unpack_completion(raw) == (0x1122334455667788, DiskOp.read, DiskStatus.dma_fault)


def test_command_round_trip():
    raw = cmd(DiskOp.write, 99, [(3, 0, 7), (FOREIGN + 1, 2, 5)], DISK_FLAG_FUA, id_=42)
    c = decode(raw)
    assert c == Command(DiskOp.write, DISK_FLAG_FUA, 42, 99, 12,
                        ((3, 0, 7), (FOREIGN + 1, 2, 5)))
    with pytest.raises(dd.DiskDevError):
        dd.pack_command(DiskOp.read, 1, 0, [(1, 0, 7)] * (dd.DISK_MAX_SEGMENTS + 1))


def test_info_round_trip_magic_zero_until_stored():
    raw = dd.pack_info(2048, 7, 128, "Model X", "SER1", "1.0", 0, 99)
    info = dd.unpack_info(raw)
    assert info["magic"] == 0  # the device stores it last
    assert (info["capacity_sectors"], info["sector_size"], info["queue_slots"]) == (2048, 512, 128)
    assert (info["model"], info["serial"], info["firmware"]) == ("Model X", "SER1", "1.0")
    assert info["max_segments"] == dd.DISK_MAX_SEGMENTS and info["max_discard_sectors"] == 99


def test_mmio_codec_validates():
    msg = dd.decode_mmio(dd.encode_mmio("init", ring_bfn=3, ring_pages=8, info_bfn=11))
    assert msg == {"op": "init", "ring_bfn": 3, "ring_pages": 8, "info_bfn": 11}
    assert dd.decode_mmio(dd.encode_mmio("fault", mode="eio"))["rate"] == 0
    bad = [b"\xc1", dd.encode_mmio("reboot"), dd.encode_mmio("init", ring_bfn=3, ring_pages=0,
                                                             info_bfn=1),
           dd.encode_mmio("init", ring_bfn="3", ring_pages=1, info_bfn=1),
           dd.encode_mmio("fault", mode="explode"), dd.encode_mmio("fault", mode="eio", rate=2),
           dd.encode_mmio("latency", spec=5)]
    for frame in bad:
        with pytest.raises(dd.DiskDevError):
            dd.decode_mmio(frame)


# -- the IOMMU walker ------------------------------------------------------------


def test_iommu_identity_for_dom0(plat):
    plat.dom0[5 * PAGE_SIZE] = 0xAB
    page = plat.iommu.frame(5, write=True)
    assert len(page) == PAGE_SIZE and page[0] == 0xAB
    page[1] = 0xCD
    assert plat.dom0[5 * PAGE_SIZE + 1] == 0xCD  # the exact frame, no copy
    assert plat.iommu.frame(5, write=False).readonly


def test_iommu_table_entries(plat):
    rw, ro = plat.grant(0, 5, 2, True), plat.grant(1, 5, 3, False)
    plat.d5[2 * PAGE_SIZE] = 1
    assert plat.iommu.translate(rw, write=True) == (5, 2)
    assert plat.iommu.frame(rw, write=True)[0] == 1
    assert plat.iommu.translate(ro, write=False) == (5, 3)
    with pytest.raises(DmaFault, match="read-only"):
        plat.iommu.translate(ro, write=True)


@pytest.mark.parametrize("bfn", [DOM0_PAGES, FOREIGN - 1, FOREIGN + 2, FOREIGN + 64, -1])
def test_iommu_refuses_unmapped(plat, bfn):
    with pytest.raises(DmaFault):
        plat.iommu.frame(bfn, write=False)
    assert plat.iommu.faults == 1


def test_iommu_fetches_a_missing_domain_once(plat):
    bfn = plat.grant(0, 9, 0, True)
    with pytest.raises(DmaFault, match="no memory object for d9"):
        plat.iommu.frame(bfn, write=False)
    assert plat.refreshes == 1
    plat.iommu.refresh = lambda: plat.iommu.add_memory(9, memoryview(bytearray(PAGE_SIZE)))
    assert len(plat.iommu.frame(bfn, write=False)) == PAGE_SIZE


def test_iommu_refuses_pfn_beyond_memory(plat):
    with pytest.raises(DmaFault, match="beyond"):
        plat.iommu.frame(plat.grant(0, 5, 16, True), write=False)


def test_iommu_contiguous_only_in_dom0(plat):
    assert len(plat.iommu.contiguous(4, 8, True)) == 8 * PAGE_SIZE
    with pytest.raises(DmaFault):
        plat.iommu.contiguous(DOM0_PAGES - 2, 4, True)


# -- command validation ------------------------------------------------------------


@pytest.mark.parametrize("raw, status", [
    (cmd(0x42, 0, [(1, 0, 7)]), DiskStatus.unsupported),
    (cmd(DiskOp.read, 0, [(1, 0, 7)], flags=DISK_FLAG_FUA), DiskStatus.invalid),
    (cmd(DiskOp.write, 0, [(1, 0, 7)], flags=0x80), DiskStatus.invalid),
    (cmd(DiskOp.read, 0, []), DiskStatus.invalid),
    (cmd(DiskOp.read, 0, [(1, 5, 4)], nr_sectors=1), DiskStatus.invalid),
    (cmd(DiskOp.read, 0, [(1, 0, 8)]), DiskStatus.invalid),
    (cmd(DiskOp.read, 0, [(1, 0, 7)], nr_sectors=9), DiskStatus.invalid),
    (cmd(DiskOp.read, CAPACITY - 7, [(1, 0, 7)]), DiskStatus.range),
    (cmd(DiskOp.read, 2**64 - 1, [(1, 0, 7)]), DiskStatus.range),
    (cmd(DiskOp.flush, 0, [(1, 0, 7)]), DiskStatus.invalid),
    (cmd(DiskOp.discard, 0, [], nr_sectors=0), DiskStatus.invalid),
    (cmd(DiskOp.discard, CAPACITY, [], nr_sectors=1), DiskStatus.range),
])
def test_bad_commands_complete_with_status_and_touch_nothing(plat, raw, status):
    store = FakeStore()
    c = make_core(plat, store).execute(raw, now_ns=5)
    assert (c.id, c.status, c.deadline_ns) == (7, status, 5)
    assert store.log == []


def test_too_many_segments_is_invalid(plat):
    raw = bytearray(cmd(DiskOp.read, 0, [(1, 0, 7)]))
    raw[2] = dd.DISK_MAX_SEGMENTS + 1  # nr_segments, forged in the slot
    assert make_core(plat).execute(bytes(raw), 0).status == DiskStatus.invalid


def test_validate_accepts_good_commands():
    validate(decode(cmd(DiskOp.read, CAPACITY - 8, [(1, 0, 7)])), CAPACITY)
    validate(decode(cmd(DiskOp.flush, 0, [])), CAPACITY)
    validate(decode(cmd(DiskOp.discard, 0, [], nr_sectors=CAPACITY)), CAPACITY)


# -- DMA and I/O ----------------------------------------------------------------------


def test_write_then_read_lands_at_the_offset(plat):
    store = FakeStore()
    core = make_core(plat, store)
    plat.dom0[3 * PAGE_SIZE:4 * PAGE_SIZE] = bytes(range(256)) * 16
    c = core.execute(cmd(DiskOp.write, 16, [(3, 0, 7)]), 0)
    assert c.status == DiskStatus.ok
    assert store.data[16 * 512:24 * 512] == bytes(range(256)) * 16
    # read sectors 18..19 into sectors 6..7 of Dom0 frame 9
    c = core.execute(cmd(DiskOp.read, 18, [(9, 6, 7)]), 0)
    assert c.status == DiskStatus.ok
    assert plat.dom0[9 * PAGE_SIZE + 3072:10 * PAGE_SIZE] == store.data[18 * 512:20 * 512]
    assert plat.dom0[9 * PAGE_SIZE:9 * PAGE_SIZE + 3072] == bytes(3072)


def test_dma_into_granted_foreign_frames(plat):
    store = FakeStore()
    store.data[:4096] = b"G" * 4096
    bfn = plat.grant(4, 5, 7, writable=True)
    assert make_core(plat, store).execute(cmd(DiskOp.read, 0, [(bfn, 0, 7)]), 0).status == 0
    assert plat.d5[7 * PAGE_SIZE:8 * PAGE_SIZE] == b"G" * 4096


def test_iommu_refusal_touches_neither_memory_nor_disk(plat):
    store = FakeStore()
    store.data[:] = b"D" * len(store.data)
    ro = plat.grant(0, 5, 1, writable=False)
    segs = [(2, 0, 7), (ro, 0, 7)]  # a good Dom0 frame, then a read-only grant
    c = make_core(plat, store).execute(cmd(DiskOp.read, 0, segs), 0)
    assert c.status == DiskStatus.dma_fault
    assert store.log == [] and plat.dom0 == bytes(len(plat.dom0))
    c = make_core(plat, store).execute(cmd(DiskOp.read, 0, [(FOREIGN + 33, 0, 7)]), 0)
    assert c.status == DiskStatus.dma_fault


def test_write_from_a_read_only_grant_is_allowed(plat):
    store = FakeStore()
    plat.d5[PAGE_SIZE:2 * PAGE_SIZE] = b"R" * PAGE_SIZE
    ro = plat.grant(0, 5, 1, writable=False)
    assert make_core(plat, store).execute(cmd(DiskOp.write, 8, [(ro, 0, 7)]), 0).status == 0
    assert store.data[4096:8192] == b"R" * 4096


def test_fua_write_syncs_before_it_completes(plat):
    store = FakeStore()
    core = make_core(plat, store)
    core.execute(cmd(DiskOp.write, 0, [(1, 0, 7)]), 0)
    assert store.log == [("writev", 0)]
    core.execute(cmd(DiskOp.write, 8, [(1, 0, 7)], flags=DISK_FLAG_FUA), 0)
    assert store.log[1:] == [("writev", 4096), ("sync", 0)]
    assert core.counts["syncs"] == 1


class SlowWrites:
    """Writes take 1 ms, everything else is instant: a flush must still wait."""

    spec = "test"

    def service(self, now_ns, op, sector, nr_sectors):
        return now_ns + (1_000_000 if op == DiskOp.write else 0)


def test_flush_completes_after_earlier_writes(plat):
    store = FakeStore()
    core = make_core(plat, store, latency=SlowWrites())
    w = core.execute(cmd(DiskOp.write, 0, [(1, 0, 7)], id_=1), now_ns=100)
    r = core.execute(cmd(DiskOp.read, 0, [(2, 0, 7)], id_=2), now_ns=200)
    f = core.execute(cmd(DiskOp.flush, 0, [], id_=3), now_ns=300)
    assert r.deadline_ns == 200  # a read may overtake
    assert f.deadline_ns >= w.deadline_ns == 1_000_100
    assert store.log == [("writev", 0), ("readv", 0), ("sync", 0)]


def test_io_errors_and_short_reads_complete_with_error(plat):
    store = FakeStore()
    core = make_core(plat, store)
    store.short = 512
    assert core.execute(cmd(DiskOp.read, 0, [(1, 0, 7)]), 0).status == DiskStatus.error
    store.fail = OSError(5, "EIO")
    assert core.execute(cmd(DiskOp.write, 0, [(1, 0, 7)]), 0).status == DiskStatus.error
    assert core.execute(cmd(DiskOp.flush, 0, []), 0).status == DiskStatus.error
    assert "EIO" in core.last_error


def test_fua_write_that_fails_to_sync_is_an_error(plat):
    store = FakeStore()
    core = make_core(plat, store)

    def failing_sync():
        raise OSError(5, "EIO")
    store.sync = failing_sync
    c = core.execute(cmd(DiskOp.write, 0, [(1, 0, 7)], flags=DISK_FLAG_FUA), 0)
    assert c.status == DiskStatus.error


def test_discard_zeroes(plat):
    store = FakeStore()
    store.data[:] = b"x" * len(store.data)
    c = make_core(plat, store).execute(cmd(DiskOp.discard, 4, [], nr_sectors=4), 0)
    assert c.status == 0 and store.data[2048:4096] == bytes(2048)
    assert store.data[:2048] == b"x" * 2048


# -- faults -------------------------------------------------------------------------------


def test_eio_every_command_without_io(plat):
    store = FakeStore()
    core = make_core(plat, store, faults=Faults("eio"))
    assert core.execute(cmd(DiskOp.write, 0, [(1, 0, 7)]), 0).status == DiskStatus.error
    assert store.log == []
    # validation still comes first: a bad command says why, not EIO
    assert core.execute(cmd(0x42, 0, [(1, 0, 7)]), 0).status == DiskStatus.unsupported


def _eio_pattern(plat, seed):
    core = make_core(plat, faults=Faults("eio", 0.3, seed))
    return [core.execute(cmd(DiskOp.read, 0, [(1, 0, 7)]), 0).status for _ in range(200)]


def test_eio_rate_is_seeded_and_about_right(plat):
    a, b = _eio_pattern(plat, 1), _eio_pattern(plat, 1)
    assert a == b
    assert 30 < a.count(DiskStatus.error) < 90
    assert _eio_pattern(plat, 2) != a


def test_hang_holds_until_cleared_then_runs(plat):
    store = FakeStore()
    core = make_core(plat, store, faults=Faults("hang"))
    plat.dom0[PAGE_SIZE:2 * PAGE_SIZE] = b"h" * PAGE_SIZE
    assert core.execute(cmd(DiskOp.write, 0, [(1, 0, 7)], id_=1), 0) is None
    assert core.execute(cmd(DiskOp.flush, 0, [], id_=2), 0) is None
    assert store.log == [] and len(core.held) == 2
    assert core.set_fault("hang", 0, 10) == []  # still hanging
    done = core.set_fault("none", 0, 20)
    assert [(c.id, c.status) for c in done] == [(1, 0), (2, 0)]
    assert store.log == [("writev", 0), ("sync", 0)]
    assert store.data[:4096] == b"h" * 4096


def test_hung_command_rechecks_the_iommu_on_release(plat):
    core = make_core(plat, faults=Faults("hang"))
    bfn = plat.grant(0, 5, 1, True)
    assert core.execute(cmd(DiskOp.read, 0, [(bfn, 0, 7)]), 0) is None
    plat.table[0] = 0  # Dom0 unmapped the grant meanwhile
    (c,) = core.set_fault("none", 0, 0)
    assert c.status == DiskStatus.dma_fault


def test_die_raises_before_any_io(plat):
    store = FakeStore()
    core = make_core(plat, store, faults=Faults("die"))
    with pytest.raises(DeviceDeath):
        core.execute(cmd(DiskOp.write, 0, [(1, 0, 7)]), 0)
    assert store.log == []


def test_faults_validate():
    with pytest.raises(ValueError):
        Faults("melt")
    with pytest.raises(ValueError):
        Faults("eio", 1.5)


# -- latency models ------------------------------------------------------------------------


def test_none_and_fixed():
    assert NoLatency().service(123, DiskOp.read, 0, 8) == 123
    assert FixedLatency(250).service(1000, DiskOp.read, 0, 8) == 251_000
    assert parse_latency("fixed:250", CAPACITY).spec == "fixed:250"


def test_parse_latency_rejects_nonsense():
    for spec in ("", "fast", "fixed:", "fixed:-3", "hdd:12", "hdd:x"):
        with pytest.raises(ValueError):
            parse_latency(spec, CAPACITY)


def hdd(seed=0, **kw):
    return HddLatency(1 << 24, rng=random.Random(seed), **kw)


def test_hdd_seeks_scale_with_distance():
    m = hdd()
    assert m.seek_ns(0) == 0
    near, far = m.seek_ns(1000), m.seek_ns(1 << 23)
    assert 800_000 <= near < far <= 16_000_000


def test_hdd_rotation_is_within_one_revolution_and_deterministic():
    a, b = hdd(seed=3), hdd(seed=3)
    period = 60 * 10**9 // 7200
    for t in (0, 1, 12345, 10**9):
        assert 0 <= a.rotation_ns(t, 77) < period
        assert a.rotation_ns(t, 77) == b.rotation_ns(t, 77)
    assert hdd(seed=4).rotation_ns(0, 77) != a.rotation_ns(0, 77)


def test_hdd_serves_fifo_from_the_head_position():
    m = hdd()
    d1 = m.service(0, DiskOp.read, 1 << 23, 8)
    assert d1 >= 800_000 and m.head == (1 << 23) + 8
    d2 = m.service(0, DiskOp.read, (1 << 23) + 8, 8)  # queued behind d1, no seek
    assert d2 >= d1 and d2 - d1 < m.period_ns + m.transfer_ns(8) + 1
    d3 = m.service(d2, DiskOp.flush, 0, 0)
    assert d3 == d2 and m.head == (1 << 23) + 16  # a flush does not move the head


def test_hdd_spec():
    assert parse_latency("hdd", CAPACITY).spec == "hdd"
    assert parse_latency("hdd:5400", CAPACITY).spec == "hdd:5400"


# -- the queue pair: ring, doorbells, interrupts ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def queue_pair(plat, latency=None, faults=None, store=None):
    buf = bytearray(SRING_HEADER_SIZE + 8 * dd.CMD_SIZE)
    front = FrontRing(buf, dd.CMD_SIZE)
    clock = Clock()
    qp = QueuePair(BackRing(buf, dd.CMD_SIZE), make_core(plat, store, latency, faults), clock)
    return buf, front, qp, clock


def test_batch_of_commands_one_doorbell_one_irq(plat):
    _, front, qp, _ = queue_pair(plat)
    for i in range(5):
        front.put_request(dd.pack_command(DiskOp.read, i, i * 8, [(1 + i, 0, 7)]))
    assert front.push_requests()  # the device armed req_event at reset: ring
    assert qp.kick()  # the IRQ: the driver armed rsp_event
    got = [dd.unpack_completion(r) for r in front.take_responses()]
    assert [(i, s) for i, _, s in got] == [(i, 0) for i in range(5)]
    assert not front.final_check_for_responses()
    # the device re-armed req_event when it went idle: the next push rings again
    front.put_request(dd.pack_command(DiskOp.flush, 9, 0, []))
    assert front.push_requests()


def test_no_doorbell_needed_while_the_device_is_busy(plat):
    _, front, qp, _ = queue_pair(plat)
    front.put_request(dd.pack_command(DiskOp.flush, 1, 0, []))
    assert front.push_requests()
    # before the device looks, more arrive: req_event still says "notify at 1"
    front.put_request(dd.pack_command(DiskOp.flush, 2, 0, []))
    assert not front.push_requests()
    qp.kick()
    assert [dd.unpack_completion(r)[0] for r in front.take_responses()] == [1, 2]


def test_completions_wait_for_their_deadline(plat):
    _, front, qp, clock = queue_pair(plat, latency=FixedLatency(100))
    front.put_request(dd.pack_command(DiskOp.read, 1, 0, [(1, 0, 7)]))
    front.push_requests()
    assert not qp.kick()  # accepted, not yet complete: no IRQ
    assert qp.next_deadline() == 100_000 and front.unconsumed_responses() == 0
    clock.now = 99_999
    assert not qp.complete_due()
    clock.now = 100_000
    assert qp.complete_due()
    assert qp.next_deadline() is None and front.unconsumed_responses() == 1


def test_irq_suppressed_until_the_driver_rearms(plat):
    _, front, qp, _ = queue_pair(plat)
    front.put_request(dd.pack_command(DiskOp.flush, 1, 0, []))
    front.push_requests()
    assert qp.kick()
    # the driver has not consumed (rsp_event still 1): the next response is silent
    front.put_request(dd.pack_command(DiskOp.flush, 2, 0, []))
    front.push_requests()
    assert not qp.kick()
    assert len(front.take_responses()) == 2


def test_hang_then_release_through_the_queue_pair(plat):
    _, front, qp, _ = queue_pair(plat, faults=Faults("hang"))
    front.put_request(dd.pack_command(DiskOp.flush, 1, 0, []))
    front.push_requests()
    assert not qp.kick() and qp.outstanding() == 1
    assert qp.set_fault("none", 0)
    assert dd.unpack_completion(front.take_responses()[0])[:1] == (1,)


def test_a_lying_driver_halts_only_the_queue_pair(plat):
    buf, front, qp, _ = queue_pair(plat)
    struct.pack_into("<I", buf, 0, 1000)  # req_prod far beyond a ring of 8
    assert not qp.kick()
    assert qp.error is not None and qp.error.culprit == "frontend"
    assert not qp.kick() and qp.next_deadline() is None


def test_die_propagates_from_the_queue_pair(plat):
    _, front, qp, _ = queue_pair(plat, faults=Faults("die"))
    front.put_request(dd.pack_command(DiskOp.flush, 1, 0, []))
    front.push_requests()
    with pytest.raises(DeviceDeath):
        qp.kick()


# -- the image file -----------------------------------------------------------------------------


def test_image_file_scatter_gather_and_discard(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(b"\xff" * 65536)
    img = ImageFile(str(path))
    try:
        a, b = bytearray(b"a" * 512), bytearray(b"b" * 1024)
        assert img.writev(4096, [memoryview(a), memoryview(b)]) == 1536
        img.sync()
        out = [memoryview(bytearray(1024)), memoryview(bytearray(512))]
        assert img.readv(4096, out) == 1536
        assert bytes(out[0]) + bytes(out[1]) == b"a" * 512 + b"b" * 1024
        img.discard(8192, 4096)
        assert img.readv(65536 - 512, [memoryview(bytearray(1024))]) == 512  # end of file
    finally:
        img.close()
    data = path.read_bytes()
    assert data[4096:5632] == b"a" * 512 + b"b" * 1024
    assert data[8192:12288] == bytes(4096) and data[12288:12289] == b"\xff"
    assert os.path.getsize(path) == 65536
