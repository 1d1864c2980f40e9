"""Whatever a frontend or a backend writes into the rings, the other core never raises.

netback: each poll either yields packets whose pieces lie inside their pages
and whose slots are all answered, or cuts the frontend off (``error``).
netfront: a lying backend puts the device in ERROR, nothing else.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from domains.dom0.netback.core import NetbackCore, VifFeatures
from domains.kernel.ring import BackRing, FrontRing
from domains.xenolinux.netfront_core import NetfrontCore, NetfrontState
from hypervisor.public.netif import (
    NETIF_RSP_OKAY,
    NETIF_RX_ENTRY_SIZE,
    NETIF_TX_ENTRY_SIZE,
    TX_RESPONSE,
)

slots = st.lists(st.binary(min_size=12, max_size=12), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(slots, st.integers(0, 300))
def test_netback_survives_any_tx_slots(raws, lie):
    txbuf, rxbuf = bytearray(4096), bytearray(4096)
    front = FrontRing(txbuf, NETIF_TX_ENTRY_SIZE)
    FrontRing(rxbuf, NETIF_RX_ENTRY_SIZE)
    core = NetbackCore(BackRing(txbuf, NETIF_TX_ENTRY_SIZE), BackRing(rxbuf, NETIF_RX_ENTRY_SIZE),
                       VifFeatures(sg=True, gso_tcpv4=True))
    for raw in raws:
        front.put_request(raw)
    if lie > 280:
        front.req_prod_pvt = lie  # a req_prod beyond the ring
    front.push_requests()
    pkts = core.poll_tx()
    if core.error is not None:
        return
    answered = 0
    for pkt in pkts:
        assert all(off + size <= 4096 for _g, off, size in pkt.frags)
        core.respond_tx(pkt, pkt.status)
        answered += len(pkt.ids)
    assert answered == len(raws)
    core.push_tx()


class _Granter:
    n = 8

    def grant(self, pfn: int, readonly: bool) -> int:
        self.n += 1
        return self.n

    def end_access(self, gref: int) -> bool:
        return True


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=300),
       st.lists(st.binary(min_size=4, max_size=4), max_size=20))
def test_netfront_survives_any_responses(rx_rsps, tx_rsps):
    txbuf, rxbuf = bytearray(4096), bytearray(4096)
    core = NetfrontCore(_Granter(), lambda: (0, memoryview(bytearray(4096))))
    core.connect(FrontRing(txbuf, NETIF_TX_ENTRY_SIZE), FrontRing(rxbuf, NETIF_RX_ENTRY_SIZE),
                 True)
    core.transmit([(bytes(100), 0)] * 5)
    core.push()
    btx, brx = BackRing(txbuf, NETIF_TX_ENTRY_SIZE), BackRing(rxbuf, NETIF_RX_ENTRY_SIZE)
    btx.take_requests()
    for raw in tx_rsps[:5]:
        btx.put_response(raw)
    btx.push_responses()
    brx.take_requests(len(rx_rsps))
    for raw in rx_rsps[:256]:
        brx.put_response(raw)
    brx.push_responses()
    frames = core.handle_responses()
    assert core.state in (NetfrontState.CONNECTED, NetfrontState.ERROR)
    assert all(len(f) >= 14 for f, _ in frames)


def test_netfront_ignores_null_tx_responses_and_frees_ids():
    txbuf, rxbuf = bytearray(4096), bytearray(4096)
    core = NetfrontCore(_Granter(), lambda: (0, memoryview(bytearray(4096))))
    core.connect(FrontRing(txbuf, NETIF_TX_ENTRY_SIZE), FrontRing(rxbuf, NETIF_RX_ENTRY_SIZE),
                 True)
    core.transmit([(bytes(100), 0)])
    core.push()
    btx = BackRing(txbuf, NETIF_TX_ENTRY_SIZE)
    btx.take_requests()
    btx.put_response(TX_RESPONSE.pack(0, NETIF_RSP_OKAY))
    btx.push_responses()
    core.handle_responses()
    assert core.statistics().tx_in_flight == 0
