"""xenstored's adapter in Domain-0: guest rings, event channels, VIRQ_DOM_EXC.

Rules:
1. A guest connection is its grant GNTTAB_RESERVED_XENSTORE (mapped when
   Dom0 INTRODUCEs the domain) plus an interdomain port bound to the
   guest's unbound store port. We consume req[], produce rsp[], and notify
   after every update.
2. A guest that breaks the ring or wire rules is cut off (its page's
   `error` field says why); no guest input can raise out of here.
3. On VIRQ_DOM_EXC we rescan domain states through Xen and fire
   @releaseDomain when any introduced domain shut down, crashed or died.
4. State survives Domain-0 (persist.py): <rundir>/xenstored/ holds a
   snapshot and a journal. Changes a guest made are appended to the journal
   before the reply leaves (one write(2), so a kill leaves a record whole
   or absent); Domain-0's own changes at the end of the event-loop turn.
   After COMPACT_AFTER changes, and at every start, a new snapshot replaces
   the old one and the journal starts empty. No fsync: the state has to
   survive Domain-0, not the host (a host crash loses the DomUs anyway).
5. Reconnection (xen-interfaces 7.3): a guest that writes `connection` =
   XENSTORE_RECONNECT loses its partial packets, watches and transactions;
   we empty req[] and answer with XENSTORE_CONNECTED. A xenstored restarted
   with Domain-0 maps each saved guest ring again, binds the guest's store
   port again, and writes XENSTORE_RESTARTED (a model value) to ask the
   guest for that reconnection; it reads nothing from the ring until then.
"""

import os
from dataclasses import dataclass, field

from domains.dom0.xenstored import persist
from domains.dom0.xenstored.perms import XsError
from domains.dom0.xenstored.server import ProtocolError, XenstoreServer
from domains.kernel.bytering import XenstoreControl, xenstore_server
from domains.kernel.ring import RingError
from hypervisor.public.grant_table import GNTTAB_RESERVED_XENSTORE
from hypervisor.public.xen import Hypercall, SysctlCmd, Virq
from hypervisor.public.xs_wire import (
    XENSTORE_CONNECTED,
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_RECONNECT,
    XENSTORE_RESTARTED,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
    MessageParser,
    WireError,
)

SNAPSHOT, JOURNAL = "tree.msgpack", "journal.msgpack"
COMPACT_AFTER = 4096  # journaled changes before a new snapshot


@dataclass(eq=False)
class RingConnection:
    domid: int
    port: int
    mapping: object
    streams: object
    parser: MessageParser = field(default_factory=MessageParser)
    out: bytes = b""
    broken: bool = False
    ctl: XenstoreControl | None = None


class Dom0Xs:
    """Domain-0's own xenstore handle: the engine's LocalClient, with str
    values and watch callbacks run from the event loop."""

    def __init__(self, client, kernel, on_change=lambda: None) -> None:
        self.c, self.kernel, self.on_change = client, kernel, on_change

    def _after(self) -> None:
        self.on_change()
        if self.c.pending:
            self.kernel.call_soon_once(self.c.dispatch)

    def read(self, path: str) -> str:
        return self.c.read(path).decode(errors="replace")

    def try_read(self, path: str, default: str | None = None) -> str | None:
        try:
            return self.read(path)
        except XsError:
            return default

    def write(self, path: str, value: str | bytes) -> None:
        self.c.write(path, value)
        self._after()

    def rm(self, path: str) -> None:
        self.c.rm(path)
        self._after()

    def mkdir(self, path: str) -> None:
        self.c.mkdir(path)
        self._after()

    def directory(self, path: str) -> list[str]:
        return self.c.directory(path)

    def try_directory(self, path: str) -> list[str]:
        try:
            return self.c.directory(path)
        except XsError:
            return []

    def get_perms(self, path: str) -> list[str]:
        return self.c.get_perms(path)

    def set_perms(self, path: str, perms: list[str]) -> None:
        self.c.set_perms(path, perms)
        self._after()

    def watch(self, path: str, token: str, callback) -> None:
        self.c.watch(path, token, callback)
        self._after()

    def unwatch(self, path: str, token: str) -> None:
        self.c.unwatch(path, token)

    def transaction(self):
        return _Txn(self)


class _Txn:
    def __init__(self, xs: Dom0Xs) -> None:
        self.xs = xs
        self.cm = xs.c.transaction()

    def __enter__(self):
        return self.cm.__enter__()

    def __exit__(self, *exc):
        out = self.cm.__exit__(*exc)
        self.xs._after()
        return out


class XenstoredService:
    def __init__(self, kernel, restart: bool = False) -> None:
        self.kernel = kernel
        self.server = XenstoreServer(hooks=self)
        self.rings: dict[int, RingConnection] = {}
        self.ring_info: dict[int, tuple[int, int]] = {}  # domid -> (gfn, guest's port)
        self.dir = os.path.join(kernel.rundir, "xenstored")
        os.makedirs(self.dir, exist_ok=True)
        self.seq = 0  # the last journal record written (persist rule 2)
        self.journal_fd = -1
        self.journaled = 0
        self.saved_rings: dict[int, tuple[int, int]] = {}
        self.local = Dom0Xs(self.server.local_client(0, sink=self.send), kernel,
                            on_change=lambda: kernel.call_soon_once(self.save))
        self.seen: dict[int, str] = {}
        port = kernel.evtchn.bind_virq(Virq.DOM_EXC)
        kernel.evtchn.on(port, lambda _p: self.on_dom_exc())
        if not (restart and self._restore()):
            for path in ("/local", "/local/domain", "/vm", "/tool"):
                self.local.write(path, "")
            self.local.write("/local/domain/0/name", "Domain-0")
            self.local.write("/local/domain/0/domid", "0")
        self._compact()

    # ---- state that survives Domain-0 (rule 4) ----------------------------

    def save(self) -> None:
        """Append what changed since the last save to the journal."""
        store = self.server.store
        changes, store.journal = store.journal or [], []
        rings = dict(self.ring_info) if self.ring_info != self.saved_rings else None
        if not changes and rings is None:
            return
        raw, self.seq = persist.records(self.seq, changes, rings)
        os.write(self.journal_fd, raw)  # one write: a kill leaves it whole or absent
        if rings is not None:
            self.saved_rings = rings
        self.journaled += len(changes)
        if self.journaled > COMPACT_AFTER:
            self._compact()

    def _compact(self) -> None:
        """A new snapshot, then an empty journal (persist rule 2 makes the
        order safe: records the snapshot holds are skipped on replay)."""
        path = os.path.join(self.dir, SNAPSHOT)
        with open(path + ".tmp", "wb") as f:
            f.write(persist.snapshot(self.server.store, self.ring_info, self.seq))
        os.replace(path + ".tmp", path)
        if self.journal_fd < 0:
            self.journal_fd = os.open(os.path.join(self.dir, JOURNAL),
                                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                                      0o600)
        os.ftruncate(self.journal_fd, 0)
        self.server.store.journal = []
        self.saved_rings = dict(self.ring_info)
        self.journaled = 0

    def _restore(self) -> bool:
        try:
            with open(os.path.join(self.dir, SNAPSHOT), "rb") as f:
                snap = f.read()
            try:
                with open(os.path.join(self.dir, JOURNAL), "rb") as f:
                    journal = f.read()
            except FileNotFoundError:
                journal = b""
            store, rings, self.seq = persist.decode(snap, journal)
        except (OSError, persist.StateError) as exc:
            print(f"xenstored: no state to restore ({exc}); starting empty", flush=True)
            return False
        self.server.restore(store, list(rings))
        for domid, (gfn, port) in sorted(rings.items()):
            try:
                self._attach(domid, gfn, port).ctl.connection = XENSTORE_RESTARTED
            except XsError as exc:  # the domain died while we were down
                print(f"xenstored: d{domid} not reconnected: {exc}", flush=True)
                self.send(self.server.forget_domain(domid))
        for conn in self.rings.values():
            self.kernel.evtchn.notify(conn.port)
        print(f"xenstored: restored {len(store)} nodes, {len(self.rings)} guest rings",
              flush=True)
        return True

    # ---- hooks the engine calls on INTRODUCE / RELEASE ------------------

    def introduce(self, domid: int, gfn: int, port: int) -> None:
        self._attach(domid, gfn, port)

    def _attach(self, domid: int, gfn: int, port: int) -> RingConnection:
        k = self.kernel
        try:
            mapping = k.gnttab.map_grant(domid, GNTTAB_RESERVED_XENSTORE)
        except OSError as exc:
            raise XsError("EINVAL", f"cannot map d{domid}'s ring: {exc}") from None
        try:
            local = k.evtchn.bind_interdomain(domid, port)
        except OSError as exc:
            k.gnttab.unmap_grant(mapping)
            raise XsError("EINVAL", f"cannot bind d{domid}'s port: {exc}") from None
        conn = RingConnection(domid, local, mapping, xenstore_server(mapping.page),
                              ctl=XenstoreControl(mapping.page))
        conn.ctl.server_features = XENSTORE_SERVER_FEATURE_RECONNECTION
        self.rings[domid] = conn
        self.ring_info[domid] = (gfn, port)
        self.server.connect(("ring", domid), domid, privileged=False)
        k.evtchn.on(local, lambda _p, c=conn: self.pump(c))
        return conn

    def release(self, domid: int) -> None:
        conn = self.rings.pop(domid, None)
        self.ring_info.pop(domid, None)
        if conn is None:
            return
        self.server.disconnect(("ring", domid))
        self.kernel.evtchn.close(conn.port)
        conn.streams.release()
        if conn.ctl is not None:
            conn.ctl.release()
        self.kernel.gnttab.unmap_grant(conn.mapping)

    def introduce_domain(self, domid: int, gfn: int, port: int) -> None:
        self.local.c.introduce(domid, gfn, port)
        self.local._after()

    def release_domain(self, domid: int) -> None:
        if self.server.is_introduced(domid):
            self.local.c.release(domid)
            self.local._after()

    # ---- the rings -----------------------------------------------------

    def pump(self, conn: RingConnection) -> None:
        if conn.broken or self._reconnecting(conn):
            return
        try:
            data = conn.streams.rx.read()
            if data:
                self.kernel.evtchn.notify(conn.port)  # room in req[] for the guest
            out = []
            for msg in conn.parser.feed(data):
                out += self.server.handle(("ring", conn.domid), msg)
            if out:
                self.save()  # rule 4: what we acknowledge survives us
            self.send(out)
            self.flush(conn)
        except RingError:
            self.cut_off(conn, XENSTORE_ERROR_RINGIDX)
        except (WireError, ProtocolError):
            self.cut_off(conn, XENSTORE_ERROR_PROTO)
        self.local._after()

    def _reconnecting(self, conn: RingConnection) -> bool:
        """Rule 5; True while the ring must not be read."""
        state = conn.ctl.connection if conn.ctl is not None else XENSTORE_CONNECTED
        if state == XENSTORE_RESTARTED:
            return True  # the guest has not answered yet
        if state != XENSTORE_RECONNECT:
            return False
        try:
            conn.streams.rx.discard()
        except RingError:
            self.cut_off(conn, XENSTORE_ERROR_RINGIDX)
            return True
        conn.parser, conn.out = MessageParser(), b""
        self.server.reset_connection(("ring", conn.domid))
        conn.ctl.connection = XENSTORE_CONNECTED
        self.kernel.evtchn.notify(conn.port)
        return True

    def send(self, outgoing) -> None:
        for conn_id, data in outgoing:
            conn = self.rings.get(conn_id[1]) if isinstance(conn_id, tuple) else None
            if conn is not None and not conn.broken:
                conn.out += data
                self.flush(conn)

    def flush(self, conn: RingConnection) -> None:
        if not conn.out:
            return
        try:
            n = conn.streams.tx.write(conn.out)
        except RingError:
            self.cut_off(conn, XENSTORE_ERROR_RINGIDX)
            return
        conn.out = conn.out[n:]
        if n:
            self.kernel.evtchn.notify(conn.port)

    def cut_off(self, conn: RingConnection, error: int) -> None:
        """The guest broke the protocol: stop serving it, say why on its page."""
        conn.broken = True
        conn.out = b""
        ctl = XenstoreControl(conn.mapping.page)
        ctl.error = error
        ctl.release()
        self.server.disconnect(("ring", conn.domid))
        print(f"xenstored: d{conn.domid} broke the ring protocol (error {error}): "
              "connection closed", flush=True)

    # ---- domain exceptions ---------------------------------------------

    def on_dom_exc(self) -> None:
        _, infos = self.kernel.xen.check(Hypercall.sysctl, SysctlCmd.getdomaininfolist)
        now = {i["domid"]: i["state"] for i in infos}
        changed = any(self.seen.get(d) != s for d, s in now.items()) or any(
            d not in now for d in self.seen)
        self.seen = now
        if changed:
            self.send(self.server.fire_special("@releaseDomain"))
            self.local._after()
