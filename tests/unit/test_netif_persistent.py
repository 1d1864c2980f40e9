"""Persistent grants on netif (feature-persistent): netfront's pool, netback's mappings.

The frontend side runs netfront's core against netback's core in one process (the
harness of test_netfront_core). The backend side runs netback's PersistentMaps
against a grant table that behaves like Xen's for what it uses: a gref maps only
while granted (and writably only if granted writable), a mapped grant cannot be
revoked, and each map/unmap is counted.
"""

from domains.dom0.netback.core import NetbackCore, VifFeatures
from domains.dom0.netback.persistent import PersistentMaps
from domains.kernel.ring import BackRing, FrontRing
from domains.xenolinux.netfront_core import NetfrontCore
from hypervisor.public.grant_table import GNTST
from hypervisor.public.netif import NETIF_RX_ENTRY_SIZE, NETIF_TX_ENTRY_SIZE, TX_REQUEST
from tests.unit.test_netfront_core import Guest, Vif, backend_turn, frame

MAC_A, MAC_B = b"\x00\x16\x3e\x00\x00\x0a", b"\x00\x16\x3e\x00\x00\x0b"


class CountingGuest(Guest):
    def __init__(self) -> None:
        super().__init__()
        self.granted = 0

    def grant(self, pfn: int, readonly: bool) -> int:
        self.granted += 1
        return super().grant(pfn, readonly)


class PersistentVif(Vif):
    def __init__(self) -> None:
        self.guest = CountingGuest()
        self.front = NetfrontCore(self.guest, self.guest.alloc_page)
        self.got = []
        self.connect()

    def connect(self, gso: bool = True) -> None:
        tx, rx = bytearray(4096), bytearray(4096)
        self.front.connect(FrontRing(tx, NETIF_TX_ENTRY_SIZE), FrontRing(rx, NETIF_RX_ENTRY_SIZE),
                           gso, persistent=True)
        self.back = NetbackCore(BackRing(tx, NETIF_TX_ENTRY_SIZE),
                                BackRing(rx, NETIF_RX_ENTRY_SIZE),
                                VifFeatures(sg=True, gso_tcpv4=gso, rx_notify=True))
        self.front_notified = self.front.push()
        self.back_notified = False


def persistent_pair():
    a, b = PersistentVif(), PersistentVif()
    a.mac, b.mac = MAC_A, MAC_B
    return a, b


def exchange(a, b, frames) -> None:
    a.send(frames)
    backend_turn([a, b])
    for v in (a, b):
        if v.back_notified:
            v.interrupt()
    b.interrupt()  # the harness's backend does not always notify: take what is there


def test_the_pools_are_granted_once_then_reused():
    a, b = persistent_pair()
    sent = [(frame(MAC_B, MAC_A, n, n), gso)
            for n, gso in ((60, 0), (1514, 0), (9000, 1448), (200, 0))] * 40
    for k in range(0, len(sent), 8):
        exchange(a, b, sent[k:k + 8])
    assert b.got == sent
    warm_a, warm_b = a.guest.granted, b.guest.granted
    assert warm_b == 256  # b's rx pool: one grant per slot, at connect
    assert a.front.statistics().persistent_grants == a.guest.granted
    for k in range(0, len(sent), 8):
        exchange(a, b, sent[k:k + 8])
    assert b.got == sent * 2
    assert (a.guest.granted, b.guest.granted) == (warm_a, warm_b)  # no grant per frame


def test_tx_requests_name_the_same_grefs_again():
    a, _ = persistent_pair()
    grefs = set()
    for seed in range(50):
        a.send([(frame(MAC_B, MAC_A, 100, seed), 0)])
        for raw in a.back.tx.take_requests():
            grefs.add(TX_REQUEST.unpack(raw)[0])
        a.front._tx_shadow.clear()  # answered out of band: the ids come back
        a.front._tx_free = list(range(a.front.tx.size - 1, -1, -1))
    assert len(grefs) == 1


def test_suspend_ends_the_pool_and_defers_grants_still_mapped():
    a, b = persistent_pair()
    exchange(a, b, [(frame(MAC_B, MAC_A, 300), 0)])
    pool = set(a.guest.grants)
    assert pool
    mapped = next(iter(pool))
    a.guest.in_use.add(mapped)  # netback has not unmapped it yet
    a.front.suspend()
    assert set(a.guest.grants) == {mapped}
    assert a.front.statistics().persistent_grants == 0
    a.guest.in_use.clear()
    a.connect()  # the next connect retries the deferred revoke
    assert mapped not in a.guest.grants


# ---- netback's mappings ---------------------------------------------------------------


class Mapping:
    def __init__(self, handle: int, ref: int, page) -> None:
        self.handle, self.ref, self.page = handle, ref, page


class FakeGnttab:
    """Xen's grant table as PersistentMaps uses it (one frontend, domid 1)."""

    def __init__(self) -> None:
        self.granted: dict[int, tuple[bytearray, bool]] = {}  # gref -> (page, readonly)
        self.mapped: dict[int, Mapping] = {}  # handle -> mapping
        self.map_calls = self.map_ops = self.unmap_ops = 0
        self.next_handle = 0

    def grant(self, gref: int, readonly: bool = False) -> bytearray:
        page = bytearray(4096)
        self.granted[gref] = (page, readonly)
        return page

    def revoke(self, gref: int) -> bool:
        if any(m.ref == gref for m in self.mapped.values()):
            return False  # in use: GTF_reading/GTF_writing are set
        del self.granted[gref]
        return True

    def map_grants(self, ops):
        self.map_calls += 1
        out = []
        for dom, ref, readonly in ops:
            self.map_ops += 1
            entry = self.granted.get(ref)
            if dom != 1 or entry is None:
                out.append(GNTST.bad_gntref)
            elif entry[1] and not readonly:
                out.append(GNTST.general_error)
            else:
                self.next_handle += 1
                page = memoryview(entry[0])
                m = Mapping(self.next_handle, ref, page.toreadonly() if readonly else page)
                self.mapped[m.handle] = m
                out.append(m)
        return out

    def unmap_grants(self, maps):
        self.unmap_ops += len(maps)
        for m in maps:
            del self.mapped[m.handle]
        return [GNTST.okay] * len(maps)


def test_each_gref_is_mapped_once_and_read_through_its_mapping():
    gt = FakeGnttab()
    for gref in (10, 11):
        gt.grant(gref, readonly=True)[:5] = b"hello"
    pm = PersistentMaps(gt, fe=1, limit=256)
    for _ in range(20):
        maps = pm.lookup([10, 11, 10], writable=False)
        assert bytes(maps[10].page[:5]) == b"hello"
        pm.end_turn()
    assert (gt.map_calls, gt.map_ops, len(pm), gt.unmap_ops) == (1, 2, 2, 0)


def test_rx_warm_up_maps_every_posted_buffer_in_one_batch():
    gt = FakeGnttab()
    for gref in range(100, 132):
        gt.grant(gref)
    pm = PersistentMaps(gt, fe=1, limit=256)
    maps = pm.lookup([100], writable=True, ahead=lambda: list(range(101, 132)) + [999])
    assert set(maps) == {100}  # hints are cached, not answered
    maps[100].page[:3] = b"abc"
    assert gt.granted[100][0][:3] == b"abc"
    assert (gt.map_calls, len(pm)) == (1, 32)  # 999 was never granted: not cached
    for gref in range(101, 132):
        pm.lookup([gref], writable=True, ahead=lambda: 1 / 0)  # hits never ask for hints
    assert gt.map_calls == 1
    gt.grant(200)
    pm.lookup([200], writable=True, ahead=lambda: 1 / 0)  # once per connection
    assert (gt.map_calls, gt.map_ops) == (2, 34)  # 33 at warm-up (999 failed), then 200


def test_a_revoked_or_read_only_grant_fails_that_packet_only_and_is_retried():
    gt = FakeGnttab()
    gt.grant(20)
    gt.grant(21, readonly=True)
    pm = PersistentMaps(gt, fe=1, limit=256)
    assert gt.revoke(20)  # the frontend revoked it before netback mapped it
    maps = pm.lookup([20, 21], writable=True)
    assert maps == {20: GNTST.bad_gntref, 21: GNTST.general_error}
    assert len(pm) == 0 and not gt.mapped
    gt.grant(20)  # granted again: the next use maps it
    assert not isinstance(pm.lookup([20], writable=True)[20], int)
    assert not gt.revoke(20)  # mapped: the frontend cannot take it back now


def test_evicted_mappings_are_unmapped_at_the_end_of_the_turn_and_all_at_disconnect():
    gt = FakeGnttab()
    for gref in range(30, 36):
        gt.grant(gref)
    pm = PersistentMaps(gt, fe=1, limit=4)
    maps = pm.lookup(list(range(30, 36)), writable=True)
    assert all(not isinstance(m, int) for m in maps.values())
    maps[30].page[:1] = b"x"  # still usable in this turn, though no longer cached
    assert gt.unmap_ops == 0 and len(gt.mapped) == 6
    pm.end_turn()
    assert len(pm) == 4 and len(gt.mapped) == 4
    assert pm.clear() == [GNTST.okay] * 4
    assert not gt.mapped and len(pm) == 0
    assert all(gt.revoke(g) for g in range(30, 36))  # the frontend can end them all now
