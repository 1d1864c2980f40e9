"""netfront's sans-IO core: frames in, tx requests out; rx responses in, frames out.

Rules (xen-interfaces.md 1.5, 1.7, 3; Linux ``drivers/net/xen-netfront.c``):

1. Who writes what. This core writes tx and rx requests and ``req_prod``
   (only in ``push()``) and ``rsp_event`` on both rings; the backend writes
   responses and ``rsp_prod``.
2. tx. A frame goes out as one request chain: the first slot's ``size`` is
   the whole frame; with ``gso_size`` an extra-info slot (GSO, TCPv4, the
   MSS) follows it; each further 4 KiB of data is a slot with
   ``NETTXF_more_data`` on the one before (feature-sg). Each data slot has a
   page of ours, granted read-only to the backend for that request; the
   grant ends when its response arrives. A frame that does not fit the ring
   waits in a bounded queue; beyond it, it is dropped (a full qdisc).
3. rx (rx-copy). The ring is kept full of posted pages, each granted
   writable to the backend; the request id is the slot index (Linux
   netfront's ``xennet_rxidx``) and the backend answers in the same slot.
4. Notification suppression: ``push()`` notifies only when ring.h says so.
   tx slots are reclaimed at every transmit and rx event (Linux's
   ``xennet_tx_buf_gc`` runs from start_xmit too); the backend wakes us for
   tx responses only while frames wait for slots, and then half-way through
   what is outstanding (Linux's older netfront). rx asks for the next
   response (RING_FINAL_CHECK_FOR_RESPONSES).
5. Responses are copied out once and validated: a tx id must be in flight; an
   rx response must carry its slot's id and stay inside its page, and a chain
   must be a sane length. A violation puts the device in ERROR (``error``
   says why, culprit "backend") until the next connect.
6. Reconnect: ``suspend()`` drops what is in flight (TCP retransmits), ends
   the grants (retrying those still in use at the next connect) and forgets
   the rings; ``connect()`` starts over on new ones.
7. Persistent grants (``feature-persistent``, when both ends offer it; the
   2012 Linux netfront/netback persistent-grant patches, which upstream
   never merged: upstream netfront grants per request and netback copies).
   Each tx id owns one page, granted read-only the first time the id is
   used; each rx slot's page is granted writable once. Those grants live
   until ``suspend()``: frame data is copied into (tx) or out of (rx) the
   same pages each time, and the backend maps each gref once and keeps it.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from domains.kernel.ring import FrontRing, RingError
from hypervisor.public.netif import (
    EXTRA_INFO,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    RX_REQUEST,
    RX_RESPONSE,
    TX_REQUEST,
    TX_RESPONSE,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_extra_info,
    NETTXF_more_data,
    pack_gso_extra,
)
from hypervisor.public.xen import PAGE_SIZE

TX_QUEUE_MAX = 1000  # Linux's default txqueuelen
MAX_RX_SLOTS = XEN_NETIF_NR_SLOTS_MIN + 1  # data slots plus one GSO extra


class NetfrontState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class NetfrontStatistics:
    state: NetfrontState
    tx_packets: int
    tx_bytes: int
    tx_dropped: int
    tx_errors: int
    rx_packets: int
    rx_bytes: int
    rx_errors: int
    tx_in_flight: int
    tx_queued: int
    rx_posted: int
    pushes: int
    notifications: int
    persistent_grants: int = 0  # grants kept for the connection (rule 7)
    grants_deferred: int = 0  # ended while the backend still had them in use (rule 6)


class Granter(Protocol):
    """Grants to the backend domain (``domains.kernel.gnttab`` with the domid bound)."""

    def grant(self, pfn: int, readonly: bool) -> int: ...

    def end_access(self, gref: int) -> bool: ...


Buffer = tuple[int, memoryview]  # (pfn, its 4 KiB page)


class NetfrontCore:
    """netfront for one vif (one queue, both rings on one event channel)."""

    def __init__(self, granter: Granter, alloc_page: Callable[[], Buffer]) -> None:
        self.granter, self.alloc_page = granter, alloc_page
        self.state = NetfrontState.DISCONNECTED
        self.error: RingError | None = None
        self.tx: FrontRing | None = None
        self.rx: FrontRing | None = None
        self.gso = False
        self._tx_free: list[int] = []  # free tx ids
        self._tx_shadow: dict[int, tuple[int, Buffer]] = {}  # id -> (gref, page)
        self._tx_pages: list[Buffer] = []  # pages not in flight
        self._tx_queue: deque[tuple[bytes, int]] = deque()
        self._rx_pages: list[Buffer] = []  # one per rx slot, kept for the device's life
        self._rx_grefs: dict[int, int] = {}  # slot -> gref while posted (persistent: kept)
        self._tx_pool: dict[int, tuple[int, Buffer]] = {}  # persistent: tx id -> (gref, page)
        self.persistent = False  # both ends agreed on feature-persistent (rule 7)
        self._rx_chain: list[bytes] = []  # the data of a frame still arriving
        self._rx_gso = 0
        self._rx_bad = False
        self._rx_extra_next = False
        self._rx_more = False
        self._deferred: list[int] = []  # grants the backend still had in use
        self._n: Counter[str] = Counter()

    # -- connection ------------------------------------------------------------

    def connect(self, tx: FrontRing, rx: FrontRing, gso: bool, persistent: bool = False) -> None:
        """Start on fresh rings; ``gso`` is the backend's feature-gso-tcpv4 and
        ``persistent`` says both ends offered feature-persistent."""
        self.tx, self.rx, self.gso, self.persistent = tx, rx, gso, persistent
        self._tx_free = list(range(tx.size - 1, -1, -1))
        self._tx_shadow = {}
        self._rx_chain, self._rx_bad, self._rx_extra_next, self._rx_more = [], False, False, False
        self._rx_gso = 0
        while len(self._rx_pages) < rx.size:
            self._rx_pages.append(self.alloc_page())
        self.state, self.error = NetfrontState.CONNECTED, None
        self._retry_deferred()
        self._refill_rx()
        self._fill_tx()

    def suspend(self) -> None:
        """The backend went away: drop in-flight frames, end grants, forget the rings."""
        for gref, page in self._tx_shadow.values():
            if not self.persistent:
                self._end(gref)
                self._tx_pages.append(page)
        for gref, page in self._tx_pool.values():  # the backend unmaps at its disconnect
            self._end(gref)
            self._tx_pages.append(page)
        self._n["tx_dropped"] += len(self._tx_shadow)
        self._tx_shadow, self._tx_free, self._tx_pool = {}, [], {}
        for gref in self._rx_grefs.values():
            self._end(gref)
        self._rx_grefs = {}
        self.tx = self.rx = None
        self.state = NetfrontState.DISCONNECTED

    # -- tx ---------------------------------------------------------------------

    def transmit(self, frames: list[tuple[bytes, int]]) -> None:
        """Queue a batch and fill the ring (publish with ``push()``)."""
        q = self._tx_queue
        if self.tx is not None and self.state is NetfrontState.CONNECTED:
            try:
                self._gc_tx()
            except RingError as err:
                self.error, self.state = err, NetfrontState.ERROR
        for frame, gso_size in frames:
            if len(q) >= TX_QUEUE_MAX or not 14 <= len(frame) <= XEN_NETIF_MAX_TX_SIZE:
                self._n["tx_dropped"] += 1
                continue
            q.append((frame, gso_size if self.gso else 0))
        self._fill_tx()

    def _fill_tx(self) -> None:
        tx, q = self.tx, self._tx_queue
        if tx is None or self.state is not NetfrontState.CONNECTED:
            return
        while q:
            frame, gso = q[0]
            slots = -(-len(frame) // PAGE_SIZE)
            if tx.free_requests() < slots + (1 if gso else 0) or len(self._tx_free) < slots:
                self._gc_tx()
                if tx.free_requests() < slots + (1 if gso else 0) or len(self._tx_free) < slots:
                    return
            q.popleft()
            self._put_frame(tx, frame, gso, slots)
        self._arm_tx()

    def _put_frame(self, tx: FrontRing, frame: bytes, gso: int, slots: int) -> None:
        mv = memoryview(frame)
        for k in range(slots):
            chunk = mv[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
            id_ = self._tx_free.pop()
            if self.persistent:
                gref, page = self._tx_pool.get(id_) or self._pool_page(id_)
            else:
                page = self._tx_pages.pop() if self._tx_pages else self.alloc_page()
                gref = self.granter.grant(page[0], True)
            page[1][:len(chunk)] = chunk
            self._tx_shadow[id_] = (gref, page)
            flags = NETTXF_more_data if k < slots - 1 else 0
            if k == 0:
                if gso:
                    flags |= NETTXF_extra_info
                tx.put_request(TX_REQUEST.pack(gref, 0, flags, id_, len(frame)))
                if gso:
                    tx.put_request(pack_gso_extra(gso) + bytes(4))
            else:
                tx.put_request(TX_REQUEST.pack(gref, 0, flags, id_, len(chunk)))
        self._n["tx_packets"] += 1
        self._n["tx_bytes"] += len(frame)

    def _pool_page(self, id_: int) -> tuple[int, Buffer]:
        """Rule 7: tx id ``id_``'s page, granted read-only for the connection's life."""
        page = self._tx_pages.pop() if self._tx_pages else self.alloc_page()
        entry = self._tx_pool[id_] = (self.granter.grant(page[0], True), page)
        return entry

    def _gc_tx(self) -> None:
        """xennet_tx_buf_gc: take tx responses, end grants, free ids and pages."""
        tx = self.tx
        if tx is None:
            return
        while True:
            for raw in tx.take_responses():
                id_, status = TX_RESPONSE.unpack_from(raw)
                if status == NETIF_RSP_NULL:
                    continue
                shadow = self._tx_shadow.pop(id_, None)
                if shadow is None:
                    raise RingError("backend", "tx response id", f"id {id_} is not in flight")
                if not self.persistent:
                    self._end(shadow[0])
                    self._tx_pages.append(shadow[1])
                self._tx_free.append(id_)
                if status != NETIF_RSP_OKAY:
                    self._n["tx_errors"] += 1
            self._arm_tx()
            if not tx.unconsumed_responses():
                return

    def _arm_tx(self) -> None:
        """Frames waiting for slots: wake me half-way through what is outstanding.
        Otherwise past everything sent so far: slots are reclaimed lazily at the
        next transmit or rx event, with no upcall just to free them."""
        tx = self.tx
        out = tx.outstanding_requests()
        ahead = (out >> 1) + 1 if self._tx_queue else out + 1
        tx.set_rsp_event(tx.rsp_cons + ahead)

    # -- rx ---------------------------------------------------------------------

    def _refill_rx(self) -> None:
        rx = self.rx
        if rx is None:
            return
        mask = rx.size - 1
        while not rx.full():
            slot = rx.req_prod_pvt & mask
            gref = self._rx_grefs.get(slot) if self.persistent else None
            if gref is None:
                gref = self._rx_grefs[slot] = self.granter.grant(self._rx_pages[slot][0], False)
            rx.put_request(RX_REQUEST.pack(slot, gref))

    def _take_rx(self, out: list[tuple[bytes, int]]) -> None:
        rx = self.rx
        assert rx is not None
        mask = rx.size - 1
        while True:
            first = rx.rsp_cons
            for k, raw in enumerate(rx.take_responses()):
                slot = (first + k) & mask
                if not self.persistent:
                    gref = self._rx_grefs.pop(slot, None)
                    if gref is not None:
                        self._end(gref)
                self._rx_response(raw, slot, out)
            if not rx.final_check_for_responses():
                return

    def _rx_response(self, raw: bytes, slot: int, out: list[tuple[bytes, int]]) -> None:
        """xennet_get_responses: data slots, with extra-info slots after the first."""
        if self._rx_extra_next:
            type_, eflags, size, _gtype, _ = EXTRA_INFO.unpack_from(raw)
            self._rx_extra_next = bool(eflags & XEN_NETIF_EXTRA_FLAG_MORE)
            if type_ == XEN_NETIF_EXTRA_TYPE_GSO:
                self._rx_gso = size
        else:
            id_, offset, flags, status = RX_RESPONSE.unpack(raw)
            if id_ != slot:
                raise RingError("backend", "rx response id", f"id {id_} in slot {slot}")
            if status < 0:
                self._rx_bad = True
            elif offset + status > PAGE_SIZE:
                raise RingError("backend", "rx response", f"offset {offset} + {status} > page")
            else:
                self._rx_chain.append(bytes(self._rx_pages[slot][1][offset:offset + status]))
            if len(self._rx_chain) > MAX_RX_SLOTS:
                raise RingError("backend", "rx chain", f"more than {MAX_RX_SLOTS} slots")
            self._rx_extra_next = bool(flags & NETRXF_extra_info)
            self._rx_more = bool(flags & NETRXF_more_data)
        if not self._rx_extra_next and not self._rx_more:
            self._rx_done(out)

    def _rx_done(self, out: list[tuple[bytes, int]]) -> None:
        frame, gso = b"".join(self._rx_chain), self._rx_gso
        bad = self._rx_bad or len(frame) < 14
        self._rx_chain, self._rx_gso, self._rx_bad = [], 0, False
        if bad:
            self._n["rx_errors"] += 1
            return
        self._n["rx_packets"] += 1
        self._n["rx_bytes"] += len(frame)
        out.append((frame, gso))

    # -- events -----------------------------------------------------------------

    def handle_responses(self) -> list[tuple[bytes, int]]:
        """The interrupt: reclaim tx, collect received frames, refill (then ``push()``)."""
        frames: list[tuple[bytes, int]] = []
        if self.state is not NetfrontState.CONNECTED:
            return frames
        try:
            self._gc_tx()
            self._take_rx(frames)
        except RingError as err:
            self.error, self.state = err, NetfrontState.ERROR
            return frames
        self._refill_rx()
        self._fill_tx()
        return frames

    def push(self) -> bool:
        """Publish both rings' requests; True means notify the backend (once)."""
        if self.state is not NetfrontState.CONNECTED or self.tx is None or self.rx is None:
            return False
        notify = self.tx.push_requests()
        notify = self.rx.push_requests() or notify
        self._n["pushes"] += 1
        self._n["notifications"] += notify
        return notify

    # -- grants -----------------------------------------------------------------

    def _end(self, gref: int) -> None:
        if not self.granter.end_access(gref):
            self._deferred.append(gref)

    def _retry_deferred(self) -> None:
        pending, self._deferred = self._deferred, []
        for gref in pending:
            self._end(gref)

    def statistics(self) -> NetfrontStatistics:
        n = self._n
        return NetfrontStatistics(
            state=self.state, tx_packets=n["tx_packets"], tx_bytes=n["tx_bytes"],
            tx_dropped=n["tx_dropped"], tx_errors=n["tx_errors"], rx_packets=n["rx_packets"],
            rx_bytes=n["rx_bytes"], rx_errors=n["rx_errors"], tx_in_flight=len(self._tx_shadow),
            tx_queued=len(self._tx_queue),
            rx_posted=self.rx.outstanding_requests() if self.rx is not None else 0,
            pushes=n["pushes"], notifications=n["notifications"],
            persistent_grants=(len(self._tx_pool) + len(self._rx_grefs)) if self.persistent else 0,
            grants_deferred=len(self._deferred))
