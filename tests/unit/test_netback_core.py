"""netback's core (domains/dom0/netback/core.py): tx parsing and validation, rx, cut-off.

The frontend side is written slot by slot here, so a test can lie the way a
malicious frontend would.
"""

import pytest

from domains.dom0.netback.core import (
    FATAL_SKB_SLOTS,
    RX_QUEUE_MAX,
    RX_QUEUE_MAX_BYTES,
    NetbackCore,
    VifFeatures,
)
from domains.kernel.ring import BackRing, FrontRing
from hypervisor.public.netif import (
    EXTRA_INFO,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    NETIF_RX_ENTRY_SIZE,
    NETIF_TX_ENTRY_SIZE,
    RX_REQUEST,
    RX_RESPONSE,
    TX_REQUEST,
    TX_RESPONSE,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_extra_info,
    NETTXF_more_data,
    pack_gso_extra,
)

FEATURES = VifFeatures(sg=True, gso_tcpv4=True, rx_notify=True)


class Pair:
    def __init__(self, features: VifFeatures = FEATURES) -> None:
        txbuf, rxbuf = bytearray(4096), bytearray(4096)
        self.ftx, self.frx = FrontRing(txbuf, NETIF_TX_ENTRY_SIZE), FrontRing(rxbuf,
                                                                               NETIF_RX_ENTRY_SIZE)
        self.core = NetbackCore(BackRing(txbuf, NETIF_TX_ENTRY_SIZE),
                                BackRing(rxbuf, NETIF_RX_ENTRY_SIZE), features)

    def tx(self, *slots: bytes) -> None:
        for s in slots:
            self.ftx.put_request(s)
        self.ftx.push_requests()

    def tx_responses(self) -> list[tuple[int, int]]:
        return [TX_RESPONSE.unpack_from(r) for r in self.ftx.take_responses()]

    def post_rx(self, n: int) -> None:
        for _ in range(n):
            slot = self.frx.req_prod_pvt & 255
            self.frx.put_request(RX_REQUEST.pack(slot, 1000 + slot))
        self.frx.push_requests()


def req(gref, size, flags=0, id_=0, offset=0) -> bytes:
    return TX_REQUEST.pack(gref, offset, flags, id_, size)


def test_one_slot_packet():
    p = Pair()
    p.tx(req(77, 60, id_=5, offset=100))
    [pkt] = p.core.poll_tx()
    assert (pkt.frags, pkt.size, pkt.gso_size, pkt.status) == ([(77, 100, 60)], 60, 0, 0)
    p.core.respond_tx(pkt, NETIF_RSP_OKAY)
    assert p.core.push_tx() is True  # the frontend's rsp_event starts at 1
    assert p.tx_responses() == [(5, NETIF_RSP_OKAY)]
    c = p.core.counters
    assert (c.rx_packets, c.rx_bytes, c.rx_errors) == (1, 60, 0)


def test_a_chain_with_more_data_and_a_gso_extra():
    p = Pair()
    extra = pack_gso_extra(1448) + bytes(4)
    p.tx(req(10, 9000, NETTXF_more_data | NETTXF_extra_info, id_=1), extra,
         req(11, 4096, NETTXF_more_data, id_=2), req(12, 808, 0, id_=3))
    [pkt] = p.core.poll_tx()
    assert pkt.frags == [(10, 0, 4096), (11, 0, 4096), (12, 0, 808)]
    assert pkt.gso_size == 1448 and pkt.status == NETIF_RSP_OKAY
    p.core.respond_tx(pkt, NETIF_RSP_OKAY)
    p.core.push_tx()
    rsps = p.tx_responses()
    assert len(rsps) == 4 and rsps[1][1] == NETIF_RSP_NULL
    assert [r for r in rsps if r[1] != NETIF_RSP_NULL] == [(1, 0), (2, 0), (3, 0)]


def test_several_packets_in_one_poll_and_a_multicast_extra_is_skipped():
    p = Pair()
    mcast = EXTRA_INFO.pack(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, 0, 0, 0, 0) + bytes(4)
    p.tx(req(1, 60, id_=1), req(2, 70, NETTXF_extra_info, id_=2), mcast, req(3, 80, id_=3))
    pkts = p.core.poll_tx()
    assert [k.size for k in pkts] == [60, 70, 80] and all(k.status == 0 for k in pkts)


@pytest.mark.parametrize("slots, reason", [
    ([req(1, 100, offset=4000)], "txreq.offset"),
    ([req(1, 200, NETTXF_more_data), req(2, 100, offset=4050)], "Cross page boundary"),
    ([req(1, 8000, NETTXF_more_data), req(2, 4000, NETTXF_more_data)], "Asked for"),
    ([req(1, 100, NETTXF_extra_info)], "Missing extra info"),
    ([req(1, 100, NETTXF_extra_info), EXTRA_INFO.pack(9, 0, 0, 0, 0) + bytes(4)],
     "Invalid extra type"),
    ([req(1, 100, NETTXF_extra_info),
      EXTRA_INFO.pack(XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448, XEN_NETIF_GSO_TYPE_TCPV6, 0)
      + bytes(4)], "Bad GSO type"),
    ([req(1, 100, NETTXF_extra_info), pack_gso_extra(0) + bytes(4)], "GSO size"),
    ([req(1, 100, NETTXF_extra_info), pack_gso_extra(1) + bytes(4)], "GSO size"),  # a DoS
    ([req(1, 100, NETTXF_extra_info), pack_gso_extra(1000, more=True) + bytes(4)],
     "Missing extra info"),
    ([req(1, 4000, NETTXF_more_data)] + [req(i, 10, NETTXF_more_data) for i in range(2, 40)],
     "Malicious frontend"),
])
def test_a_lying_frontend_is_cut_off(slots, reason):
    p = Pair()
    p.tx(*slots)
    assert p.core.poll_tx() == []
    assert reason in p.core.error
    # and nothing more happens on this vif
    p.tx(req(1, 60))
    assert p.core.poll_tx() == [] and p.core.push_tx() is False and p.core.tx_more() is False
    assert p.core.queue_rx(bytes(60)) is False


def test_gso_from_a_frontend_that_did_not_negotiate_it_is_fatal():
    p = Pair(VifFeatures(sg=True))
    p.tx(req(1, 100, NETTXF_extra_info), pack_gso_extra(1000) + bytes(4))
    assert p.core.poll_tx() == [] and "Bad GSO type" in p.core.error


def test_req_prod_beyond_the_ring_is_fatal():
    p = Pair()
    p.ftx.req_prod_pvt = 300  # claims 300 outstanding requests
    p.ftx.push_requests()
    assert p.core.poll_tx() == [] and "RING_REQUEST_PROD_OVERFLOW" in p.core.error


@pytest.mark.parametrize("slots, reason", [
    ([req(1, 10)], "Bad packet size"),
    ([req(1, 100, NETTXF_more_data), req(2, 200)], "Invalid tx request"),
    ([req(1, 1600)], "exceeds the MTU"),
    ([req(1, 19 * 10, NETTXF_more_data)] + [req(i, 10, NETTXF_more_data) for i in range(2, 19)]
     + [req(19, 10)], "Too many slots"),
])
def test_a_bad_packet_is_dropped_not_fatal(slots, reason):
    p = Pair()
    p.tx(*slots, req(50, 60, id_=9))
    bad, good = p.core.poll_tx()
    assert bad.status == NETIF_RSP_ERROR and reason in bad.reason
    assert good.status == NETIF_RSP_OKAY and p.core.error is None
    p.core.respond_tx(bad, bad.status)
    p.core.respond_tx(good, good.status)
    p.core.push_tx()
    rsps = p.tx_responses()
    assert len(rsps) == len(slots) + 1 and rsps[-1] == (9, NETIF_RSP_OKAY)
    assert all(s == NETIF_RSP_ERROR for _, s in rsps[:-1])
    assert p.core.counters.rx_errors == 1 and p.core.counters.rx_packets == 1


def test_final_check_arms_req_event_and_sees_late_requests():
    p = Pair()
    assert p.core.tx_more() is False
    p.ftx.put_request(req(1, 60))
    assert p.ftx.push_requests() is True  # req_event was armed at req_cons + 1
    assert p.core.tx_more() is True


def test_rx_copies_into_posted_buffers_with_a_gso_extra():
    p = Pair()
    p.post_rx(10)
    frame = bytes(range(256)) * 40  # 10240 bytes: three pages
    assert p.core.queue_rx(frame, 1448)
    [pkt] = p.core.build_rx()
    assert [(gref, start, n) for _, gref, start, n in pkt.pieces] == [
        (1000, 0, 4096), (1002, 4096, 4096), (1003, 8192, 2048)]
    assert pkt.extra_id == 1
    p.core.respond_rx(pkt, True)
    assert p.core.push_rx() is True
    raws = p.frx.take_responses()
    first = RX_RESPONSE.unpack_from(raws[0])
    assert first == (0, 0, NETRXF_more_data | NETRXF_extra_info, 4096)
    assert EXTRA_INFO.unpack_from(raws[1])[:4] == (XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448,
                                                   XEN_NETIF_GSO_TYPE_TCPV4)
    assert [RX_RESPONSE.unpack_from(r) for r in raws[2:]] == [
        (2, 0, NETRXF_more_data, 4096), (3, 0, 0, 2048)]
    assert p.core.counters.tx_packets == 1 and p.core.counters.tx_bytes == len(frame)


def test_rx_waits_for_buffers_and_asks_to_be_woken():
    p = Pair()
    p.post_rx(1)
    p.core.queue_rx(bytes(6000))
    assert p.core.build_rx() == []
    p.frx.put_request(RX_REQUEST.pack(1, 5))
    assert p.frx.push_requests() is True  # req_event = req_cons + 2: the frontend notifies
    [pkt] = p.core.build_rx()
    assert len(pkt.pieces) == 2


def test_rx_failed_copy_answers_errors_and_keeps_the_chain():
    p = Pair()
    p.post_rx(4)
    p.core.queue_rx(bytes(5000))
    [pkt] = p.core.build_rx()
    p.core.respond_rx(pkt, False)
    p.core.push_rx()
    rsps = [RX_RESPONSE.unpack_from(r) for r in p.frx.take_responses()]
    assert rsps == [(0, 0, NETRXF_more_data, NETIF_RSP_ERROR), (1, 0, 0, NETIF_RSP_ERROR)]
    assert p.core.counters.tx_errors == 1


def test_rx_queue_is_bounded_and_refuses_what_the_frontend_cannot_take():
    p = Pair(VifFeatures(sg=True))
    assert p.core.queue_rx(bytes(100), 1448) is False  # no GSO on this frontend
    assert p.core.queue_rx(bytes(10)) is False
    for _ in range(RX_QUEUE_MAX):
        assert p.core.queue_rx(bytes(60))
    assert p.core.queue_rx(bytes(60)) is False
    assert p.core.counters.tx_dropped == 3
    q = Pair()
    while q.core.queue_rx(bytes(65000), 1448):
        pass
    assert q.core.rx_queued_bytes <= RX_QUEUE_MAX_BYTES < q.core.rx_queued_bytes + 65000
    q.post_rx(256)
    assert len(q.core.build_rx()) == 15 and q.core.rx_queued_bytes == (32 - 15) * 65000


def test_extra_more_flag_chains_extras():
    p = Pair()
    mcast = EXTRA_INFO.pack(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, 0, 0, 0, 0) + bytes(4)
    gso = EXTRA_INFO.pack(XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_FLAG_MORE, 1000,
                          XEN_NETIF_GSO_TYPE_TCPV4, 0) + bytes(4)
    p.tx(req(1, 3000, NETTXF_extra_info, id_=4), gso, mcast)
    [pkt] = p.core.poll_tx()
    assert pkt.gso_size == 1000 and [e for _, e in pkt.ids] == [False, True, True]


def test_fatal_limit_is_above_the_slots_xen_guarantees():
    assert FATAL_SKB_SLOTS >= 18


def test_rx_ready_says_whether_the_first_queued_frame_fits():
    p = Pair()
    assert p.core.rx_ready() is False
    p.core.queue_rx(bytes(9000), 1448)  # three data slots and the extra
    p.post_rx(3)
    assert p.core.rx_ready() is False
    p.post_rx(1)
    assert p.core.rx_ready() is True
