"""The guest's xenstore client (xenbus) over its ring page and event channel.

Rules:
1. Requests are written into the req byte stream and the port is notified
   after every update; replies and watch events come back on rsp.
2. Calls are synchronous: while waiting for a reply the kernel uses
   SCHEDOP_poll on the xenstore port only, so other events stay pending for
   the main loop. Watch events that arrive meanwhile are queued and run
   from the main loop, never inside a call.
3. Replies are matched by req_id; an ERROR reply raises XenbusError.
4. Reconnection (xen-interfaces 7.3). When xenstored writes `connection` =
   XENSTORE_RESTARTED (a model value: it was restarted with Domain-0 and
   lost what it had read) we ask for Xen's reconnection: write
   XENSTORE_RECONNECT, notify, and touch neither stream until xenstored
   writes XENSTORE_CONNECTED. Then we drop what is left in rsp[] and any
   partial reply, send every request still waiting for its reply again
   (one inside a transaction fails with EAGAIN instead: transactions do not
   survive, and their callers retry them), and register every watch again,
   which fires each once (Linux's xs_resume). Callers see a stall.
"""

from collections.abc import Callable

from domains.kernel.bytering import XenstoreControl, xenstore_guest
from hypervisor.public.xen import Hypercall, SchedOp
from hypervisor.public.xs_wire import (
    XENSTORE_CONNECTED,
    XENSTORE_RECONNECT,
    XENSTORE_RESTARTED,
    MessageParser,
    XsMsg,
    pack_msg,
)
from hypervisor.public.xs_wire import XsdSockmsgType as T

WatchCallback = Callable[[str, str], None]


class XenbusError(OSError):
    def __init__(self, name: str, what: str) -> None:
        super().__init__(f"{what}: {name}")
        self.name = name


class XenbusClient:
    def __init__(self, kernel, page, port: int) -> None:
        self.kernel, self.port = kernel, port
        self.req, self.rsp = xenstore_guest(page)
        self.ctl = XenstoreControl(page)
        self.parser = MessageParser()
        self.req_id = 0
        self.replies: dict[int, XsMsg] = {}
        self.waiting: dict[int, bytes] = {}  # req_id -> the request, until its reply
        self.watches: dict[str, WatchCallback] = {}
        self.watch_paths: dict[str, str] = {}  # token -> path, to register again
        self.ignored: set[int] = set()  # req_ids of re-registrations: replies dropped
        self.reconnecting = False
        self.reconnects = 0
        self.out = b""
        kernel.evtchn.on(port, lambda _p: self._pump())

    # ---- transport -----------------------------------------------------

    def _reconnect(self) -> bool:
        """Rule 4; True while the streams must not be touched."""
        state = self.ctl.connection
        if state == XENSTORE_RESTARTED and not self.reconnecting:
            self.reconnecting = True
            self.ctl.connection = XENSTORE_RECONNECT
            self.kernel.evtchn.notify(self.port)
            return True
        if not self.reconnecting:
            return False
        if state != XENSTORE_CONNECTED:
            return True
        self.reconnecting = False
        self.reconnects += 1
        self.rsp.discard()
        self.parser = MessageParser()
        self.out = b""
        for rid, raw in self.waiting.items():
            if int.from_bytes(raw[8:12], "little"):  # its tx_id: the transaction is gone
                self.replies[rid] = XsMsg(T.ERROR, rid, 0, b"EAGAIN\0")
            else:
                self.out += raw
        for token, path in self.watch_paths.items():
            self.ignored.add(self._next_id())
            self.out += pack_msg(T.WATCH, self.req_id, 0, f"{path}\0{token}\0".encode())
        return False

    def _next_id(self) -> int:
        self.req_id = (self.req_id + 1) & 0xFFFFFFFF
        return self.req_id

    def _pump(self) -> None:
        """Move bytes both ways; queue watch events for the main loop."""
        if self._reconnect():
            return
        if self.out:
            n = self.req.write(self.out)
            self.out = self.out[n:]
            if n:
                self.kernel.evtchn.notify(self.port)
        data = self.rsp.read()
        if not data:
            return
        self.kernel.evtchn.notify(self.port)  # room in rsp for xenstored
        for msg in self.parser.feed(data):
            if msg.type == T.WATCH_EVENT:
                self.kernel.call_soon(lambda m=msg: self._fire(m))
            elif msg.req_id in self.ignored:
                self.ignored.discard(msg.req_id)
            else:
                self.replies[msg.req_id] = msg

    def _fire(self, msg: XsMsg) -> None:
        parts = msg.payload.split(b"\0")
        if len(parts) >= 2:
            cb = self.watches.get(parts[1].decode())
            if cb is not None:
                cb(parts[0].decode(), parts[1].decode())

    def request(self, type_: int, payload: bytes, tx_id: int = 0) -> bytes:
        rid = self._next_id()
        raw = pack_msg(type_, rid, tx_id, payload)
        self.waiting[rid] = raw
        self.out += raw
        self._pump()
        while rid not in self.replies:
            self._wait()
        del self.waiting[rid]
        msg = self.replies.pop(rid)
        if msg.type == T.ERROR:
            raise XenbusError(msg.payload.rstrip(b"\0").decode(), f"xenstore {T(type_).name}")
        return msg.payload

    def _wait(self) -> None:
        self.kernel.xen.flush()  # our notification may still be batched
        ev = self.kernel.evtchn
        if not ev.is_pending(self.port):
            self.kernel.xen.call(Hypercall.sched_op, SchedOp.poll, {"ports": [self.port]})
        ev.clear(self.port)
        self._pump()

    # ---- xenstore operations -------------------------------------------

    def read(self, path: str, tx: int = 0) -> str:
        return self.request(T.READ, path.encode() + b"\0", tx).decode()

    def try_read(self, path: str, default: str | None = None) -> str | None:
        try:
            return self.read(path)
        except XenbusError:
            return default

    def write(self, path: str, value: str | bytes, tx: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        self.request(T.WRITE, path.encode() + b"\0" + data, tx)

    def mkdir(self, path: str) -> None:
        self.request(T.MKDIR, path.encode() + b"\0")

    def rm(self, path: str, tx: int = 0) -> None:
        self.request(T.RM, path.encode() + b"\0", tx)

    def directory(self, path: str) -> list[str]:
        raw = self.request(T.DIRECTORY, path.encode() + b"\0")
        return [p.decode() for p in raw.split(b"\0") if p]

    def get_perms(self, path: str) -> list[str]:
        raw = self.request(T.GET_PERMS, path.encode() + b"\0")
        return [p.decode() for p in raw.split(b"\0") if p]

    def set_perms(self, path: str, perms: list[str]) -> None:
        self.request(T.SET_PERMS, path.encode() + b"\0" + b"".join(
            p.encode() + b"\0" for p in perms))

    def watch(self, path: str, token: str, callback: WatchCallback) -> None:
        self.watches[token] = callback
        self.watch_paths[token] = path
        self.request(T.WATCH, f"{path}\0{token}\0".encode())

    def unwatch(self, path: str, token: str) -> None:
        self.request(T.UNWATCH, f"{path}\0{token}\0".encode())
        self.watches.pop(token, None)
        self.watch_paths.pop(token, None)

    def transaction_start(self) -> int:
        return int(self.request(T.TRANSACTION_START, b"\0").rstrip(b"\0"))

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        self.request(T.TRANSACTION_END, b"T\0" if commit else b"F\0", tx)

    def write_all(self, base: str, items) -> None:
        """`base/key = value` for every (key, value), in one transaction that
        is started again while its commit says EAGAIN (a frontend's talk_to_*)."""
        while True:
            tx = self.transaction_start()
            try:
                for key, value in items:
                    self.write(f"{base}/{key}", str(value), tx)
                self.transaction_end(tx)
                return
            except XenbusError as exc:
                if exc.name != "EAGAIN":
                    raise

    def get_domain_path(self, domid: int) -> str:
        return self.request(T.GET_DOMAIN_PATH, f"{domid}\0".encode()).rstrip(b"\0").decode()
