"""netback's sans-IO core: one vif's two rings in; packets, copy plans and responses out.

Rules (xen-interfaces.md 1.5-1.7, 3; Linux ``drivers/net/xen-netback/netback.c``):

1. Who writes what. The core writes tx and rx responses and ``rsp_prod``
   (only in ``push_tx``/``push_rx``) and ``req_event`` on both rings; the
   frontend writes requests and ``req_prod``.
2. Copy, then validate (XSA-155). Every slot is copied out of the ring once
   (``BackRing.take_requests``) and only the private copy is parsed.
3. tx (guest -> Dom0). ``poll_tx`` cuts the copied slots into packets: the
   first slot, its extra-info slots, then data slots while ``more_data``. A
   packet that merely breaks a size rule is dropped (error responses, like
   Linux's ``xenvif_tx_err``); a frontend that lies about the chain itself
   (a slot crossing its page, a chain longer than ``FATAL_SKB_SLOTS`` or
   running past ``req_prod``, an unknown extra type, a bad GSO type or size)
   is cut off: ``error`` is set and the core does nothing more (Linux's
   ``xenvif_fatal_tx_err``). The data is fetched by the adapter with one
   batched GNTTABOP_copy per Dom0 turn; ``respond_tx`` then answers every
   slot of the packet (NETIF_RSP_NULL for extra-info slots).
4. rx (Dom0 -> guest, rx-copy mode). ``queue_rx`` keeps a bounded queue;
   ``build_rx`` takes as many posted rx requests as each queued packet needs
   (one per 4 KiB of data, plus one for the GSO extra-info slot) and says
   where each piece goes; the adapter grant-copies them (batched) and
   ``respond_rx`` answers in the same slots, in order. Without enough posted
   buffers the core arms ``req_event`` for the count it needs, so a frontend
   with ``feature-rx-notify`` wakes us when it posts them.
5. Counters are the vif interface's in Dom0, as ``ip -s link`` shows them:
   ``rx_*`` counts frames received from the guest, ``tx_*`` frames sent to it.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field, fields

from domains.kernel.ring import BackRing, RingError
from hypervisor.public.netif import (
    EXTRA_INFO,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    RX_REQUEST,
    RX_RESPONSE,
    TX_REQUEST,
    TX_RESPONSE,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_NONE,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_NR_SLOTS_MIN,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_extra_info,
    NETTXF_more_data,
    pack_gso_extra,
)
from hypervisor.public.xen import PAGE_SIZE

GSO_MIN_SIZE = 88  # Linux's TCP_MIN_MSS: no real TCP segment is smaller
ETH_HLEN = 14
FATAL_SKB_SLOTS = 20  # Linux netback's fatal_skb_slots: more is malicious
MAX_SKB_SLOTS = XEN_NETIF_NR_SLOTS_MIN  # more (but not fatal) is dropped
RX_QUEUE_MAX = 512  # frames waiting for rx buffers before we drop...
# ...or bytes: Linux stops a vif's queue at 512 KiB (half an rx ring of pages);
# the model drops past 2 MiB, room for a full tx ring of TSO frames from two peers.
RX_QUEUE_MAX_BYTES = 2 << 20


class FrontendError(Exception):
    """The frontend broke the netif protocol; the vif is cut off."""


@dataclass(slots=True, eq=False)
class TxPacket:
    """One packet from the guest: its slots' ids, its data pieces and verdict."""

    ids: list[tuple[int, bool]]  # (request id, is an extra-info slot), in slot order
    frags: list[tuple[int, int, int]]  # (gref, offset, size) of each data piece
    size: int
    gso_size: int = 0
    status: int = NETIF_RSP_OKAY  # NETIF_RSP_ERROR: dropped before copying
    reason: str = ""


@dataclass(slots=True, eq=False)
class RxPacket:
    """One packet to the guest: ``pieces`` are (request id, gref, start, length)."""

    frame: bytes
    gso_size: int
    pieces: list[tuple[int, int, int, int]]
    extra_id: int | None = None  # the rx request the GSO extra-info slot used


@dataclass(slots=True)
class VifCounters:
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    rx_errors: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    tx_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class VifFeatures:
    """What the frontend wrote (request-rx-copy is required, not a feature)."""

    sg: bool = False
    gso_tcpv4: bool = False
    rx_notify: bool = False


@dataclass(slots=True, eq=False)
class NetbackCore:
    tx: BackRing
    rx: BackRing
    features: VifFeatures = VifFeatures()
    mtu: int = 1500
    counters: VifCounters = field(default_factory=VifCounters)
    error: str | None = None
    rx_queue: deque = field(default_factory=deque)
    rx_queued_bytes: int = 0

    # -- tx: guest -> Dom0 -------------------------------------------------

    def poll_tx(self) -> list[TxPacket]:
        """Consume every complete packet published; raises nothing (see ``error``)."""
        if self.error is not None:
            return []
        try:
            raws = self.tx.take_requests()
            return self._packets(raws)
        except (RingError, FrontendError, struct.error) as exc:
            self.error = str(exc)
            return []

    def _packets(self, raws: list[bytes]) -> list[TxPacket]:
        out, i, n = [], 0, len(raws)
        while i < n:
            pkt, i = self._packet(raws, i)
            out.append(pkt)
        return out

    def _packet(self, raws: list[bytes], i: int) -> tuple[TxPacket, int]:
        gref, offset, flags, id_, total = TX_REQUEST.unpack(raws[i])
        pkt = TxPacket([(id_, False)], [], total)
        i += 1
        if flags & NETTXF_extra_info:
            i = self._extras(raws, i, pkt)
        pieces = [(gref, offset, total)]
        while flags & NETTXF_more_data:
            if i >= len(raws):
                raise FrontendError(f"Asked for {len(pieces) + 1} slots but only "
                                    f"{len(pieces)} were published")
            if len(pieces) >= FATAL_SKB_SLOTS:
                raise FrontendError(f"Malicious frontend using more than {FATAL_SKB_SLOTS} slots")
            gref, offset, flags, id_, size = TX_REQUEST.unpack(raws[i])
            pkt.ids.append((id_, False))
            pieces.append((gref, offset, size))
            i += 1
        self._check_pieces(pkt, pieces)
        return pkt, i

    def _extras(self, raws: list[bytes], i: int, pkt: TxPacket) -> int:
        more, seen = True, 0
        while more:
            if i >= len(raws) or seen >= XEN_NETIF_EXTRA_TYPE_MAX:
                raise FrontendError("Missing extra info")
            type_, eflags, gso_size, gso_type, _ = EXTRA_INFO.unpack_from(raws[i])
            if not XEN_NETIF_EXTRA_TYPE_NONE < type_ < XEN_NETIF_EXTRA_TYPE_MAX:
                raise FrontendError(f"Invalid extra type: {type_}")
            if type_ == XEN_NETIF_EXTRA_TYPE_GSO:
                if gso_type != XEN_NETIF_GSO_TYPE_TCPV4 or not self.features.gso_tcpv4:
                    raise FrontendError(f"Bad GSO type {gso_type}")
                if gso_size < GSO_MIN_SIZE:
                    # Linux rejects only 0; here one tiny size would make Dom0's
                    # Python segmenter cut 60 KB into 1-byte pieces (a DoS).
                    raise FrontendError(f"GSO size {gso_size} below {GSO_MIN_SIZE}")
                pkt.gso_size = gso_size
            # multicast and hash extras carry nothing the model uses
            pkt.ids.append((TX_REQUEST.unpack(raws[i])[3], True))
            more, seen, i = bool(eflags & XEN_NETIF_EXTRA_FLAG_MORE), seen + 1, i + 1
        return i

    def _check_pieces(self, pkt: TxPacket, pieces: list[tuple[int, int, int]]) -> None:
        """Linux xenvif_count_requests + the checks of xenvif_tx_build_gops."""
        rest = 0
        for _gref, offset, size in pieces[1:]:
            if offset + size > PAGE_SIZE:
                raise FrontendError(f"Cross page boundary, offset: {offset}, size: {size}")
            rest += size
        first_gref, first_off, total = pieces[0]
        first = total - rest
        if first < 0:
            self._drop(pkt, f"Invalid tx request, size {total} < {rest} in later slots")
            return
        if first_off + first > PAGE_SIZE:
            raise FrontendError(f"txreq.offset: {first_off}, size: {first}, "
                                f"end: {first_off + first}")
        if len(pieces) > MAX_SKB_SLOTS:
            self._drop(pkt, f"Too many slots ({len(pieces)} > {MAX_SKB_SLOTS})")
        elif total < ETH_HLEN:
            self._drop(pkt, f"Bad packet size: {total}")
        elif not pkt.gso_size and total > ETH_HLEN + 4 + self.mtu:
            self._drop(pkt, f"Frame of {total} bytes exceeds the MTU {self.mtu}")
        pkt.frags = [(first_gref, first_off, first), *pieces[1:]]

    def _drop(self, pkt: TxPacket, reason: str) -> None:
        if pkt.status == NETIF_RSP_OKAY:
            pkt.status, pkt.reason = NETIF_RSP_ERROR, reason

    def respond_tx(self, pkt: TxPacket, status: int) -> None:
        """Answer every slot of ``pkt`` (extra-info slots with NETIF_RSP_NULL)."""
        put = self.tx.put_response
        for id_, extra in pkt.ids:
            put(TX_RESPONSE.pack(id_, NETIF_RSP_NULL if extra else status))
        c = self.counters
        if status == NETIF_RSP_OKAY:
            c.rx_packets += 1
            c.rx_bytes += pkt.size
        else:
            c.rx_errors += 1

    def push_tx(self) -> bool:
        """Publish tx responses; True means notify the frontend."""
        return self.error is None and self.tx.push_responses()

    def tx_more(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS on tx: True if more arrived meanwhile."""
        if self.error is not None:
            return False
        try:
            return self.tx.final_check_for_requests()
        except RingError as exc:
            self.error = str(exc)
            return False

    # -- rx: Dom0 -> guest -------------------------------------------------

    def queue_rx(self, frame: bytes, gso_size: int = 0) -> bool:
        """Queue a frame for the guest; False (and counted) when dropped."""
        if (self.error is not None or len(self.rx_queue) >= RX_QUEUE_MAX
                or self.rx_queued_bytes + len(frame) > RX_QUEUE_MAX_BYTES
                or (gso_size and not self.features.gso_tcpv4)
                or len(frame) > 0xFFFF or len(frame) < ETH_HLEN):
            self.counters.tx_dropped += 1
            return False
        self.rx_queue.append((frame, gso_size))
        self.rx_queued_bytes += len(frame)
        return True

    def rx_ready(self) -> bool:
        """Frames wait and enough buffers are posted for the first of them."""
        if not self.rx_queue or self.error is not None:
            return False
        frame, gso = self.rx_queue[0]
        return self.rx.unconsumed_requests() >= _slots(frame, gso)

    def build_rx(self) -> list[RxPacket]:
        """Take posted rx buffers for as many queued frames as they can hold."""
        out: list[RxPacket] = []
        q, rx = self.rx_queue, self.rx
        try:
            while q and self.error is None:
                frame, gso = q[0]
                need = _slots(frame, gso)
                if rx.unconsumed_requests() < need:
                    rx.set_req_event(rx.req_cons + need)  # wake me when they are posted
                    if rx.unconsumed_requests() < need:
                        break
                q.popleft()
                self.rx_queued_bytes -= len(frame)
                out.append(self._rx_packet(frame, gso, rx.take_requests(need)))
        except RingError as exc:
            self.error = str(exc)
        return out

    def _rx_packet(self, frame: bytes, gso: int, raws: list[bytes]) -> RxPacket:
        reqs = [RX_REQUEST.unpack(r) for r in raws]
        pkt = RxPacket(frame, gso, [])
        if gso:
            pkt.extra_id = reqs.pop(1)[0]
        for k, (id_, gref) in enumerate(reqs):
            start = k * PAGE_SIZE
            pkt.pieces.append((id_, gref, start, min(PAGE_SIZE, len(frame) - start)))
        return pkt

    def posted_rx_grefs(self) -> list[int]:
        """The grefs of the rx buffers posted and not yet taken (hints, rule 2)."""
        if self.error is not None:
            return []
        return [RX_REQUEST.unpack(r)[1] for r in self.rx.peek_requests()]

    def respond_rx(self, pkt: RxPacket, ok: bool) -> None:
        """Answer the rx requests ``pkt`` used, in slot order (Linux netfront needs it)."""
        put, last = self.rx.put_response, len(pkt.pieces) - 1
        for k, (id_, _gref, _start, length) in enumerate(pkt.pieces):
            flags = NETRXF_more_data if k < last else 0
            if k == 0 and pkt.extra_id is not None:
                flags |= NETRXF_extra_info
            put(RX_RESPONSE.pack(id_, 0, flags, length if ok else NETIF_RSP_ERROR))
            if k == 0 and pkt.extra_id is not None:
                put(pack_gso_extra(pkt.gso_size))
        c = self.counters
        if ok:
            c.tx_packets += 1
            c.tx_bytes += len(pkt.frame)
        else:
            c.tx_errors += 1

    def push_rx(self) -> bool:
        """Publish rx responses; True means notify the frontend."""
        return self.error is None and self.rx.push_responses()


def _slots(frame: bytes, gso: int) -> int:
    """rx slots a frame needs: one per 4 KiB of data, one for the GSO extra."""
    return -(-len(frame) // PAGE_SIZE) + (1 if gso else 0)
