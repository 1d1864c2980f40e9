"""netfront's core against netback's core, in one process (grants and copies faked).

The harness does what Dom0's netback adapter does with GNTTABOP_copy: it
reads tx data through the frontend's grants and writes rx data into the
posted buffers, refusing a grant that is read-only or ended.
"""

import pytest

from domains.dom0.netback.core import NetbackCore, VifFeatures
from domains.kernel.ring import BackRing, FrontRing
from domains.xenolinux.netfront_core import TX_QUEUE_MAX, NetfrontCore, NetfrontState
from hypervisor.public.netif import (
    NETIF_RSP_OKAY,
    NETIF_RX_ENTRY_SIZE,
    NETIF_TX_ENTRY_SIZE,
    RX_RESPONSE,
    TX_REQUEST,
    NETTXF_extra_info,
    NETTXF_more_data,
)


class Guest:
    """A guest's pages and grant table, as far as netfront uses them."""

    def __init__(self) -> None:
        self.pages: dict[int, memoryview] = {}
        self.grants: dict[int, tuple[int, bool]] = {}  # gref -> (pfn, readonly)
        self.in_use: set[int] = set()
        self.next_gref = 8

    def alloc_page(self):
        pfn = len(self.pages) + 100
        self.pages[pfn] = memoryview(bytearray(4096))
        return pfn, self.pages[pfn]

    def grant(self, pfn: int, readonly: bool) -> int:
        self.next_gref += 1
        self.grants[self.next_gref] = (pfn, readonly)
        return self.next_gref

    def end_access(self, gref: int) -> bool:
        if gref in self.in_use:
            return False
        self.grants.pop(gref, None)
        return True

    def read(self, gref: int, offset: int, size: int) -> bytes:
        pfn, _ = self.grants[gref]
        return bytes(self.pages[pfn][offset:offset + size])

    def write(self, gref: int, data: bytes) -> None:
        pfn, readonly = self.grants[gref]
        assert not readonly, "rx buffer granted read-only"
        self.pages[pfn][:len(data)] = data


class Vif:
    def __init__(self, gso: bool = True) -> None:
        self.guest = Guest()
        self.front = NetfrontCore(self.guest, self.guest.alloc_page)
        self.got: list[tuple[bytes, int]] = []
        self.connect(gso)

    def connect(self, gso: bool = True) -> None:
        tx, rx = bytearray(4096), bytearray(4096)
        self.front.connect(FrontRing(tx, NETIF_TX_ENTRY_SIZE), FrontRing(rx, NETIF_RX_ENTRY_SIZE),
                           gso)
        self.back = NetbackCore(BackRing(tx, NETIF_TX_ENTRY_SIZE),
                                BackRing(rx, NETIF_RX_ENTRY_SIZE),
                                VifFeatures(sg=True, gso_tcpv4=gso, rx_notify=True))
        self.front_notified = self.front.push()
        self.back_notified = False

    def send(self, frames) -> None:
        self.front.transmit(frames)
        self.front_notified = self.front.push() or self.front_notified

    def interrupt(self) -> None:
        self.got += self.front.handle_responses()
        self.front_notified = self.front.push() or self.front_notified


def backend_turn(vifs: list[Vif]) -> None:
    """One Dom0 turn: tx out of every vif, switched by MAC, rx into the others."""
    by_mac = {}
    for v in vifs:
        for pkt in v.back.poll_tx():
            ok = pkt.status == NETIF_RSP_OKAY
            data = b"".join(v.guest.read(*f) for f in pkt.frags) if ok else b""
            v.back.respond_tx(pkt, pkt.status)
            if ok:
                by_mac.setdefault(data[:6], []).append((data, pkt.gso_size))
    for v in vifs:
        mac = v.mac if hasattr(v, "mac") else None
        for frame, gso in by_mac.get(mac, []):
            v.back.queue_rx(frame, gso)
    for v in vifs:
        for pkt in v.back.build_rx():
            for _id, gref, start, length in pkt.pieces:
                v.guest.write(gref, pkt.frame[start:start + length])
            v.back.respond_rx(pkt, True)
        n1, n2 = v.back.push_tx(), v.back.push_rx()
        v.back_notified = n1 or n2
        v.back.tx_more()


def pair():
    a, b = Vif(), Vif()
    a.mac, b.mac = b"\x00\x16\x3e\x00\x00\x0a", b"\x00\x16\x3e\x00\x00\x0b"
    return a, b


def frame(dst: bytes, src: bytes, n: int, seed: int = 0) -> bytes:
    return dst + src + b"\x88\xb5" + bytes((seed + i) & 255 for i in range(n - 14))


def run(a: Vif, b: Vif) -> None:
    backend_turn([a, b])
    for v in (a, b):
        if v.back_notified:
            v.interrupt()


def test_frames_of_every_size_cross_and_arrive_whole():
    a, b = pair()
    frames = [frame(b.mac, a.mac, n, n) for n in (60, 1514, 4096, 4097, 9000, 65535)]
    a.send([(f, 0) for f in frames[:2]] + [(f, 1448) for f in frames[2:]])
    run(a, b)
    assert b.got == [(frames[0], 0), (frames[1], 0)] + [(f, 1448) for f in frames[2:]]
    s = a.front.statistics()
    assert (s.tx_packets, s.tx_bytes) == (6, sum(map(len, frames)))
    assert b.front.statistics().rx_packets == 6


def test_tx_requests_are_a_chain_with_the_gso_extra_second():
    a, b = pair()
    a.send([(frame(b.mac, a.mac, 9000), 1448)])
    slots = a.back.tx.take_requests()
    assert len(slots) == 4  # data, extra, data, data
    first = TX_REQUEST.unpack_from(slots[0])
    assert first[2] == NETTXF_more_data | NETTXF_extra_info and first[4] == 9000
    assert [TX_REQUEST.unpack_from(s)[4] for s in slots[2:]] == [4096, 9000 - 8192]
    # data granted read-only
    assert all(a.guest.grants[TX_REQUEST.unpack_from(s)[0]][1] for s in (slots[0], *slots[2:]))


def test_without_backend_gso_frames_go_plain():
    a = Vif(gso=False)
    a.send([(frame(b"\x00" * 6, b"\x01" * 6, 1000), 500)])
    first = TX_REQUEST.unpack_from(a.back.tx.take_requests()[0])
    assert not first[2] & NETTXF_extra_info


def test_rx_ring_is_kept_full_with_writable_grants():
    a, b = pair()
    assert b.front.statistics().rx_posted == 256
    a.send([(frame(b.mac, a.mac, 100 + i), 0) for i in range(300)])
    for _ in range(4):
        run(a, b)
    assert len(b.got) == 300 and b.front.statistics().rx_posted == 256


def test_notifications_are_suppressed_both_ways():
    a, b = pair()
    a.send([(frame(b.mac, a.mac, 60), 0)])
    assert a.front_notified  # the backend armed req_event... at ring init
    a.back.poll_tx()  # consume without arming
    a.front_notified = False
    a.send([(frame(b.mac, a.mac, 60), 0)])
    assert not a.front_notified  # req_event still 1: no notification
    assert a.back.tx_more() is True  # the final check finds it
    # tx responses: no upcall just to free slots
    a2, b2 = pair()
    a2.send([(frame(b2.mac, a2.mac, 60), 0)])
    backend_turn([a2, b2])
    assert not a2.back_notified and b2.back_notified


def test_tx_slots_are_reclaimed_lazily_and_when_the_ring_is_full():
    a, b = pair()
    big = [(frame(b.mac, a.mac, 8000, i), 1448) for i in range(200)]  # 3 slots each
    a.send(big)
    assert a.front.statistics().tx_queued == 200 - 256 // 3
    for _ in range(6):
        run(a, b)
    assert len(b.got) == 200 and a.front.statistics().tx_queued == 0


def test_the_tx_queue_is_bounded():
    a = Vif()
    a.send([(bytes(9000), 0)] * (TX_QUEUE_MAX + 200))
    assert a.front.statistics().tx_dropped > 0


def test_a_lying_backend_puts_the_device_in_error():
    a, b = pair()
    a.send([(frame(b.mac, a.mac, 60), 0)])
    b.back.rx.take_requests(1)
    b.back.rx.put_response(RX_RESPONSE.pack(7, 0, 0, 60))  # slot 0 answered as id 7
    b.back.rx.push_responses()
    b.interrupt()
    assert b.front.state is NetfrontState.ERROR and "rx response id" in str(b.front.error)


@pytest.mark.parametrize("offset, status", [(4000, 200), (0, 5000)])
def test_an_rx_response_outside_its_page_is_refused(offset, status):
    _, b = pair()
    b.back.rx.take_requests(1)
    b.back.rx.put_response(RX_RESPONSE.pack(0, offset, 0, status))
    b.back.rx.push_responses()
    b.interrupt()
    assert b.front.state is NetfrontState.ERROR


def test_reconnect_drops_what_was_in_flight_and_works_again():
    a, b = pair()
    a.send([(frame(b.mac, a.mac, 1500), 0)] * 3)
    a.front.suspend()
    assert a.front.statistics().tx_dropped == 3 and a.front.statistics().tx_in_flight == 0
    assert len(a.guest.grants) == 0  # every grant ended
    b.front.suspend()
    a.connect()
    b.connect()
    a.send([(frame(b.mac, a.mac, 9000, 9), 1448)])
    run(a, b)
    assert b.got == [(frame(b.mac, a.mac, 9000, 9), 1448)]


def test_grants_still_in_use_are_ended_at_the_next_connect():
    a, _ = pair()
    a.send([(frame(b"\x02" * 6, b"\x00" * 6, 60), 0)])
    gref = TX_REQUEST.unpack_from(a.back.tx.take_requests()[0])[0]
    a.guest.in_use.add(gref)
    a.front.suspend()
    assert gref in a.guest.grants
    a.guest.in_use.clear()
    a.connect()
    assert gref not in a.guest.grants
