"""blkfront's sans-IO core: block I/O in, ring requests out; responses in, completions out.

Rules (xen-interfaces.md 1.5, 1.7, 2.2-2.6; Linux ``xen-blkfront.c``):

1. Who writes what. This core writes requests and ``req_prod`` (only in
   ``push()``) and ``rsp_event`` (the final check in ``handle_responses()``);
   the backend writes responses and ``rsp_prod``.
2. Shadows. Every in-flight request has a shadow entry indexed by its ``id``
   (0..RING_SIZE-1): state WAITING, the request as sent, its grants and data
   pages. A request is built whole in private memory, then copied into its
   slot in one go.
3. Batching. ``submit()`` only fills slots; ``push()`` publishes them all and
   says whether to notify the backend. ``handle_responses()`` refills free
   slots from the queue but does not publish: call ``push()`` after it.
4. Grants go through the injected ``Granter``. Without persistent grants
   each data page is granted for its request (read-only for writes) and the
   grant ends when the response arrives. With ``feature-persistent`` a pool
   of writable granted pages is reused: writes copy data in before the
   request, reads copy it out after the response; grants outlive requests.
5. Responses are copied out of the ring once and validated (the frontend
   mirror of XSA-155): ``rsp_prod`` within a ring of ``rsp_cons`` (ring.py),
   id below RING_SIZE, shadow WAITING, operation as sent, and each transient
   grant no longer mapped by the backend (Linux: "backend has not unmapped
   grant"). A violation puts the device in ERROR: nothing more is read until
   a reconnect, and ``error`` (a RingError, culprit "backend") says why.
6. Recovery (2.6). ``suspend()`` (xenbus FREE_RING) parks every in-flight
   request and ends its grants (grants the old backend still maps are retried
   later); ``connect()`` on a new ring re-issues the parked requests first, in
   their original order, with new ids and grants. Requests whose responses
   were consumed are never repeated; a re-issued write writes the same data
   to the same sectors again, which no filesystem can tell apart. If the
   device is removed instead, ``abandon()`` fails the parked I/O with
   BLKIF_RSP_ERROR.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from domains.kernel.ring import FrontRing, RingError
from domains.xenolinux.blkfront_io import (
    BackendFeatures,
    BlockIo,
    Completion,
    Granter,
    IoPart,
    PageAllocator,
    PageSpan,
    check_io,
    span,
    split_io,
)
from hypervisor.public.blkif import (
    BLKIF_DISCARD_SECURE,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    BlkifError,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
)

# The feature Linux turns off when the backend answers EOPNOTSUPP.
_FEATURE_OF = {
    BLKIF_OP_FLUSH_DISKCACHE: "feature_flush_cache",
    BLKIF_OP_WRITE_BARRIER: "feature_barrier",
    BLKIF_OP_DISCARD: "feature_discard",
}


class BlkifState(enum.Enum):
    """Linux ``BLKIF_STATE_*``."""

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    SUSPENDED = "suspended"
    ERROR = "error"


class ShadowState(enum.Enum):
    FREE = "free"
    WAITING = "waiting"


@dataclass(slots=True, eq=False)
class PoolPage:
    """A persistently granted page of the pool."""

    gref: int
    pfn: int
    page: memoryview


@dataclass(slots=True)
class Shadow:
    """Linux ``struct blk_shadow``: the private copy of one in-flight request."""

    state: ShadowState = ShadowState.FREE
    request: BlkifRequest | None = None
    part: IoPart | None = None
    grefs: list[int] = field(default_factory=list)  # transient grants to end
    pool: list[PoolPage] = field(default_factory=list)  # persistent pages lent, per segment


@dataclass(frozen=True, slots=True)
class BlkfrontStatistics:
    state: BlkifState
    requests: int  # ring requests put
    responses: int
    errors: int  # responses with a status other than OKAY
    in_flight: int
    queued: int
    pushes: int
    notifications: int  # pushes that had to notify the backend
    grants: int  # Granter.grant calls
    end_access: int
    persistent_pages: int
    reissued: int


class BlkfrontCore:
    """blkfront for one virtual block device (Linux ``blkfront_info``, one ring)."""

    def __init__(self, granter: Granter, pages: PageAllocator, *, handle: int,
                 want_persistent: bool = True) -> None:  # fmt: skip
        """``handle`` is the devid (xvda: 51712), sent in every request."""
        self.granter, self.pages, self.handle = granter, pages, handle
        self.want_persistent = want_persistent  # what we write as feature-persistent
        self.on_issue: Callable[[int, BlockIo], None] | None = None  # (id, io) when traced
        self.state = BlkifState.DISCONNECTED
        self.error: RingError | None = None
        self.ring: FrontRing | None = None
        self.features: BackendFeatures | None = None
        self.persistent = False  # both ends agreed
        self.shadow: list[Shadow] = []
        self._free_ids: list[int] = []
        self._queue: deque[IoPart] = deque()
        self._seq = 0
        self._parked: list[BlockIo] = []
        self._pool: list[PoolPage] = []  # granted pages not lent to a request
        self._pool_size = 0
        self._deferred: list[tuple[int, int | None]] = []  # (gref, pool pfn) still mapped
        self._counts: Counter[str] = Counter()

    # -- connection ----------------------------------------------------------

    def connect(self, ring: FrontRing, features: BackendFeatures) -> list[BlockIo]:
        """blkfront_connect / blkif_recover on a fresh ring; returns the re-issued I/O."""
        if self.state not in (BlkifState.DISCONNECTED, BlkifState.SUSPENDED):
            raise ValueError(f"connect() while {self.state.value}: suspend() first")
        self.ring, self.features = ring, features
        self.persistent = self.want_persistent and features.feature_persistent
        self.shadow = [Shadow() for _ in range(ring.size)]
        self._free_ids = list(range(ring.size - 1, -1, -1))  # pop() hands out 0 first
        self.state, self.error = BlkifState.CONNECTED, None
        self._retry_deferred()
        reissued, self._parked = self._parked, []
        self._counts["reissued"] += len(reissued)
        self._fill()
        return reissued

    def suspend(self) -> None:
        """blkif_free(suspend): park in-flight requests, end their grants, drop the ring."""
        waiting = [sh for sh in self.shadow if sh.state is ShadowState.WAITING]
        parked = sorted((sh.part for sh in waiting if sh.part), key=lambda p: p.seq)
        for sh in waiting:
            self._release(sh)
            self._defer(sh.grefs)
            sh.grefs = []
        owners = dict.fromkeys(p.owner.io for p in parked)  # ordered, unique
        self._parked = [io for io in self._parked if io not in owners] + list(owners)
        self._queue.extendleft(reversed(parked))  # ahead of anything queued later
        for pp in self._pool:
            if not self._end(pp.gref, pp.pfn):
                self._deferred.append((pp.gref, pp.pfn))
        self._pool, self._pool_size = [], 0
        self.shadow, self._free_ids, self.ring = [], [], None
        self.state = BlkifState.SUSPENDED

    def abandon(self) -> list[Completion]:
        """The device is going away for good (hot-detach after FREE_RING): fail all I/O.

        Every parked or queued block I/O completes with BLKIF_RSP_ERROR, as Linux
        ends a removed disk's requests with an I/O error. Call while suspended.
        """
        if self.state is BlkifState.CONNECTED:
            raise ValueError("abandon() while connected: suspend() first")
        owners = dict.fromkeys(part.owner for part in self._queue)
        self._queue.clear()
        self._parked = []
        return [Completion(owner.io, BLKIF_RSP_ERROR) for owner in owners]

    def requests_to_reissue(self) -> list[BlockIo]:
        """The I/O parked by suspend() that the next connect() re-issues, oldest first."""
        return list(self._parked)

    # -- requests --------------------------------------------------------------

    def submit(self, io: BlockIo) -> None:
        """Queue a block I/O; fill free slots now if connected (publish with push())."""
        check_io(io)
        parts = split_io(io, self._seq)
        self._seq += len(parts)
        self._queue.extend(parts)
        if self.state is BlkifState.CONNECTED:
            self._fill()

    def push(self) -> bool:
        """RING_PUSH_REQUESTS_AND_CHECK_NOTIFY; True means notify the backend."""
        if self.state is not BlkifState.CONNECTED or self.ring is None:
            return False
        notify = self.ring.push_requests()
        self._counts["pushes"] += 1
        self._counts["notifications"] += notify
        return notify

    def _fill(self) -> None:
        ring = self.ring
        while self._queue and self._free_ids and ring is not None and not ring.full():
            self._issue(ring, self._queue.popleft(), self._free_ids.pop())

    def _issue(self, ring: FrontRing, part: IoPart, id_: int) -> None:
        """Build the request in the shadow, then copy it into the slot whole."""
        sh, io = self.shadow[id_], part.owner.io
        op = self._wire_op(io.operation)
        segs = tuple(BlkifSegment(self._grant(sh, pg, op), pg[2], pg[3]) for pg in part.pages)
        if op == BLKIF_OP_DISCARD:
            flag = BLKIF_DISCARD_SECURE if io.secure else 0
            req = BlkifRequest(op, id_, part.sector, self.handle, flag=flag,
                               nr_sectors=io.nr_sectors)  # fmt: skip
        else:
            req = BlkifRequest(op, id_, part.sector, self.handle, len(segs), segs)
        sh.state, sh.request, sh.part = ShadowState.WAITING, req, part
        ring.put_request(req.pack())
        self._counts["requests"] += 1
        if self.on_issue is not None:
            self.on_issue(id_, io)  # the adapter's trace hook

    def _wire_op(self, op: int) -> int:
        f = self.features
        if op == BLKIF_OP_FLUSH_DISKCACHE and f and not f.feature_flush_cache and f.feature_barrier:
            return BLKIF_OP_WRITE_BARRIER  # an older backend offers only barriers
        return op

    def _grant(self, sh: Shadow, pg: PageSpan, op: int) -> int:
        if not self.persistent:
            gref = self.granter.grant(pg[0], op != BLKIF_OP_READ)  # backend only reads writes
            self._counts["grants"] += 1
            sh.grefs.append(gref)
            return gref
        pp = self._pool.pop() if self._pool else self._grow_pool()
        if op != BLKIF_OP_READ:
            pp.page[span(pg)] = pg[1][span(pg)]
        sh.pool.append(pp)
        return pp.gref

    def _grow_pool(self) -> PoolPage:
        pfn, page = self.pages.alloc()
        self._counts["grants"] += 1
        self._pool_size += 1
        return PoolPage(self.granter.grant(pfn, False), pfn, page)  # writable: reads reuse it

    # -- responses ---------------------------------------------------------------

    def handle_responses(self) -> list[Completion]:
        """blkif_interrupt: consume, validate, complete; refill slots (then push())."""
        done: list[Completion] = []
        ring = self.ring
        while self.state is BlkifState.CONNECTED and ring is not None:
            try:
                raws = ring.take_responses()
                for raw in raws:
                    self._complete(raw, done)
                more = bool(raws) or ring.final_check_for_responses()
            except RingError as err:
                self.error, self.state = err, BlkifState.ERROR
                break
            if not more:
                break
        if self.state is BlkifState.CONNECTED:
            self._fill()
        return done

    def _complete(self, raw: bytes, done: list[Completion]) -> None:
        rsp, sh = self._validate(raw)
        part, req = sh.part, sh.request
        assert part is not None and req is not None
        still_mapped = [g for g in sh.grefs if not self._end(g, None)]
        if still_mapped:
            sh.grefs = still_mapped  # the shadow stays WAITING: suspend() parks it
            raise RingError("backend", "backend has not unmapped grant", f"grefs {still_mapped}")
        if rsp.status == BLKIF_RSP_OKAY and req.operation == BLKIF_OP_READ and sh.pool:
            for pg, pp in zip(part.pages, sh.pool, strict=True):
                pg[1][span(pg)] = pp.page[span(pg)]  # out of the persistent page
        sh.grefs = []
        self._release(sh)
        self._free_ids.append(req.id)
        self._account(req.operation, rsp.status)
        self._finish_part(part, rsp.status, done, req.id)

    def _validate(self, raw: bytes) -> tuple[BlkifResponse, Shadow]:
        """Reference 1.7: id in range, shadow WAITING, operation as sent."""
        try:
            rsp = BlkifResponse.unpack(raw)
        except BlkifError as exc:
            raise RingError("backend", "blkif_response", str(exc)) from None
        if rsp.id >= len(self.shadow):
            raise RingError("backend", "response id", f"id {rsp.id} >= {len(self.shadow)}")
        sh = self.shadow[rsp.id]
        if sh.state is not ShadowState.WAITING or sh.request is None:
            raise RingError("backend", "response id", f"id {rsp.id} is not in flight")
        if rsp.operation != sh.request.operation:
            detail = f"id {rsp.id}: operation {rsp.operation}, sent {sh.request.operation}"
            raise RingError("backend", "response operation", detail)
        return rsp, sh

    def _finish_part(self, part: IoPart, status: int, done: list[Completion],
                     req_id: int = -1) -> None:
        owner = part.owner
        if status != BLKIF_RSP_OKAY and owner.status == BLKIF_RSP_OKAY:
            owner.status = status
        owner.left -= 1
        if owner.left == 0:
            done.append(Completion(owner.io, owner.status, req_id))

    def _account(self, op: int, status: int) -> None:
        self._counts["responses"] += 1
        self._counts["errors"] += status != BLKIF_RSP_OKAY
        feature = _FEATURE_OF.get(op)
        if status == BLKIF_RSP_EOPNOTSUPP and feature and self.features is not None:
            self.features = dataclasses.replace(self.features, **{feature: False})

    # -- grants ----------------------------------------------------------------------

    def _release(self, sh: Shadow) -> None:
        """Free a shadow: its pool pages go back to the pool; grefs are the caller's."""
        self._pool.extend(sh.pool)
        sh.pool, sh.request, sh.part = [], None, None
        sh.state = ShadowState.FREE

    def _end(self, gref: int, pool_pfn: int | None) -> bool:
        self._counts["end_access"] += 1
        if not self.granter.end_access(gref):
            return False
        if pool_pfn is not None:
            self.pages.free(pool_pfn)
        return True

    def _defer(self, grefs: list[int]) -> None:
        self._deferred.extend((g, None) for g in grefs if not self._end(g, None))

    def _retry_deferred(self) -> None:
        """End grants a previous backend still mapped at suspend (it may be gone now)."""
        pending, self._deferred = self._deferred, []
        for gref, pfn in pending:
            if not self._end(gref, pfn):
                self._deferred.append((gref, pfn))

    # -- introspection -------------------------------------------------------------

    def in_flight(self) -> int:
        return sum(1 for sh in self.shadow if sh.state is ShadowState.WAITING)

    def grants_still_mapped(self) -> int:
        """Grants ended while the backend still mapped them, retried at connect()."""
        return len(self._deferred)

    def statistics(self) -> BlkfrontStatistics:
        c = self._counts
        return BlkfrontStatistics(
            state=self.state, requests=c["requests"], responses=c["responses"],
            errors=c["errors"], in_flight=self.in_flight(), queued=len(self._queue),
            pushes=c["pushes"], notifications=c["notifications"], grants=c["grants"],
            end_access=c["end_access"], persistent_pages=self._pool_size,
            reissued=c["reissued"],
        )  # fmt: skip
