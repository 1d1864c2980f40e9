"""The NIC's ABI and its DMA core (devices.niccore), without processes.

Dom0's memory is a bytearray; the driver's side is a FrontRing over it, the
device's a NicCore with an IOMMU that maps Dom0 (identity) and one foreign
window entry, as Xen would.
"""

import struct

import pytest

from devices.dma import Iommu
from devices.niccore import RX_FIFO, NicCore
from domains.kernel.ring import BackRing, FrontRing
from hypervisor.public import nicdev as nd
from hypervisor.public.nicdev import NicStatus
from hypervisor.public.platform import IOMMU_FOREIGN_BASE, iommu_entry
from hypervisor.public.xen import PAGE_SIZE

DOM0_PAGES = 64
TX_RING, RX_RING = 2, 8  # pfns
GUEST_PAGES = 4
BUF0 = 16  # first buffer pfn


def test_format_sizes():
    assert struct.calcsize(nd.TX_HEADER_FORMAT) == 8
    assert struct.calcsize(nd.TX_SEG_FORMAT) == 8
    assert nd.TX_HEADER_SIZE + nd.NIC_MAX_TX_SEGS * nd.TX_SEG_SIZE <= nd.TX_SLOT_SIZE
    assert struct.calcsize(nd.TX_RSP_FORMAT) == 8 <= nd.TX_SLOT_SIZE
    assert struct.calcsize(nd.RX_REQ_FORMAT) == struct.calcsize(nd.RX_RSP_FORMAT) == 16
    assert nd.INFO_SIZE == 128


def test_info_round_trip():
    raw = nd.pack_info(b"\x00\x16\x3e\x01\x02\x03", nd.NicFeature.sg, 128, 64, "NIC")
    info = nd.unpack_info(raw)
    assert info["magic"] == 0  # stored last by the device
    assert info["mac"] == "00:16:3e:01:02:03" and info["rx_slots"] == 64
    assert info["max_frame"] == 1518 and info["model"] == "NIC"


@pytest.mark.parametrize("msg", [
    {"op": "init", "tx_ring_bfn": 1, "tx_ring_pages": 0, "rx_ring_bfn": 2, "rx_ring_pages": 1,
     "info_bfn": 3},
    {"op": "init", "tx_ring_bfn": -1, "tx_ring_pages": 1, "rx_ring_bfn": 2,
     "rx_ring_pages": 1, "info_bfn": 3},
    {"op": "wire", "drop": 1.5},
    {"op": "wire", "delay_ms": -1},
    {"op": "wire", "partition": "yes"},
    {"op": "reset"},
])
def test_mmio_refuses_bad_writes(msg):
    with pytest.raises(nd.NicDevError):
        nd.decode_mmio(nd.encode_mmio(**msg))


def test_mmio_refuses_garbage():
    with pytest.raises(nd.NicDevError):
        nd.decode_mmio(b"\xc1not msgpack")


class Rig:
    def __init__(self) -> None:
        self.dom0 = bytearray(DOM0_PAGES * PAGE_SIZE)
        self.guest = bytearray(GUEST_PAGES * PAGE_SIZE)
        self.table = bytearray(8 * 16)
        mv = memoryview(self.dom0)
        self.iommu = Iommu(DOM0_PAGES, IOMMU_FOREIGN_BASE)
        self.iommu.set_table(memoryview(self.table))
        self.iommu.add_memory(0, mv)
        self.iommu.add_memory(5, memoryview(self.guest))
        # the foreign window: entry 0 = d5 pfn 1 read-only, entry 1 = d5 pfn 2 writable
        self.iommu.table[0] = iommu_entry(5, 1, False)
        self.iommu.table[1] = iommu_entry(5, 2, True)
        tx_mem = mv[TX_RING * PAGE_SIZE:(TX_RING + nd.NIC_TX_RING_PAGES) * PAGE_SIZE]
        rx_mem = mv[RX_RING * PAGE_SIZE:(RX_RING + 1) * PAGE_SIZE]
        self.tx = FrontRing(tx_mem, nd.TX_SLOT_SIZE)
        self.rx = FrontRing(rx_mem, nd.RX_SLOT_SIZE)
        self.core = NicCore(BackRing(tx_mem, nd.TX_SLOT_SIZE),
                            BackRing(rx_mem, nd.RX_SLOT_SIZE), self.iommu)

    def put(self, pfn: int, data: bytes, off: int = 0) -> None:
        self.dom0[pfn * PAGE_SIZE + off:pfn * PAGE_SIZE + off + len(data)] = data

    def get(self, pfn: int, n: int) -> bytes:
        return bytes(self.dom0[pfn * PAGE_SIZE:pfn * PAGE_SIZE + n])

    def send(self, *slots: bytes) -> bool:
        for s in slots:
            self.tx.put_request(s)
        return self.tx.push_requests()

    def post(self, n: int, first_id: int = 0, size: int = PAGE_SIZE) -> bool:
        for i in range(n):
            self.rx.put_request(nd.pack_rx(first_id + i, BUF0 + first_id + i, 0, size))
        return self.rx.push_requests()

    def tx_done(self) -> dict[int, int]:
        return dict(nd.unpack_tx_rsp(r) for r in self.tx.take_responses())

    def rx_done(self) -> list[tuple[int, int, int, int]]:
        return [nd.unpack_rx_rsp(r) for r in self.rx.take_responses()]


def frame(n: int = 60, fill: int = 0xAB) -> bytes:
    return b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00" + bytes([fill]) * (n - 14)


def test_tx_gathers_segments_straight_from_the_frames():
    r = Rig()
    f = frame(1000)
    r.put(BUF0, f[:300], off=100)
    r.put(BUF0 + 1, f[300:])
    assert r.send(nd.pack_tx(7, [(BUF0, 100, 300), (BUF0 + 1, 0, 700)]))  # a kick is due
    assert r.core.transmit() == [f]
    assert r.core.push()  # the driver wants an interrupt
    assert r.tx_done() == {7: NicStatus.ok}
    assert r.core.counts["tx_frames"] == 1


def test_tx_from_a_granted_frame_through_the_iommu():
    r = Rig()
    f = frame(100, 0x11)
    r.guest[PAGE_SIZE:PAGE_SIZE + 100] = f
    r.send(nd.pack_tx(1, [(IOMMU_FOREIGN_BASE, 0, 100)]))
    assert r.core.transmit() == [f]


@pytest.mark.parametrize("segments,total,status", [
    ([], 0, NicStatus.invalid),  # no segment
    ([(BUF0, 4000, 200)], 200, NicStatus.invalid),  # leaves its frame
    ([(BUF0, 0, 60)], 61, NicStatus.invalid),  # lengths disagree
    ([(BUF0, 0, 10)], 10, NicStatus.invalid),  # shorter than a header
    ([(BUF0, 0, 2000)], 2000, NicStatus.invalid),  # longer than max_frame
    ([(DOM0_PAGES, 0, 60)], 60, NicStatus.dma_fault),  # beyond Dom0's memory
    ([(IOMMU_FOREIGN_BASE + 5, 0, 60)], 60, NicStatus.dma_fault),  # unmapped entry
])
def test_bad_tx_descriptors_complete_with_an_error_and_send_nothing(segments, total, status):
    r = Rig()
    r.send(nd.pack_tx(3, segments, total_len=total), nd.pack_tx(4, [(BUF0, 0, 60)]))
    out = r.core.transmit()
    assert len(out) == 1  # the good one after it still goes
    r.core.push()
    assert r.tx_done() == {3: status, 4: NicStatus.ok}


def test_rx_dma_into_posted_buffers_and_one_interrupt_per_batch():
    r = Rig()
    r.post(4)
    frames = [frame(60 + i, i) for i in range(3)]
    r.core.receive(frames)
    assert r.core.push()  # one interrupt for the batch
    done = r.rx_done()
    assert [(i, s, n) for i, s, n, _ in done] == [(i, 0, 60 + i) for i in range(3)]
    assert [r.get(BUF0 + i, 60 + i) for i in range(3)] == frames
    r.core.receive([frame()])
    # the driver has not consumed with FINAL_CHECK: no new interrupt is needed
    assert not r.core.push()


def test_rx_into_a_read_only_grant_is_refused_and_the_frame_dropped():
    r = Rig()
    r.rx.put_request(nd.pack_rx(9, IOMMU_FOREIGN_BASE, 0, PAGE_SIZE))  # read-only entry
    r.rx.put_request(nd.pack_rx(10, IOMMU_FOREIGN_BASE + 1, 0, PAGE_SIZE))  # writable
    r.rx.push_requests()
    r.core.receive([frame(60, 1), frame(60, 2)])
    r.core.push()
    assert [(i, s, n) for i, s, n, _ in r.rx_done()] == [(9, NicStatus.dma_fault, 0),
                                                        (10, 0, 60)]
    assert bytes(r.guest[2 * PAGE_SIZE:2 * PAGE_SIZE + 60]) == frame(60, 2)
    assert bytes(r.guest[PAGE_SIZE:PAGE_SIZE + 60]) == bytes(60)  # untouched


def test_rx_buffer_too_small_or_out_of_its_frame():
    r = Rig()
    r.rx.put_request(nd.pack_rx(1, BUF0, 0, 50))
    r.rx.put_request(nd.pack_rx(2, BUF0, 4000, 200))
    r.rx.push_requests()
    r.core.receive([frame(60), frame(60)])
    r.core.push()
    assert [(i, s) for i, s, _, _ in r.rx_done()] == [(1, NicStatus.too_small),
                                                      (2, NicStatus.invalid)]


def test_without_buffers_frames_wait_and_a_post_rings_the_doorbell():
    r = Rig()
    r.core.receive([frame(60, 1), frame(60, 2)])
    assert not r.core.push() and len(r.core.fifo) == 2
    assert r.post(1)  # req_event was armed: the driver must kick
    r.core.kick()
    assert r.core.push()
    assert [i for i, *_ in r.rx_done()] == [0]
    assert r.get(BUF0, 60) == frame(60, 1) and len(r.core.fifo) == 1


def test_rx_fifo_is_bounded():
    r = Rig()
    r.core.receive([frame()] * (RX_FIFO + 5))
    assert len(r.core.fifo) == RX_FIFO and r.core.counts["rx_fifo_drops"] == 5


def test_a_lying_req_prod_halts_the_core_not_the_caller():
    r = Rig()
    with memoryview(r.dom0)[TX_RING * PAGE_SIZE:TX_RING * PAGE_SIZE + 4].cast("I") as idx:
        idx[0] = 100_000  # req_prod far beyond the ring
    assert r.core.transmit() == []
    assert r.core.error is not None
    r.core.receive([frame()])  # still no exception
    assert not r.core.push()
