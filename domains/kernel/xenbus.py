"""The guest's xenstore client (xenbus) over its ring page and event channel.

Rules:
1. Requests are written into the req byte stream and the port is notified
   after every update; replies and watch events come back on rsp.
2. Calls are synchronous: while waiting for a reply the kernel uses
   SCHEDOP_poll on the xenstore port only, so other events stay pending for
   the main loop. Watch events that arrive meanwhile are queued and run
   from the main loop, never inside a call.
3. Replies are matched by req_id; an ERROR reply raises XenbusError.
"""

from collections.abc import Callable

from domains.kernel.bytering import xenstore_guest
from hypervisor.public.xen import Hypercall, SchedOp
from hypervisor.public.xs_wire import MessageParser, XsMsg, pack_msg
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
        self.parser = MessageParser()
        self.req_id = 0
        self.replies: dict[int, XsMsg] = {}
        self.watches: dict[str, WatchCallback] = {}
        self.out = b""
        kernel.evtchn.on(port, lambda _p: self._pump())

    # ---- transport -----------------------------------------------------

    def _pump(self) -> None:
        """Move bytes both ways; queue watch events for the main loop."""
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
            else:
                self.replies[msg.req_id] = msg

    def _fire(self, msg: XsMsg) -> None:
        parts = msg.payload.split(b"\0")
        if len(parts) >= 2:
            cb = self.watches.get(parts[1].decode())
            if cb is not None:
                cb(parts[0].decode(), parts[1].decode())

    def request(self, type_: int, payload: bytes, tx_id: int = 0) -> bytes:
        self.req_id = (self.req_id + 1) & 0xFFFFFFFF
        rid = self.req_id
        self.out += pack_msg(type_, rid, tx_id, payload)
        self._pump()
        while rid not in self.replies:
            self._wait()
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
        self.request(T.WATCH, f"{path}\0{token}\0".encode())

    def unwatch(self, path: str, token: str) -> None:
        self.request(T.UNWATCH, f"{path}\0{token}\0".encode())
        self.watches.pop(token, None)

    def transaction_start(self) -> int:
        return int(self.request(T.TRANSACTION_START, b"\0").rstrip(b"\0"))

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        self.request(T.TRANSACTION_END, b"T\0" if commit else b"F\0", tx)

    def get_domain_path(self, domid: int) -> str:
        return self.request(T.GET_DOMAIN_PATH, f"{domid}\0".encode()).rstrip(b"\0").decode()
