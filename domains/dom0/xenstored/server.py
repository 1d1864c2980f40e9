"""The xenstored protocol engine, sans-IO: requests in, wire messages out.

Rule 1: every request gets exactly one reply, first in the returned list, with
        the request's type, req_id and tx_id; a failure is an ERROR reply
        carrying "<ERRNO>\\0", a success without data is "OK\\0". Watch events
        (WATCH_EVENT, req_id = tx_id = 0) follow, for any connection.
Rule 2: nothing a client sends makes `handle` raise, except ProtocolError,
        which means "disconnect this connection": an unknown connection or a
        message that breaks the framing rules.
Rule 3: only privileged connections (Domain-0) may INTRODUCE and RELEASE.
        The adapter's hooks map and unmap the ring; a hook may refuse with
        XsError, and then nothing changes.
Rule 4: a request with a nonzero tx_id works inside that transaction of the
        same connection (ENOENT if there is none); TRANSACTION_START must
        come with tx_id 0 (EBUSY); an unprivileged connection keeps at most
        TRANSACTION_QUOTA open (ENOSPC). Watches fire only on commit.
Rule 5: events for an in-process LocalClient are queued on that client, not
        returned: its callbacks run when its owner calls `dispatch()`.

The adapter owns sockets and rings: it feeds `handle` the messages a
MessageParser reassembled and sends what comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from hypervisor.public.xs_wire import (
    XENSTORE_ABS_PATH_MAX,
    XENSTORE_PAYLOAD_MAX,
    WireError,
    XsdSockmsgType,
    XsMsg,
    join_fields,
    pack_msg,
)

from . import paths, tree
from .client import LocalClient, LocalConn
from .perms import XS_PERM_READ, Caller, Perms, XsError, format_perms, parse_perms
from .store import Change, Store, Transaction, View
from .watches import WATCH_QUOTA, Watch, WatchEvent, WatchRegistry

T = XsdSockmsgType
Outgoing = tuple[Hashable, bytes]
Result = tuple[bytes, list[Outgoing]]

TRANSACTION_QUOTA = 10
DOMID_FIRST_RESERVED = 0x7FF0
# An event carries a path of up to XENSTORE_ABS_PATH_MAX plus the token.
WATCH_TOKEN_MAX = XENSTORE_PAYLOAD_MAX - XENSTORE_ABS_PATH_MAX - 2
_U32_MAX = 0xFFFFFFFF
_OK = b"OK\0"
# Requests whose tx_id selects a transaction; the others ignore it.
_IN_TRANSACTION = {
    T.DIRECTORY, T.READ, T.GET_PERMS, T.WRITE, T.MKDIR, T.RM, T.SET_PERMS, T.TRANSACTION_END,
}


class ProtocolError(Exception):
    """The connection broke the protocol and must be disconnected."""


class DomainHooks(Protocol):
    def introduce(self, domid: int, gfn: int, port: int) -> None: ...
    def release(self, domid: int) -> None: ...


@dataclass(frozen=True, slots=True)
class XsStatistics:
    nodes: int
    connections: int
    watches: int
    transactions: int


@dataclass(eq=False, slots=True)
class Connection:
    conn_id: Hashable
    caller: Caller
    transactions: dict[int, Transaction] = field(default_factory=dict)


class XenstoreServer:
    def __init__(self, hooks: DomainHooks) -> None:
        self.store = Store()
        self.watches = WatchRegistry()
        self._hooks = hooks
        self._conns: dict[Hashable, Connection] = {}
        self._local: dict[Hashable, LocalClient] = {}
        self._introduced: set[int] = {0}
        self._next_txid = 1
        self._next_local = 1
        self._handlers: dict[int, Callable[[Connection, XsMsg, View], Result]] = {
            T.DIRECTORY: self._directory, T.READ: self._read, T.GET_PERMS: self._get_perms,
            T.WATCH: self._watch, T.UNWATCH: self._unwatch,
            T.TRANSACTION_START: self._transaction_start,
            T.TRANSACTION_END: self._transaction_end,
            T.INTRODUCE: self._introduce, T.RELEASE: self._release,
            T.GET_DOMAIN_PATH: self._get_domain_path, T.WRITE: self._write,
            T.MKDIR: self._mkdir, T.RM: self._rm, T.SET_PERMS: self._set_perms,
            T.IS_DOMAIN_INTRODUCED: self._is_domain_introduced,
            T.RESET_WATCHES: self._reset_watches,
        }

    # --- connections -----------------------------------------------------

    def connect(self, conn_id: Hashable, domid: int, privileged: bool = False) -> None:
        """A new connection (a guest ring, or a Domain-0 socket) speaking for `domid`."""
        if conn_id in self._conns:
            raise ValueError(f"connection {conn_id!r} already exists")
        self._conns[conn_id] = Connection(conn_id, Caller(domid, privileged))

    def disconnect(self, conn_id: Hashable) -> None:
        """Forget a connection with its watches and transactions; idempotent."""
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        self.watches.drop(conn_id)
        self._abort_all(conn)
        self._local.pop(conn_id, None)

    def local_client(
        self, domid: int = 0, sink: Callable[[list[Outgoing]], None] | None = None
    ) -> LocalClient:
        """An in-process client (the toolstack's); `sink` receives events for others."""
        conn_id = LocalConn(self._next_local)
        self._next_local += 1
        self.connect(conn_id, domid, privileged=domid == 0)
        client = LocalClient(self, conn_id, domid, sink)
        self._local[conn_id] = client
        return client

    def restore(self, store: Store, introduced: list[int]) -> None:
        """A restarted xenstored takes the saved tree and the domains it had
        introduced (persist.py); call it before any guest connects."""
        self.store = store
        self._introduced = {0, *introduced}

    def forget_domain(self, domid: int) -> list[Outgoing]:
        """A domain that died while xenstored was down: RELEASE without the hook."""
        if domid == 0 or domid not in self._introduced:
            return []
        self._introduced.discard(domid)
        self._drop_domain_connections(domid)
        return self._fire(tree.release_domain(self.store, domid))

    def reset_connection(self, conn_id: Hashable) -> None:
        """Xenstore reconnection: the connection's watches and transactions go."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self.watches.drop(conn_id)
            self._abort_all(conn)

    def is_introduced(self, domid: int) -> bool:
        return domid in self._introduced

    def statistics(self) -> XsStatistics:
        return XsStatistics(
            nodes=len(self.store),
            connections=len(self._conns),
            watches=self.watches.count(),
            transactions=sum(len(c.transactions) for c in self._conns.values()),
        )

    # --- requests --------------------------------------------------------

    def handle(self, conn_id: Hashable, msg: XsMsg) -> list[Outgoing]:
        """Process one request from `conn_id`; see Rules 1 and 2."""
        conn = self._conns.get(conn_id)
        if conn is None:
            raise ProtocolError(f"unknown connection {conn_id!r}")
        _check_frame(msg)
        try:
            payload, events = self._dispatch(conn, msg)
            reply = _reply(msg, msg.type, payload)
        except XsError as err:
            reply, events = _reply(msg, T.ERROR, err.errno.encode() + b"\0"), []
        return [(conn_id, reply), *self._route(events)]

    def fire_special(self, name: str) -> list[Outgoing]:
        """Fire "@introduceDomain" or "@releaseDomain" (e.g. a domain died)."""
        return self._route(self._encode(self.watches.fire_special(name)))

    def _dispatch(self, conn: Connection, msg: XsMsg) -> Result:
        handler = self._handlers.get(msg.type)
        if handler is None:
            raise XsError("ENOSYS", f"message type {msg.type}")
        view = self._view(conn, msg.tx_id) if msg.type in _IN_TRANSACTION else self.store
        return handler(conn, msg, view)

    def _view(self, conn: Connection, tx_id: int) -> View:
        if tx_id == 0:
            return self.store
        txn = conn.transactions.get(tx_id)
        if txn is None:
            raise XsError("ENOENT", f"no transaction {tx_id}")
        return txn

    # --- node requests ---------------------------------------------------

    def _path(self, conn: Connection, raw: bytes) -> str:
        return paths.canonicalize(paths.decode(raw), conn.caller.domid)

    def _directory(self, conn: Connection, msg: XsMsg, view: View) -> Result:
        (path,) = _fields(msg.payload, 1)
        return join_fields(*tree.directory(view, conn.caller, self._path(conn, path))), []

    def _read(self, conn: Connection, msg: XsMsg, view: View) -> Result:
        (path,) = _fields(msg.payload, 1)
        return tree.read(view, conn.caller, self._path(conn, path)), []

    def _get_perms(self, conn: Connection, msg: XsMsg, view: View) -> Result:
        (path,) = _fields(msg.payload, 1)
        perms = tree.get_perms(view, conn.caller, self._path(conn, path))
        return join_fields(*format_perms(perms)), []

    def _write(self, conn: Connection, msg: XsMsg, view: View) -> Result:
        path, sep, value = msg.payload.partition(b"\0")
        if not sep:
            raise XsError("EINVAL", "WRITE needs path\\0value")
        return _OK, self._fire(tree.write(view, conn.caller, self._path(conn, path), value))

    def _mkdir(self, conn: Connection, msg: XsMsg, view: View) -> Result:
        (path,) = _fields(msg.payload, 1)
        return _OK, self._fire(tree.mkdir(view, conn.caller, self._path(conn, path)))

    def _rm(self, conn: Connection, msg: XsMsg, view: View) -> Result:
        (path,) = _fields(msg.payload, 1)
        return _OK, self._fire(tree.rm(view, conn.caller, self._path(conn, path)))

    def _set_perms(self, conn: Connection, msg: XsMsg, view: View) -> Result:
        path, *items = _fields(msg.payload, 2, XENSTORE_PAYLOAD_MAX)
        perms: Perms = parse_perms(items)
        changes = tree.set_perms(view, conn.caller, self._path(conn, path), perms)
        return _OK, self._fire(changes)

    # --- watches ---------------------------------------------------------

    def _watch(self, conn: Connection, msg: XsMsg, _view: View) -> Result:
        raw_path, token, *depth = _fields(msg.payload, 2, 3)
        if len(token) > WATCH_TOKEN_MAX:
            raise XsError("EINVAL", "watch token too long")
        path, prefix = paths.canonicalize_watch(paths.decode(raw_path), conn.caller.domid)
        level = _number(depth[0], _U32_MAX) if depth else None
        watch = Watch(conn.conn_id, path, token, level, prefix)
        self.watches.add(watch, None if conn.caller.privileged else WATCH_QUOTA)
        # Xen fires every new watch once, so clients need no initial read.
        return _OK, self._encode([WatchEvent(conn.conn_id, watch.report(path), token)])

    def _unwatch(self, conn: Connection, msg: XsMsg, _view: View) -> Result:
        raw_path, token = _fields(msg.payload, 2)
        path, _ = paths.canonicalize_watch(paths.decode(raw_path), conn.caller.domid)
        self.watches.remove(conn.conn_id, path, token)
        return _OK, []

    def _reset_watches(self, conn: Connection, _msg: XsMsg, _view: View) -> Result:
        self.watches.drop(conn.conn_id)
        self._abort_all(conn)
        return _OK, []

    def _fire(self, changes: list[Change]) -> list[Outgoing]:
        events: list[WatchEvent] = []
        for change in changes:
            events += self.watches.fire(change, self._may_read)
        # One commit may touch a node twice; an identical event adds nothing.
        return self._encode(list(dict.fromkeys(events)))

    def _may_read(self, conn_id: Hashable, perms: Perms) -> bool:
        conn = self._conns.get(conn_id)
        return conn is not None and conn.caller.may(perms, XS_PERM_READ)

    def _encode(self, events: list[WatchEvent]) -> list[Outgoing]:
        return [
            (e.conn_id, pack_msg(T.WATCH_EVENT, 0, 0, join_fields(e.path, e.token)))
            for e in events
        ]

    def _route(self, out: list[Outgoing]) -> list[Outgoing]:
        """Queue what is addressed to local clients (Rule 5); return the rest."""
        if not self._local:
            return out
        rest = []
        for conn_id, data in out:
            client = self._local.get(conn_id)
            if client is None:
                rest.append((conn_id, data))
            else:
                client.deliver(data)
        return rest

    # --- transactions ----------------------------------------------------

    def _transaction_start(self, conn: Connection, msg: XsMsg, _view: View) -> Result:
        if msg.tx_id != 0:
            raise XsError("EBUSY", "TRANSACTION_START inside a transaction")
        if not conn.caller.privileged and len(conn.transactions) >= TRANSACTION_QUOTA:
            raise XsError("ENOSPC", f"more than {TRANSACTION_QUOTA} transactions")
        txid = self._new_txid(conn)
        conn.transactions[txid] = self.store.begin()
        return f"{txid}\0".encode(), []

    def _new_txid(self, conn: Connection) -> int:
        while True:
            txid = self._next_txid
            self._next_txid = txid % _U32_MAX + 1  # wraps within 1..2**32-1, never 0
            if txid not in conn.transactions:
                return txid

    def _transaction_end(self, conn: Connection, msg: XsMsg, view: View) -> Result:
        if msg.tx_id == 0 or not isinstance(view, Transaction):
            raise XsError("ENOENT", "TRANSACTION_END outside a transaction")
        (verdict,) = _fields(msg.payload, 1)
        if verdict not in (b"T", b"F"):
            raise XsError("EINVAL", "TRANSACTION_END takes T or F")
        del conn.transactions[msg.tx_id]
        if verdict == b"F":
            self.store.abort(view)
            return _OK, []
        return _OK, self._fire(self.store.commit(view))

    def _abort_all(self, conn: Connection) -> None:
        for txn in conn.transactions.values():
            self.store.abort(txn)
        conn.transactions.clear()

    # --- domains ---------------------------------------------------------

    def _introduce(self, conn: Connection, msg: XsMsg, _view: View) -> Result:
        _require_privileged(conn)
        raw_domid, raw_gfn, raw_port = _fields(msg.payload, 3)
        domid = _number(raw_domid, DOMID_FIRST_RESERVED - 1)
        gfn, port = _number(raw_gfn, 2**64 - 1), _number(raw_port, _U32_MAX)
        if domid in self._introduced:
            raise XsError("EEXIST", f"domain {domid} already introduced")
        self._hooks.introduce(domid, gfn, port)
        self._introduced.add(domid)
        return _OK, self._encode(self.watches.fire_special(paths.INTRODUCE_DOMAIN))

    def _release(self, conn: Connection, msg: XsMsg, _view: View) -> Result:
        _require_privileged(conn)
        (raw_domid,) = _fields(msg.payload, 1)
        domid = _number(raw_domid, DOMID_FIRST_RESERVED - 1)
        if domid == 0:
            raise XsError("EINVAL", "Domain-0 cannot be released")
        if domid not in self._introduced:
            raise XsError("ENOENT", f"domain {domid} not introduced")
        self._hooks.release(domid)
        self._introduced.discard(domid)
        self._drop_domain_connections(domid)
        events = self._fire(tree.release_domain(self.store, domid))
        return _OK, events + self._encode(self.watches.fire_special(paths.RELEASE_DOMAIN))

    def _drop_domain_connections(self, domid: int) -> None:
        # A released domain's ring is gone: nothing may keep speaking for it.
        gone = [c.conn_id for c in self._conns.values()
                if c.caller.domid == domid and not c.caller.privileged]
        for conn_id in gone:
            self.disconnect(conn_id)

    def _get_domain_path(self, _conn: Connection, msg: XsMsg, _view: View) -> Result:
        (raw_domid,) = _fields(msg.payload, 1)
        return f"{paths.domain_path(_number(raw_domid, 0xFFFF))}\0".encode(), []

    def _is_domain_introduced(self, _conn: Connection, msg: XsMsg, _view: View) -> Result:
        (raw_domid,) = _fields(msg.payload, 1)
        return (b"T\0" if _number(raw_domid, 0xFFFF) in self._introduced else b"F\0"), []


# --- payload helpers -------------------------------------------------------

def _check_frame(msg: XsMsg) -> None:
    """Rule 2: what the parser would have refused never reaches the engine."""
    fields = (msg.type, msg.req_id, msg.tx_id)
    if not all(isinstance(v, int) and 0 <= v <= _U32_MAX for v in fields):
        raise ProtocolError("header field out of range")
    if not isinstance(msg.payload, bytes) or len(msg.payload) > XENSTORE_PAYLOAD_MAX:
        raise ProtocolError("payload too long")


def _reply(msg: XsMsg, type_: int, payload: bytes) -> bytes:
    try:
        return pack_msg(type_, msg.req_id, msg.tx_id, payload)
    except WireError:
        # A directory or value too large for one message, as xenstored does.
        return pack_msg(T.ERROR, msg.req_id, msg.tx_id, b"E2BIG\0")


def _fields(payload: bytes, least: int, most: int | None = None) -> list[bytes]:
    """`least` (up to `most`, if given) NUL-terminated strings, or EINVAL."""
    most = least if most is None else most
    if not payload.endswith(b"\0"):
        raise XsError("EINVAL", "argument not NUL-terminated")
    fields = payload[:-1].split(b"\0")
    if not least <= len(fields) <= most:
        raise XsError("EINVAL", f"expected {least}..{most} arguments, got {len(fields)}")
    return fields


def _number(raw: bytes, maximum: int) -> int:
    if not (raw.isdigit() and len(raw) <= 20) or int(raw) > maximum:
        raise XsError("EINVAL", f"bad number {raw[:24]!r}")
    return int(raw)


def _require_privileged(conn: Connection) -> None:
    if not conn.caller.privileged:
        raise XsError("EACCES", "only a privileged domain may do this")
