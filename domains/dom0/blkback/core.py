"""blkback's sans-IO core: one frontend's ring in, I/O plans and responses out.

Rules (xen-interfaces.md 1.7, 2.1-2.3; Linux ``xen-blkback/blkback.c``):

1. Who writes what. The frontend writes requests and ``req_prod``; this core
   writes responses, ``rsp_prod`` and ``req_event`` through its ``BackRing``.
   It never re-initialises the ring.
2. Copy, then validate (XSA-155). ``BackRing.take_requests`` copies each slot
   into private bytes once and advances ``req_cons`` before any response;
   the core decodes that copy once and ``vbd.check_request`` judges every
   field of the decoded copy (BLKIF_RSP_ERROR or BLKIF_RSP_EOPNOTSUPP on a
   refusal). Shared memory is never read twice.
3. Bogus ring indices (RING_REQUEST_PROD_OVERFLOW, ``req_prod`` gone back)
   are a frontend that lies: every later result carries ``disconnect`` (the
   ``RingError``); no exception escapes and nothing more is read from or
   written to that ring. The adapter drains in-flight I/O, calls
   ``shutdown()`` and switches the device to Closing (xenbus FATAL).
4. Grants. The core decides, the injected ``GrantMapper`` does the
   GNTTABOP_map/unmap_grant_ref batches: one ``map`` call for all segments
   of a batch that are not cached, one ``unmap`` call per public call. A
   failed map (an int GNTST code) answers BLKIF_RSP_ERROR. Without persistent
   grants a WRITE's pages are mapped read-only (the backend only reads them);
   persistent mappings are writable and live in ``PersistentGrants``.
   Mappings are unmapped before the response that ends them is written, so
   the frontend can end access as soon as it sees the response.
5. Ordering. WRITE_BARRIER waits until every earlier request completed and
   holds every later one until it completes; FLUSH_DISKCACHE waits for the
   earlier ones only. Everything else is issued at once, in ring order.
6. Output. ``poll()`` (on an event from the frontend) and ``complete()`` (on
   a device completion) return a ``BlkbackOutput``: the plans to hand to the
   device now, whether to notify the frontend (the responses are already
   pushed), and ``disconnect``. ``complete()`` re-polls the ring, because a
   ring-full of unanswered requests stops ``take_requests``
   (RING_REQUEST_CONS_OVERFLOW) and no new event would come.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from domains.dom0.blkback.persistent import PersistentGrants
from domains.dom0.blkback.vbd import DiskFlags, DiskOp, VbdConfig, check_request, disk_op
from domains.kernel.ring import BackRing, RingError
from hypervisor.public.blkif import (
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_NAMES,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    BlkifError,
    BlkifRequest,
    BlkifResponse,
)


class GrantMapper(Protocol):
    """The adapter's grant operations for one frontend domain.

    ``map`` takes (gref, readonly) pairs and returns, in order, a mapping
    object (never an ``int``; the device finds the page through it) or an int
    GNTST failure code; ``domains.kernel.gnttab.map_grants`` has this shape.
    ``unmap`` unmaps mappings ``map`` returned.
    """

    def map(self, refs: Sequence[tuple[int, bool]]) -> Sequence[object]: ...

    def unmap(self, mappings: Sequence[object]) -> None: ...


@dataclass(frozen=True, slots=True)
class PlanSegment:
    """One segment of a plan: sectors first..last of the page behind ``mapping``."""

    gref: int
    first_sect: int
    last_sect: int
    mapping: object


@dataclass(frozen=True, slots=True)
class IoPlan:
    """One device I/O: ``nr_sectors`` from ``sector``, laid over ``segments`` in order."""

    tag: int  # pass back to complete()
    id: int  # the frontend's request id
    operation: int  # BLKIF_OP_* as requested
    disk_op: DiskOp
    flags: DiskFlags
    sector: int
    nr_sectors: int
    segments: tuple[PlanSegment, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A request answered without device I/O, and why (for logs and traces)."""

    id: int
    operation: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class BlkbackOutput:
    plans: tuple[IoPlan, ...] = ()  # hand these to the device now
    notify: bool = False  # send an event to the frontend
    disconnect: RingError | None = None  # the frontend lied: disconnect it
    rejected: tuple[Rejected, ...] = ()


@dataclass(frozen=True, slots=True)
class BlkbackStatistics:
    requests: int
    responses: int
    errors: int
    eopnotsupp: int
    by_op: dict[str, int]
    grant_maps: int
    grant_unmaps: int
    persistent_hits: int
    persistent_grants: int
    in_flight: int
    disconnected: bool


@dataclass(slots=True, eq=False)
class _Pending:
    """A validated request on its way to the device."""

    tag: int
    req: BlkifRequest
    maps: list[object | None] = field(default_factory=list)
    cached: list[bool] = field(default_factory=list)  # segment i's mapping is persistent
    failed: bool = False
    plan: IoPlan | None = None

    @property
    def drains(self) -> bool:
        return self.req.operation in (BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE)

    @property
    def barrier(self) -> bool:
        return self.req.operation == BLKIF_OP_WRITE_BARRIER


class BlkbackCore:
    """blkback for one frontend's ring (Linux ``xen_blkif_ring``), without I/O."""

    def __init__(self, ring: BackRing, vbd: VbdConfig, mapper: GrantMapper, *,
                 persistent: bool = False) -> None:  # fmt: skip
        """``persistent``: both ends agreed on feature-persistent at connect."""
        self.ring, self.vbd, self.mapper = ring, vbd, mapper
        self.grants = (
            PersistentGrants(vbd.max_persistent_grants)
            if persistent and vbd.feature_persistent else None
        )  # fmt: skip
        self.error: RingError | None = None
        self.closed = False
        self._tag = 0
        self._queue: deque[_Pending] = deque()  # validated and mapped, not yet issued
        self._issued: dict[int, _Pending] = {}  # handed to the device
        self._barriers = 0  # barriers among _issued
        self._unmap: list[object] = []
        self._responses: list[BlkifResponse] = []
        self._rejected: list[Rejected] = []
        self._by_op: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()

    # -- public --------------------------------------------------------------

    def poll(self) -> BlkbackOutput:
        """The frontend notified us (or we are starting): take and dispatch requests."""
        return self._finish(self._drain())

    def complete(self, tag: int, status: int = BLKIF_RSP_OKAY) -> BlkbackOutput:
        """The device finished plan ``tag`` with a BLKIF_RSP_* status."""
        return self.complete_all([(tag, status)])

    def complete_all(self, results: Iterable[tuple[int, int]]) -> BlkbackOutput:
        """Several completions (one interrupt), answered with one push."""
        for tag, status in results:
            p = self._issued.pop(tag, None)
            if p is None:
                raise ValueError(f"plan {tag} is not in flight")
            self._barriers -= p.barrier
            self._retire(p)
            self._respond(p.req, status)
        return self._finish(self._drain())

    def in_flight(self) -> int:
        """Plans handed to the device and not yet completed."""
        return len(self._issued)

    def shutdown(self) -> bool:
        """xen_blkif_disconnect: False while the device still holds plans (retry later).

        Otherwise drop the plans not yet issued and unmap every grant, including
        the persistent ones; the core is closed for good.
        """
        if self._issued:
            return False
        for p in self._queue:
            self._retire(p)
        self._queue.clear()
        if self.grants is not None:
            self._unmap += self.grants.clear()
        self.closed = True
        self._responses.clear()
        self._flush_unmaps()
        return True

    def statistics(self) -> BlkbackStatistics:
        c = self._counts
        return BlkbackStatistics(
            requests=c["requests"], responses=c["responses"], errors=c["errors"],
            eopnotsupp=c["eopnotsupp"], by_op=dict(self._by_op),
            grant_maps=c["grant_maps"], grant_unmaps=c["grant_unmaps"],
            persistent_hits=c["persistent_hits"],
            persistent_grants=len(self.grants) if self.grants is not None else 0,
            in_flight=len(self._issued), disconnected=self.error is not None,
        )  # fmt: skip

    # -- the ring ----------------------------------------------------------

    def _drain(self) -> list[IoPlan]:
        """Linux's do_block_io_op loop: take, dispatch, final check, repeat."""
        while self.error is None and not self.closed:
            try:
                raws = self.ring.take_requests()
            except RingError as err:
                self.error = err  # bogus indices: read nothing more from this ring
                break
            self._accept(raws)
            if not raws and not self.ring.final_check_for_requests():
                break
        return self._release()

    def _accept(self, raws: list[bytes]) -> None:
        pending = [p for p in map(self._admit, raws) if p is not None]
        self._map(pending)
        for p in pending:
            if p.failed:
                self._retire(p)
                self._reject(p.req, BLKIF_RSP_ERROR, "grant map failed")
            else:
                p.plan = self._plan(p)
                self._queue.append(p)

    def _admit(self, raw: bytes) -> _Pending | None:
        """Decode the private copy once, then validate only the decoded copy."""
        self._counts["requests"] += 1
        try:
            req = BlkifRequest.unpack(raw)
        except BlkifError:  # only a short slot, which a blkif ring never yields
            return None
        self._by_op[BLKIF_OP_NAMES.get(req.operation, str(req.operation))] += 1
        refusal = check_request(req, self.vbd)
        if refusal is not None:
            self._reject(req, *refusal)
            return None
        self._tag += 1
        n = len(req.segments)
        return _Pending(self._tag, req, [None] * n, [False] * n)

    # -- grants --------------------------------------------------------------

    def _map(self, pending: list[_Pending]) -> None:
        """Persistent hits first; one mapper.map call for everything else."""
        wanted: list[tuple[int, bool]] = []
        where: list[tuple[_Pending, int]] = []
        for p in pending:
            readonly = self.grants is None and p.req.operation != BLKIF_OP_READ
            for i, seg in enumerate(p.req.segments):
                hit = self.grants.get(seg.gref) if self.grants is not None else None
                if hit is not None:
                    p.maps[i], p.cached[i] = hit, True
                    self._counts["persistent_hits"] += 1
                else:
                    wanted.append((seg.gref, readonly))
                    where.append((p, i))
        if wanted:
            self._install(wanted, where, self.mapper.map(wanted))

    def _install(self, wanted: list[tuple[int, bool]], where: list[tuple[_Pending, int]],
                 results: Sequence[object]) -> None:  # fmt: skip
        self._counts["grant_maps"] += len(wanted)
        for (p, i), (gref, _), res in zip(where, wanted, results, strict=True):
            if isinstance(res, int):
                p.failed = True  # GNTST code: a grant the frontend does not own or revoked
                continue
            p.maps[i] = res
            p.cached[i] = self.grants is not None and self.grants.add(gref, res)
        if self.grants is not None:
            self._unmap += self.grants.take_evicted()

    def _retire(self, p: _Pending) -> None:
        """Let go of a request's mappings: persistent ones stay cached."""
        for seg, m, cached in zip(p.req.segments, p.maps, p.cached, strict=True):
            if cached and self.grants is not None:
                self.grants.put(seg.gref)
            elif m is not None:
                self._unmap.append(m)
        p.maps = [None] * len(p.maps)

    def _flush_unmaps(self) -> None:
        if self._unmap:
            batch, self._unmap = self._unmap, []
            self._counts["grant_unmaps"] += len(batch)
            self.mapper.unmap(batch)

    # -- plans, ordering and responses --------------------------------------

    def _plan(self, p: _Pending) -> IoPlan:
        req = p.req
        segs = tuple(PlanSegment(s.gref, s.first_sect, s.last_sect, m)
                     for s, m in zip(req.segments, p.maps, strict=True))  # fmt: skip
        op, flags = disk_op(req, bool(segs))
        n = req.nr_sectors if op is DiskOp.DISCARD else sum(s.nr_sectors for s in req.segments)
        return IoPlan(p.tag, req.id, req.operation, op, flags, req.sector_number, n, segs)

    def _release(self) -> list[IoPlan]:
        """Issue queued plans in ring order, as far as barriers and flushes allow."""
        ready: list[IoPlan] = []
        held: deque[_Pending] = deque()
        if self.error is not None:
            return ready  # disconnecting: what is queued is dropped by shutdown()
        for p in self._queue:
            if p.plan is not None and self._may_issue(p, held):
                self._issued[p.tag] = p
                self._barriers += p.barrier
                ready.append(p.plan)
            else:
                held.append(p)
        self._queue = held
        return ready

    def _may_issue(self, p: _Pending, held: deque[_Pending]) -> bool:
        if self._barriers or any(q.barrier for q in held):
            return False  # nothing passes an unfinished barrier
        if p.drains:  # every earlier request must have completed
            return not held and all(t > p.tag for t in self._issued)
        return True

    def _reject(self, req: BlkifRequest, status: int, reason: str) -> None:
        self._rejected.append(Rejected(req.id, req.operation, status, reason))
        self._respond(req, status)

    def _respond(self, req: BlkifRequest, status: int) -> None:
        # Only 0/-1/-2 exist on the wire; the device's other failures are errors.
        if status not in (BLKIF_RSP_OKAY, BLKIF_RSP_EOPNOTSUPP):
            status = BLKIF_RSP_ERROR
        self._counts["errors"] += status == BLKIF_RSP_ERROR
        self._counts["eopnotsupp"] += status == BLKIF_RSP_EOPNOTSUPP
        self._responses.append(BlkifResponse(req.id, req.operation, status))

    def _finish(self, plans: list[IoPlan]) -> BlkbackOutput:
        """Unmap, then write and push the responses (the frontend may end access at once)."""
        self._flush_unmaps()
        responses, self._responses = self._responses, []
        rejected, self._rejected = tuple(self._rejected), []
        notify = False
        if responses and self.error is None and not self.closed:
            for rsp in responses:
                self.ring.put_response(rsp.pack())
            self._counts["responses"] += len(responses)
            notify = self.ring.push_responses()
        return BlkbackOutput(tuple(plans), notify, self.error, rejected)
