"""Domain-0's NIC driver as a bridge port, against the real DMA core, in one process.

The kernel is a stand-in (Dom0's memory as a bytearray, a frame allocator,
an event-channel table whose "IRQ" the test delivers); the device is
devices.niccore over the same memory; MMIO arrives on a real PULL socket.
The bridge is a minimal stand-in too (the real one is domains/dom0/bridge.py).
"""

import os

import dpkt
import pytest
import zmq

from devices.dma import Iommu
from devices.niccore import NicCore
from domains.dom0.drivers.nic import TXQUEUELEN, NicDriver, attach
from domains.kernel.mm import FrameAllocator
from domains.kernel.ring import BackRing
from hypervisor.public import nicdev as nd
from hypervisor.public.platform import IOMMU_FOREIGN_BASE
from hypervisor.public.xen import PAGE_SIZE

DOM0_PAGES = 512


class StandInBridge:
    def __init__(self) -> None:
        self.ports, self.frames = [], []

    def add_port(self, port) -> None:
        self.ports.append(port)

    def input(self, port, frame: bytes, gso_size: int = 0) -> None:
        self.frames.append((port.name, frame, gso_size))


class FakeEvtchn:
    def __init__(self) -> None:
        self.handlers = {}

    def bind_pirq(self, pirq: int) -> int:
        return 3

    def on(self, port: int, handler) -> None:
        self.handlers[port] = handler

    def clear(self, port: int) -> None:
        pass


class FakeKernel:
    def __init__(self) -> None:
        self.mem = memoryview(bytearray(DOM0_PAGES * PAGE_SIZE))
        self.frames = FrameAllocator(1, DOM0_PAGES)
        self.evtchn = FakeEvtchn()
        self.soon = []

    def page(self, pfn: int) -> memoryview:
        return self.mem[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE]

    def call_soon_once(self, fn) -> None:
        if fn not in self.soon:
            self.soon.append(fn)

    def run_soon(self) -> None:
        while self.soon:
            self.soon.pop(0)()


class Rig:
    def __init__(self, ctx: zmq.Context) -> None:
        self.addr = f"ipc://@xenolab-test-{os.getpid()}-{id(self)}/nic"
        self.mmio = ctx.socket(zmq.PULL)
        self.mmio.setsockopt(zmq.LINGER, 0)
        self.mmio.bind(self.addr)
        self.k = FakeKernel()
        self.sent = self.taken = 0
        self.drv = NicDriver.__new__(NicDriver)
        self.drv._send = self._count_send(self.drv)
        self.drv.__init__(self.k, {"name": "nic0", "irq": 16, "mmio": self.addr}, ctx)
        self.iommu = Iommu(DOM0_PAGES, IOMMU_FOREIGN_BASE)
        self.iommu.add_memory(0, self.k.mem)
        self.core: NicCore | None = None
        self.wire: list[bytes] = []
        self.bridge = StandInBridge()
        attach({"xenbr0": self.bridge}, {"nic0": self.drv})
        self.device()  # takes "init", writes the info page, "raises" the IRQ
        self.k.run_soon()
        self.device()

    def _count_send(self, drv):
        def send(frame: bytes) -> None:
            self.sent += 1
            NicDriver._send(drv, frame)
        return send

    def device(self) -> None:
        """The device's loop turn: every MMIO write, then one push and maybe an IRQ."""
        while self.taken < self.sent:
            assert self.mmio.poll(5000), "an MMIO write did not arrive"
            self.taken += 1
            msg = nd.decode_mmio(self.mmio.recv())
            if msg["op"] == "init":
                tx = BackRing(self.iommu.contiguous(msg["tx_ring_bfn"], msg["tx_ring_pages"],
                                                    True), nd.TX_SLOT_SIZE)
                rx = BackRing(self.iommu.contiguous(msg["rx_ring_bfn"], msg["rx_ring_pages"],
                                                    True), nd.RX_SLOT_SIZE)
                self.core = NicCore(tx, rx, self.iommu)
                info = nd.pack_info(b"\x02" * 6, nd.NicFeature.sg, tx.size, rx.size, "t")
                self.k.page(msg["info_bfn"])[:nd.INFO_SIZE] = info
                with self.k.page(msg["info_bfn"])[:4].cast("I") as magic:
                    magic[0] = nd.NIC_INFO_MAGIC
                self.irq()
            elif msg["op"] == "kick":
                self.wire += self.core.kick()
        if self.core is not None and self.core.push():
            self.irq()

    def irq(self) -> None:
        self.k.evtchn.handlers[3](3)
        self.k.run_soon()

    def close(self) -> None:
        self.drv.mmio.close(0)
        self.mmio.close(0)


@pytest.fixture
def rig():
    ctx = zmq.Context()
    r = Rig(ctx)
    yield r
    r.close()
    ctx.term()


def frame(n: int = 60, fill: int = 1) -> bytes:
    return b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + bytes([fill]) * (n - 14)


def test_the_port_is_on_its_bridge_and_ready(rig):
    assert rig.bridge.ports == [rig.drv] and rig.drv.bridge is rig.bridge
    assert rig.drv.name == "eth0" and rig.drv.gso is False
    assert rig.drv.ready and rig.drv.info["rx_slots"] == 128
    assert len(rig.drv.rx_posted) == 128  # every buffer posted before init


def test_frames_from_the_bridge_go_out_with_one_doorbell(rig):
    frames = [frame(60 + i, i) for i in range(5)]
    for f in frames:
        rig.drv.deliver(f, 0)
    rig.k.run_soon()
    assert rig.drv.counts["doorbells"] == 2  # the one after init, then one for the batch
    rig.device()
    assert rig.wire == frames
    assert len(rig.drv.tx_free) == 128  # every buffer back after the completion IRQ


def test_received_frames_reach_the_bridge_and_buffers_are_reposted(rig):
    frames = [frame(100, i) for i in range(3)]
    rig.core.receive(frames)
    rig.device()
    assert [f for _, f, _ in rig.bridge.frames] == frames
    assert [p for p, _, g in rig.bridge.frames] == ["eth0"] * 3
    assert list(rig.drv.captured) == frames
    assert len(rig.drv.rx_posted) == 128


def test_more_frames_than_buffers_wait_in_the_backlog_then_go(rig):
    n = 128 + 20
    for i in range(n):
        rig.drv.deliver(frame(60, i % 256), 0)
    rig.k.run_soon()
    assert len(rig.drv.backlog) == 20
    rig.device()  # sends 128, completes them; the IRQ refills from the backlog
    rig.k.run_soon()
    rig.device()
    assert len(rig.wire) == n and not rig.drv.backlog


def test_bad_frames_and_a_full_backlog_are_dropped_and_counted(rig):
    rig.drv.deliver(b"short", 0)
    rig.drv.deliver(frame(nd.NIC_MAX_FRAME + 1), 0)
    assert rig.drv.counts["tx_dropped"] == 2
    rig.drv.link = "down"  # frames wait while the link is down
    for _ in range(TXQUEUELEN + 3):
        rig.drv.deliver(frame(), 0)
    assert len(rig.drv.backlog) == TXQUEUELEN and rig.drv.counts["tx_dropped"] == 5


def test_a_response_for_a_buffer_never_posted_is_counted_not_delivered(rig):
    rig.drv.rx_posted.discard(0)  # as if buffer 0 were not the device's
    rig.core.receive([frame()])
    rig.device()
    assert rig.bridge.frames == [] and rig.drv.counts["unknown_responses"] == 1


def test_a_gso_frame_is_cut_before_it_goes_out(rig):
    pytest.importorskip("domains.kernel.gso")  # written in parallel (contract §2)
    tcp = dpkt.tcp.TCP(sport=1, dport=2, seq=1, flags=dpkt.tcp.TH_ACK, data=b"x" * 3000)
    ip = dpkt.ip.IP(src=b"\x0a\0\0\x0b", dst=b"\x0a\0\0\x0c", p=6, data=tcp)
    big = bytes(dpkt.ethernet.Ethernet(dst=b"\x02" * 6, src=b"\x04" * 6, data=ip))
    rig.drv.deliver(big, 1000)
    rig.k.run_soon()
    rig.device()
    assert [len(dpkt.ethernet.Ethernet(f).data.data.data) for f in rig.wire] == [1000] * 3


def test_a_replaced_device_gets_fresh_rings_and_every_buffer_again(rig):
    rig.drv.deliver(frame(), 0)  # in flight when the device dies
    rig.drv.device_changed({"state": "dead", "generation": 0})
    assert rig.drv.link == "down" and not rig.drv.ready
    rig.drv.deliver(frame(61), 0)  # waits
    rig.drv.device_changed({"state": "up", "generation": 1})
    rig.device()  # the new device: init, info, IRQ
    rig.k.run_soon()
    rig.device()
    assert rig.drv.ready and rig.drv.counts["resets"] == 1
    assert rig.wire[-1] == frame(61) and len(rig.drv.tx_free) == 128
