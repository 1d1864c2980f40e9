"""Shared I/O rings (xen/include/public/io/ring.h) as sans-IO cores.

A ring is one 64-byte header ("sring") followed by a power-of-two array of
slots, laid over one or more pages that two processes map. These classes work
on any writable buffer (shared memory in the real system, a bytearray in
tests); they never notify anyone: the ``push_*`` methods return whether the
caller must send an event-channel notification.

Rules (ring.h; xen-interfaces.md section 1):

1. Who writes what. The frontend writes ``req_prod`` and ``rsp_event``; the
   backend writes ``rsp_prod`` and ``req_event``. Each end keeps its other
   indices private: front ``req_prod_pvt``/``rsp_cons``, back
   ``rsp_prod_pvt``/``req_cons``. Requests and responses share the slot array.
2. Only the frontend initialises the page (SHARED_RING_INIT: prods 0, events 1,
   pad zeroed). The backend attaches and never re-initialises (the MirageOS
   netback bug wiped posted RX buffers that way).
3. Indices are free-running u32 and wrap modulo 2^32; index ``i`` lives in slot
   ``i & (size - 1)``. All index arithmetic here is masked to 32 bits.
4. Shared indices are read and written only through a ``memoryview.cast('I')``
   of the header: one aligned 4-byte load or store each, never a struct pack
   that another process could observe half-done.
5. Producer: fill slots, then publish the producer index, then a full barrier,
   then read the peer's ``*_event``; notify iff it lies in (old, new].
   Consumer: snapshot the producer index, then read slots up to it; before
   idling, write ``*_event = cons + 1``, full barrier, re-check (FINAL_CHECK).
6. Copy, then validate (XSA-155): a consumer copies a whole slot into private
   ``bytes`` exactly once; callers validate and use only that copy.
7. What is validated where. The backend refuses a frontend whose ``req_prod``
   claims more than a ring of outstanding requests (RING_REQUEST_PROD_OVERFLOW,
   Linux blkback: "Frontend provided bogus ring requests") or that moved
   backwards. The frontend refuses a backend whose ``rsp_prod`` runs more than a
   ring ahead (RING_RESPONSE_PROD_OVERFLOW) or answers requests never made.
   Either violation halts that end for good (``error`` is set, every later
   consume raises), as Linux does; it never touches the peer's fields.
"""

from __future__ import annotations

import mmap
import sys
import threading
from dataclasses import dataclass

from hypervisor.public.ring import (
    REQ_EVENT,
    REQ_PROD,
    RING_IDX_MASK,
    RSP_EVENT,
    RSP_PROD,
    SRING_HEADER_SIZE,
    ring_size,
)

__all__ = [
    "BackRing",
    "FrontRing",
    "RingError",
    "RingStatistics",
    "full_barrier",
    "u32_view",
    "writable_bytes",
]

# cast('I') uses native order; the ABI formats are "<I" with 4-byte fields.
if sys.byteorder != "little" or memoryview(bytes(4)).cast("I").itemsize != 4:
    raise ImportError("xenolab rings need a little-endian host with 4-byte unsigned int")

M = RING_IDX_MASK
# Word indices of the shared header fields inside the cast('I') view.
_REQ_PROD, _REQ_EVENT = REQ_PROD // 4, REQ_EVENT // 4
_RSP_PROD, _RSP_EVENT = RSP_PROD // 4, RSP_EVENT // 4
_PVT_AND_PAD = slice(16, SRING_HEADER_SIZE)
_ZERO_PAD = bytes(SRING_HEADER_SIZE - 16)

BufferLike = bytearray | memoryview | mmap.mmap

_fence_lock = threading.Lock()
_fence_acquire, _fence_release = _fence_lock.acquire, _fence_lock.release


def full_barrier() -> None:
    """xen_mb(): order our earlier stores before our later loads.

    Python has no fence instruction; taking an uncontended lock is an atomic
    read-modify-write (a locked instruction, i.e. a full fence, on x86).
    Write and read barriers need nothing: x86 keeps store->store and
    load->load order, and each index access is one C-level 4-byte access.
    """
    _fence_acquire()
    _fence_release()


def u32_view(buf: memoryview, offset: int, count: int) -> memoryview:
    """A ``cast('I')`` view of ``count`` aligned u32 fields at ``offset``."""
    if offset % 4:
        raise ValueError(f"u32 field offset {offset} is not 4-byte aligned")
    if offset + 4 * count > len(buf):
        raise ValueError("u32 fields run past the end of the buffer")
    return buf[offset : offset + 4 * count].cast("I")


def writable_bytes(buf: BufferLike) -> memoryview:
    """A flat, writable byte view of ``buf`` (bytearray, mmap, memoryview)."""
    mv = memoryview(buf)
    if mv.readonly:
        mv.release()
        raise ValueError("ring buffer must be writable")
    if mv.format != "B" or mv.ndim != 1:
        flat = mv.cast("B")
        mv.release()
        return flat
    return mv


class RingError(Exception):
    """A ring rule was broken; ``culprit`` says by whom.

    ``culprit`` is ``"frontend"`` or ``"backend"`` when the peer broke a rule
    (the detecting end halts), or ``"local"`` when this end's caller misused
    the API (nothing halts). ``rule`` is Xen's macro name where one exists.
    """

    def __init__(self, culprit: str, rule: str, detail: str) -> None:
        super().__init__(culprit, rule, detail)  # args round-trip through pickle
        self.culprit = culprit
        self.rule = rule
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.culprit} broke {self.rule}: {self.detail}"


@dataclass(frozen=True, slots=True)
class RingStatistics:
    """A snapshot of the shared header and of one end's private indices."""

    size: int
    req_prod: int
    req_event: int
    rsp_prod: int
    rsp_event: int
    req_prod_pvt: int | None = None
    rsp_cons: int | None = None
    rsp_prod_pvt: int | None = None
    req_cons: int | None = None
    halted: bool = False


class _Ring:
    """What both ends share: the views, the slots and the halt state."""

    __slots__ = ("_mv", "_idx", "_slots", "size", "entry_size", "error")

    def __init__(self, buf: BufferLike, entry_size: int) -> None:
        if entry_size < 1:
            raise ValueError("entry_size must be positive")
        mv = writable_bytes(buf)
        self.size = ring_size(len(mv), entry_size)
        self.entry_size = entry_size
        self._mv = mv
        self._idx = u32_view(mv, 0, 4)
        # One view per slot, made once, so the hot path allocates nothing.
        self._slots = [
            mv[SRING_HEADER_SIZE + i * entry_size : SRING_HEADER_SIZE + (i + 1) * entry_size]
            for i in range(self.size)
        ]
        self.error: RingError | None = None

    def _write_slot(self, idx: int, data: bytes, what: str) -> None:
        n = len(data)
        if n == self.entry_size:
            self._slots[idx & (self.size - 1)][:] = data
        elif 0 < n < self.entry_size:
            # A union slot: a short message (e.g. a blkif response) fills a prefix.
            self._slots[idx & (self.size - 1)][:n] = data
        else:
            raise RingError("local", what, f"{n} bytes does not fit a {self.entry_size}-byte slot")

    def _copy_slot(self, idx: int) -> bytes:
        return bytes(self._slots[idx & (self.size - 1)])

    def _halt(self, culprit: str, rule: str, detail: str) -> RingError:
        self.error = RingError(culprit, rule, detail)
        return self.error

    def _check_not_halted(self) -> None:
        err = self.error
        if err is not None:
            raise RingError(err.culprit, err.rule, f"ring halted earlier: {err.detail}")

    def _header(self) -> tuple[int, int, int, int]:
        idx = self._idx
        return idx[_REQ_PROD], idx[_REQ_EVENT], idx[_RSP_PROD], idx[_RSP_EVENT]

    def release(self) -> None:
        """Drop every view of the buffer (an mmap cannot close while they live)."""
        for view in self._slots:
            view.release()
        self._slots = []
        self._idx.release()
        self._mv.release()


def _push_and_check_notify(idx: memoryview, prod: int, event: int, new: int) -> bool:
    """RING_PUSH_*_AND_CHECK_NOTIFY: publish ``new``; notify iff event in (old, new]."""
    old = idx[prod]
    idx[prod] = new  # x86 keeps the slot stores before this one (wmb)
    full_barrier()  # the peer's *_event must be read after the publish
    return ((new - idx[event]) & M) < ((new - old) & M)


class FrontRing(_Ring):
    """The frontend (requesting) end: blkfront, netfront.

    ``req_prod_pvt`` and ``rsp_cons`` are this end's private indices.
    """

    __slots__ = ("req_prod_pvt", "rsp_cons")

    def __init__(self, buf: BufferLike, entry_size: int, *, init: bool = True) -> None:
        """Lay a front ring over ``buf``; ``init`` runs SHARED_RING_INIT first.

        With ``init=False`` the shared page is left alone and the private
        indices start at 0 (FRONT_RING_INIT); use ``attach`` to start elsewhere.
        """
        super().__init__(buf, entry_size)
        if init:
            self._shared_ring_init()
        self.req_prod_pvt = 0
        self.rsp_cons = 0

    def _shared_ring_init(self) -> None:
        idx = self._idx
        idx[_REQ_PROD] = idx[_RSP_PROD] = 0
        idx[_REQ_EVENT] = idx[_RSP_EVENT] = 1
        self._mv[_PVT_AND_PAD] = _ZERO_PAD  # pvt (a protocol's own union) starts zeroed

    def attach(self, req_prod_pvt: int, rsp_cons: int) -> None:
        """FRONT_RING_ATTACH: resume at given private indices."""
        self.req_prod_pvt = req_prod_pvt & M
        self.rsp_cons = rsp_cons & M

    def free_requests(self) -> int:
        """RING_FREE_REQUESTS: slots this end may still fill."""
        return self.size - ((self.req_prod_pvt - self.rsp_cons) & M)

    def full(self) -> bool:
        """RING_FULL."""
        return self.free_requests() <= 0

    def outstanding_requests(self) -> int:
        """Requests put but not yet answered (blkfront: rsp_cons != req_prod_pvt)."""
        return (self.req_prod_pvt - self.rsp_cons) & M

    def put_request(self, data: bytes) -> None:
        """Copy a request (1..entry_size bytes) into slot ``req_prod_pvt``; not yet published."""
        pvt = self.req_prod_pvt
        if ((pvt - self.rsp_cons) & M) >= self.size:
            raise RingError("local", "RING_FULL", "put_request on a full ring")
        self._write_slot(pvt, data, "request size")
        self.req_prod_pvt = (pvt + 1) & M

    def push_requests(self) -> bool:
        """RING_PUSH_REQUESTS_AND_CHECK_NOTIFY; True means notify the backend."""
        return _push_and_check_notify(self._idx, _REQ_PROD, _REQ_EVENT, self.req_prod_pvt)

    def _response_prod(self) -> int:
        """Snapshot and validate the backend's ``rsp_prod``; halt if it lies."""
        self._check_not_halted()
        rp = self._idx[_RSP_PROD]
        ahead = (rp - self.rsp_cons) & M
        if ahead > self.size:
            detail = f"rsp_prod={rp} rsp_cons={self.rsp_cons} size={self.size}"
            raise self._halt("backend", "RING_RESPONSE_PROD_OVERFLOW", detail)
        if ahead > ((self.req_prod_pvt - self.rsp_cons) & M):
            # Beyond ring.h: every protocol here is one response per request.
            detail = f"rsp_prod={rp} runs past req_prod_pvt={self.req_prod_pvt}"
            raise self._halt("backend", "responses for requests never made", detail)
        return rp

    def unconsumed_responses(self) -> int:
        """RING_HAS_UNCONSUMED_RESPONSES, validated (raises RingError on a lie)."""
        return (self._response_prod() - self.rsp_cons) & M

    def get_response(self) -> bytes:
        """RING_COPY_RESPONSE of slot ``rsp_cons`` into private bytes, then advance."""
        if self._response_prod() == self.rsp_cons:
            raise RingError("local", "get_response", "no unconsumed response")
        rsp = self._copy_slot(self.rsp_cons)
        self.rsp_cons = (self.rsp_cons + 1) & M
        return rsp

    def take_responses(self, max_n: int | None = None) -> list[bytes]:
        """Copy out every response published so far (at most ``max_n``)."""
        rp = self._response_prod()  # one snapshot, then read slots up to it
        rc, out = self.rsp_cons, []
        while rc != rp and (max_n is None or len(out) < max_n):
            out.append(self._copy_slot(rc))
            rc = (rc + 1) & M
            self.rsp_cons = rc
        return out

    def final_check_for_responses(self) -> bool:
        """RING_FINAL_CHECK_FOR_RESPONSES: arm ``rsp_event``; True if more arrived."""
        if self.unconsumed_responses():
            return True
        self._idx[_RSP_EVENT] = (self.rsp_cons + 1) & M
        full_barrier()  # re-read rsp_prod only after the backend can see the arm
        return self.unconsumed_responses() > 0

    def set_rsp_event(self, value: int) -> None:
        """Ask to be notified when ``rsp_prod`` passes ``value`` (batching drivers).

        Re-check for responses afterwards: some may have arrived meanwhile.
        """
        self._idx[_RSP_EVENT] = value & M
        full_barrier()

    def statistics(self) -> RingStatistics:
        req_prod, req_event, rsp_prod, rsp_event = self._header()
        return RingStatistics(
            size=self.size,
            req_prod=req_prod,
            req_event=req_event,
            rsp_prod=rsp_prod,
            rsp_event=rsp_event,
            req_prod_pvt=self.req_prod_pvt,
            rsp_cons=self.rsp_cons,
            halted=self.error is not None,
        )


class BackRing(_Ring):
    """The backend (responding) end: blkback, netback. Never initialises the page.

    ``rsp_prod_pvt`` and ``req_cons`` are this end's private indices.
    """

    __slots__ = ("rsp_prod_pvt", "req_cons")

    def __init__(self, buf: BufferLike, entry_size: int) -> None:
        """BACK_RING_INIT: attach at private indices 0; the header is untouched."""
        super().__init__(buf, entry_size)
        self.rsp_prod_pvt = 0
        self.req_cons = 0

    def attach(self, rsp_prod_pvt: int, req_cons: int) -> None:
        """BACK_RING_ATTACH: resume at given private indices."""
        self.rsp_prod_pvt = rsp_prod_pvt & M
        self.req_cons = req_cons & M

    def unconsumed_requests(self) -> int:
        """RING_HAS_UNCONSUMED_REQUESTS, bounded so a lying frontend cannot inflate it."""
        rc = self.req_cons
        published = (self._idx[_REQ_PROD] - rc) & M
        return min(published, self.size - ((rc - self.rsp_prod_pvt) & M))

    def request_cons_overflow(self, cons: int) -> bool:
        """RING_REQUEST_CONS_OVERFLOW: no free slot would be left for a response."""
        return ((cons - self.rsp_prod_pvt) & M) >= self.size

    def check_request_prod(self, rp: int) -> None:
        """Halt with RingError on RING_REQUEST_PROD_OVERFLOW or a req_prod gone back."""
        self._check_not_halted()
        claimed = (rp - self.rsp_prod_pvt) & M
        if claimed > self.size:
            detail = (
                f"Frontend provided bogus ring requests ({rp} - {self.rsp_prod_pvt} > {self.size})"
            )
            raise self._halt("frontend", "RING_REQUEST_PROD_OVERFLOW", detail)
        if ((self.req_cons - self.rsp_prod_pvt) & M) > claimed:
            # Beyond ring.h: without this, blkback's loop would walk stale slots.
            detail = f"req_prod={rp} moved back behind req_cons={self.req_cons}"
            raise self._halt("frontend", "req_prod went backwards", detail)

    def _request_prod(self) -> int:
        rp = self._idx[_REQ_PROD]  # snapshot once; slots are read only up to it (rmb)
        self.check_request_prod(rp)
        return rp

    def get_request(self) -> bytes:
        """RING_COPY_REQUEST of slot ``req_cons`` into private bytes, then advance."""
        rc = self.req_cons
        if self._request_prod() == rc:
            raise RingError("local", "get_request", "no unconsumed request")
        if self.request_cons_overflow(rc):
            raise RingError("local", "RING_REQUEST_CONS_OVERFLOW", "answer requests first")
        req = self._copy_slot(rc)
        self.req_cons = (rc + 1) & M
        return req

    def take_requests(self, max_n: int | None = None) -> list[bytes]:
        """Linux blkback's loop: snapshot rp, check it, copy each, advance req_cons.

        ``req_cons`` advances before the caller builds any response, and the
        loop stops short of RING_REQUEST_CONS_OVERFLOW. Validate the copies.
        """
        rp = self._request_prod()
        rc, out = self.req_cons, []
        while rc != rp and (max_n is None or len(out) < max_n):
            if self.request_cons_overflow(rc):
                break
            out.append(self._copy_slot(rc))
            rc = (rc + 1) & M
            self.req_cons = rc
        return out

    def peek_requests(self) -> list[bytes]:
        """Copies of the unconsumed requests, not consumed. Hints only (netback
        maps the grefs of posted rx buffers ahead): what is acted on is the copy
        ``take_requests`` makes later, validated then."""
        rc, n = self.req_cons, self.unconsumed_requests()
        return [self._copy_slot((rc + k) & M) for k in range(n)]

    def put_response(self, data: bytes) -> None:
        """Copy a response into slot ``rsp_prod_pvt``; unpublished until pushed."""
        if self.rsp_prod_pvt == self.req_cons:
            raise RingError("local", "put_response", "no consumed request awaits a response")
        self._write_slot(self.rsp_prod_pvt, data, "response size")
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & M

    def push_responses(self) -> bool:
        """RING_PUSH_RESPONSES_AND_CHECK_NOTIFY; True means notify the frontend."""
        return _push_and_check_notify(self._idx, _RSP_PROD, _RSP_EVENT, self.rsp_prod_pvt)

    def final_check_for_requests(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS: arm ``req_event``; True if more arrived."""
        if self.unconsumed_requests() > 0:
            return True
        self._idx[_REQ_EVENT] = (self.req_cons + 1) & M
        full_barrier()  # re-read req_prod only after the frontend can see the arm
        return self.unconsumed_requests() > 0

    def set_req_event(self, value: int) -> None:
        """Ask to be notified when ``req_prod`` passes ``value``; re-check after."""
        self._idx[_REQ_EVENT] = value & M
        full_barrier()

    def statistics(self) -> RingStatistics:
        req_prod, req_event, rsp_prod, rsp_event = self._header()
        return RingStatistics(
            size=self.size,
            req_prod=req_prod,
            req_event=req_event,
            rsp_prod=rsp_prod,
            rsp_event=rsp_event,
            rsp_prod_pvt=self.rsp_prod_pvt,
            req_cons=self.req_cons,
            halted=self.error is not None,
        )
