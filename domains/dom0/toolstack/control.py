"""The toolstack's control socket: what `xenolab xl ...` talks to.

Rules:
1. One ROUTER socket per host; each request is msgpack {"op", "args"} and
   gets one reply {"ok": true, "result"} or {"ok": false, "error": one line}.
2. Requests that wait (console output, a domain booting or going away) are
   parked and answered when their condition holds or their deadline passes;
   the event loop never blocks on a client.
3. Nothing a client sends can raise out of here.
"""

import time
import traceback
from collections.abc import Callable

import msgpack
import zmq

from domains.dom0.toolstack.toolstack import ToolstackError
from domains.dom0.xenstored.perms import XsError
from domains.kernel.hypercall import XenError
from hypervisor.public.endpoints import toolstack_endpoint

MAX_WAIT_MS = 30_000


class Parked:
    def __init__(self, ident: bytes, check: Callable[[bool], object], deadline: int) -> None:
        self.ident, self.check, self.deadline = ident, check, deadline


class ControlServer:
    def __init__(self, dom0, ops: dict[str, Callable]) -> None:
        self.dom0, self.ops = dom0, ops
        self.ctx = zmq.Context(io_threads=1)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(toolstack_endpoint(dom0.kernel.boot["host"]))
        self.parked: list[Parked] = []
        dom0.kernel.add_reader(self.sock, self._on_readable)

    def _on_readable(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 2:
                self._handle(frames[0], frames[1])

    def _handle(self, routing_id: bytes, raw: bytes) -> None:
        ident: tuple = (routing_id, None)  # + the request's id, echoed in the reply
        try:
            req = msgpack.unpackb(raw, raw=False)
            ident = (routing_id, req.get("id"))
            op, args = req["op"], req.get("args") or {}
            fn = self.ops.get(op)
            if fn is None:
                raise ToolstackError(f"unknown operation {op!r}")
            result = fn(**args)
        except (ToolstackError, XsError, XenError, OSError) as exc:
            self.reply(ident, False, str(exc))
            return
        except Exception as exc:  # a bug or a malformed request: answer, don't die
            self.dom0.log("control: " + traceback.format_exc())
            self.reply(ident, False, f"bad request: {exc.__class__.__name__}: {exc}")
            return
        if isinstance(result, Wait):
            self.park(ident, result)
        else:
            self.reply(ident, True, result)

    def reply(self, ident: tuple, ok: bool, payload) -> None:
        """`ident` is (routing id, request id): a client that sent a request
        again (Domain-0 restarted) tells the replies apart by the id."""
        routing_id, rid = ident
        msg = {"ok": ok, "result" if ok else "error": payload}
        if isinstance(rid, int):
            msg["id"] = rid
        self.sock.send_multipart([routing_id, msgpack.packb(msg)])

    def park(self, ident: tuple, wait: "Wait") -> None:
        deadline = time.monotonic_ns() + min(wait.timeout_ms, MAX_WAIT_MS) * 1_000_000
        p = Parked(ident, wait.check, deadline)
        if not self._try(p, False):
            self.parked.append(p)
            self.dom0.kernel.call_at(deadline, self.recheck)

    def _try(self, p: Parked, expired: bool) -> bool:
        try:
            result = p.check(expired)
        except (ToolstackError, XsError, XenError, OSError) as exc:
            self.reply(p.ident, False, str(exc))
            return True
        if result is None:
            return False
        self.reply(p.ident, True, result)
        return True

    def recheck(self) -> None:
        now = time.monotonic_ns()
        self.parked = [p for p in self.parked if not self._try(p, now >= p.deadline)]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class Wait:
    """Returned by an op that answers later: check(expired) gives the result
    or None to keep waiting (it must give a result when expired)."""

    def __init__(self, check: Callable[[bool], object], timeout_ms: int) -> None:
        self.check, self.timeout_ms = check, int(timeout_ms)
