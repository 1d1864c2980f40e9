"""The hypercall client: a domain's trap into Xen, over ZeroMQ.

Rules:
1. One DEALER socket whose routing id is the domain's secret (its identity).
2. `call` sends one request and waits for the reply with the same seq.
   Meanwhile an UPCALL sets `upcall`, and the reply to an outstanding
   SCHEDOP_block (sent with `block_async`) clears `block_seq` and also counts
   as an upcall: to a blocked domain the wake-up *is* that reply.
3. A negative rc is a Xen errno; `check` turns it into XenError for drivers.
"""

import time

import zmq

from hypervisor.public import envelope
from hypervisor.public.xen import Errno, Hypercall, SchedOp

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class XenError(OSError):
    def __init__(self, rc: int, what: str = "") -> None:
        try:
            name = Errno(-rc).name
        except ValueError:
            name = str(rc)
        super().__init__(-rc, f"{what}: {name}" if what else name)
        self.rc = rc


class HypercallClient:
    def __init__(self, endpoint: str, secret: bytes) -> None:
        self.ctx = zmq.Context(io_threads=1)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, secret)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.seq = 0
        self.block_seq: int | None = None
        self.upcall = False
        self.counts: dict[tuple[int, int], int] = {}
        self.posted: list[list] = []
        self.posted_ns = 0  # when the oldest posted call was queued
        self.traps = 0  # messages to Xen (a multicall is one trap)

    def _send(self, hypercall: int, cmd: int, args) -> int:
        """Trap, carrying any posted calls along in one multicall."""
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        key = (hypercall, cmd)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.posted:
            self.posted.append([hypercall, cmd, args])
            hypercall, cmd, args = Hypercall.multicall, 0, self.posted
            self.posted = []
        self.traps += 1
        self.sock.send(envelope.encode_request(self.seq, hypercall, cmd, args))
        return self.seq

    def _accept(self, frame: bytes):
        kind, seq, rc, out = envelope.decode_from_xen(frame)
        if kind == envelope.UPCALL:
            self.upcall = True
            return None
        if seq == self.block_seq:
            self.block_seq = None
            self.upcall = True
            return None
        return seq, rc, out

    def call(self, hypercall: int, cmd: int = 0, args=None):
        """Trap into Xen; returns (rc, out)."""
        seq = self._send(hypercall, cmd, args)
        while True:
            got = self._accept(self.sock.recv())
            if got is not None and got[0] == seq:
                return got[1], got[2]

    def check(self, hypercall: int, cmd: int = 0, args=None, what: str = ""):
        rc, out = self.call(hypercall, cmd, args)
        if rc < 0:
            raise XenError(rc, what or f"hypercall {hypercall}/{cmd}")
        return rc, out

    def send_only(self, hypercall: int, cmd: int = 0, args=None) -> None:
        """For calls that never return (SCHEDOP_shutdown)."""
        self._send(hypercall, cmd, args)

    def post(self, hypercall: int, cmd: int, args) -> None:
        """A posted trap whose result nobody reads (envelope rule 3). It is
        batched: it goes with the next trap, or at `flush()` (the event loop
        flushes before it sleeps), like Linux's multicall batches."""
        key = (hypercall, cmd)
        self.counts[key] = self.counts.get(key, 0) + 1
        if not self.posted:
            self.posted_ns = time.monotonic_ns()
        self.posted.append([hypercall, cmd, args])

    def flush(self) -> None:
        """Send posted calls now (one multicall if several)."""
        if not self.posted:
            return
        calls, self.posted = self.posted, []
        self.traps += 1
        if len(calls) == 1:
            self.sock.send(envelope.encode_request(envelope.POSTED, *calls[0]))
        else:
            self.sock.send(envelope.encode_request(envelope.POSTED, Hypercall.multicall, 0,
                                                   calls))

    def block_async(self) -> None:
        """SCHEDOP_block without waiting: the reply arrives as the wake-up."""
        if self.block_seq is None:
            self.block_seq = self._send(Hypercall.sched_op, SchedOp.block, None)

    def drain(self) -> None:
        """Take every message already queued from Xen (non-blocking)."""
        sock = self.sock
        while sock.get(_EVENTS) & _POLLIN:
            self._accept(sock.recv())

    def wait(self) -> None:
        """Sleep until Xen says something (the domain is blocked). The event
        loop drains the rest next turn: each ZMQ_EVENTS check is a system
        call, so it is made once per turn, not twice."""
        self._accept(self.sock.recv())

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def errno_name(rc: int) -> str:
    try:
        return Errno(-rc).name
    except ValueError:
        return str(rc)
