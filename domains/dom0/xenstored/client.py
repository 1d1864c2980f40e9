"""An in-process xenstore client for Domain-0's own code (the toolstack).

Rule 1: a LocalClient is an ordinary connection of the engine: every call is
        encoded as a request, handled by XenstoreServer.handle, and checked
        like any other (Domain-0's client is privileged, another domid's not).
Rule 2: errors come back as XsError carrying the errno name.
Rule 3: watch callbacks never run inside a call: the engine queues events on
        the client, and its owner (the adapter's event loop) runs them with
        `dispatch()`. So a callback may freely call back into the client.
Rule 4: a call can raise watch events for other connections; they go to
        `sink` (by default they pile up in `outbox` for the adapter to send).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypervisor.public.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    XSD_HEADER_SIZE,
    MessageParser,
    XsdSockmsgType,
    XsMsg,
    join_fields,
    split_fields,
)

from .perms import XsError

if TYPE_CHECKING:
    from .server import Outgoing, XenstoreServer

T = XsdSockmsgType
WatchCallback = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class LocalConn:
    """The conn_id of an in-process client; never a ring."""

    number: int


class LocalClient:
    """Thin blocking API over the engine; see the module rules."""

    def __init__(
        self,
        server: XenstoreServer,
        conn_id: LocalConn,
        domid: int,
        sink: Callable[[list[Outgoing]], None] | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.domid = domid
        self.outbox: list[Outgoing] = []
        self._server = server
        self._sink = sink or self.outbox.extend
        self._req_id = 0
        self._events: deque[XsMsg] = deque()
        self._callbacks: dict[str, tuple[str, str, WatchCallback]] = {}
        self._watch_seq = 0

    # --- nodes -----------------------------------------------------------

    def read(self, path: str, tx: int = 0) -> bytes:
        return self._call(T.READ, join_fields(path), tx)

    def exists(self, path: str, tx: int = 0) -> bool:
        try:
            self.read(path, tx)
        except XsError as err:
            if err.errno != "ENOENT":
                raise
            return False
        return True

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        self._call(T.WRITE, join_fields(path, data, terminate=False), tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self._call(T.MKDIR, join_fields(path), tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self._call(T.RM, join_fields(path), tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        return [f.decode() for f in split_fields(self._call(T.DIRECTORY, join_fields(path), tx))]

    def get_perms(self, path: str, tx: int = 0) -> list[str]:
        return [f.decode() for f in split_fields(self._call(T.GET_PERMS, join_fields(path), tx))]

    def set_perms(self, path: str, perms: list[str], tx: int = 0) -> None:
        self._call(T.SET_PERMS, join_fields(path, *perms), tx)

    # --- transactions ----------------------------------------------------

    def start(self) -> int:
        return int(self._call(T.TRANSACTION_START, b"\0").rstrip(b"\0"))

    def commit(self, tx: int) -> None:
        """Raises XsError("EAGAIN") if the transaction conflicted: retry it whole."""
        self._call(T.TRANSACTION_END, b"T\0", tx)

    def abort(self, tx: int) -> None:
        self._call(T.TRANSACTION_END, b"F\0", tx)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LocalTransaction]:
        """Commit on normal exit (XsError EAGAIN on conflict), abort on an exception."""
        tx = self.start()
        try:
            yield LocalTransaction(self, tx)
        except BaseException:
            with contextlib.suppress(XsError):  # keep the original exception
                self.abort(tx)
            raise
        self.commit(tx)

    # --- domains ---------------------------------------------------------

    def introduce(self, domid: int, gfn: int, port: int) -> None:
        self._call(T.INTRODUCE, join_fields(str(domid), str(gfn), str(port)))

    def release(self, domid: int) -> None:
        self._call(T.RELEASE, join_fields(str(domid)))

    def is_introduced(self, domid: int) -> bool:
        return self._call(T.IS_DOMAIN_INTRODUCED, join_fields(str(domid))) == b"T\0"

    def get_domain_path(self, domid: int) -> str:
        return self._call(T.GET_DOMAIN_PATH, join_fields(str(domid))).rstrip(b"\0").decode()

    # --- watches ---------------------------------------------------------

    def watch(self, path: str, token: str, callback: WatchCallback) -> None:
        """callback(path, token) runs from dispatch(), once at once and on each change."""
        if self._find(path, token) is not None:
            raise XsError("EEXIST", f"watch {path} {token} already set")
        self._watch_seq += 1
        # A private prefix tells apart watches that share a token on two paths.
        wire_token = f"{self._watch_seq}:{token}"
        self._call(T.WATCH, join_fields(path, wire_token))
        self._callbacks[wire_token] = (path, token, callback)

    def unwatch(self, path: str, token: str) -> None:
        wire_token = self._find(path, token)
        if wire_token is None:
            raise XsError("ENOENT", f"no watch {path} {token}")
        self._call(T.UNWATCH, join_fields(path, wire_token))
        del self._callbacks[wire_token]

    def _find(self, path: str, token: str) -> str | None:
        for wire_token, (watched, user_token, _) in self._callbacks.items():
            if (watched, user_token) == (path, token):
                return wire_token
        return None

    def deliver(self, data: bytes) -> None:
        """Engine side: queue WATCH_EVENT messages addressed to this client."""
        self._events.extend(MessageParser().feed(data))

    @property
    def pending(self) -> int:
        """Queued watch events that dispatch() would run."""
        return len(self._events)

    def dispatch(self) -> int:
        """Run the callbacks of every queued event; return how many ran."""
        ran = 0
        while self._events:
            path, wire_token = (f.decode() for f in split_fields(self._events.popleft().payload))
            entry = self._callbacks.get(wire_token)
            if entry is not None:  # an event may outlive its watch
                _, token, callback = entry
                callback(path, token)
                ran += 1
        return ran

    def close(self) -> None:
        self._server.disconnect(self.conn_id)

    # --- the engine round trip ---------------------------------------------

    def _call(self, type_: int, payload: bytes, tx: int = 0) -> bytes:
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            raise XsError("E2BIG", "request larger than XENSTORE_PAYLOAD_MAX")
        self._req_id = (self._req_id + 1) & 0xFFFFFFFF
        out = self._server.handle(self.conn_id, XsMsg(type_, self._req_id, tx, payload))
        (_, reply), rest = out[0], out[1:]
        if rest:
            self._sink(rest)
        body = reply[XSD_HEADER_SIZE:]
        if int.from_bytes(reply[:4], "little") == T.ERROR:
            raise XsError(body.rstrip(b"\0").decode())
        return body


class LocalTransaction:
    """The node operations of a LocalClient, bound to one transaction."""

    def __init__(self, client: LocalClient, tx: int) -> None:
        self.client = client
        self.tx = tx

    def read(self, path: str) -> bytes:
        return self.client.read(path, self.tx)

    def exists(self, path: str) -> bool:
        return self.client.exists(path, self.tx)

    def write(self, path: str, value: bytes | str) -> None:
        self.client.write(path, value, self.tx)

    def mkdir(self, path: str) -> None:
        self.client.mkdir(path, self.tx)

    def rm(self, path: str) -> None:
        self.client.rm(path, self.tx)

    def directory(self, path: str) -> list[str]:
        return self.client.directory(path, self.tx)

    def get_perms(self, path: str) -> list[str]:
        return self.client.get_perms(path, self.tx)

    def set_perms(self, path: str, perms: list[str]) -> None:
        self.client.set_perms(path, perms, self.tx)
