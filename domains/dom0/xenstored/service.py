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
"""

from dataclasses import dataclass, field

from domains.dom0.xenstored.perms import XsError
from domains.dom0.xenstored.server import ProtocolError, XenstoreServer
from domains.kernel.bytering import XenstoreControl, xenstore_server
from domains.kernel.ring import RingError
from hypervisor.public.grant_table import GNTTAB_RESERVED_XENSTORE
from hypervisor.public.xen import Hypercall, SysctlCmd, Virq
from hypervisor.public.xs_wire import (
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
    MessageParser,
    WireError,
)


@dataclass(eq=False)
class RingConnection:
    domid: int
    port: int
    mapping: object
    streams: object
    parser: MessageParser = field(default_factory=MessageParser)
    out: bytes = b""
    broken: bool = False


class Dom0Xs:
    """Domain-0's own xenstore handle: the engine's LocalClient, with str
    values and watch callbacks run from the event loop."""

    def __init__(self, client, kernel) -> None:
        self.c, self.kernel = client, kernel

    def _after(self) -> None:
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
    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.server = XenstoreServer(hooks=self)
        self.rings: dict[int, RingConnection] = {}
        self.local = Dom0Xs(self.server.local_client(0, sink=self.send), kernel)
        self.seen: dict[int, str] = {}
        port = kernel.evtchn.bind_virq(Virq.DOM_EXC)
        kernel.evtchn.on(port, lambda _p: self.on_dom_exc())
        for path in ("/local", "/local/domain", "/vm", "/tool"):
            self.local.write(path, "")
        self.local.write("/local/domain/0/name", "Domain-0")
        self.local.write("/local/domain/0/domid", "0")

    # ---- hooks the engine calls on INTRODUCE / RELEASE ------------------

    def introduce(self, domid: int, gfn: int, port: int) -> None:
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
        conn = RingConnection(domid, local, mapping, xenstore_server(mapping.page))
        self.rings[domid] = conn
        self.server.connect(("ring", domid), domid, privileged=False)
        k.evtchn.on(local, lambda _p, c=conn: self.pump(c))

    def release(self, domid: int) -> None:
        conn = self.rings.pop(domid, None)
        if conn is None:
            return
        self.server.disconnect(("ring", domid))
        self.kernel.evtchn.close(conn.port)
        conn.streams.release()
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
        if conn.broken:
            return
        try:
            data = conn.streams.rx.read()
            if data:
                self.kernel.evtchn.notify(conn.port)  # room in req[] for the guest
            for msg in conn.parser.feed(data):
                self.send(self.server.handle(("ring", conn.domid), msg))
            self.flush(conn)
        except RingError:
            self.cut_off(conn, XENSTORE_ERROR_RINGIDX)
        except (WireError, ProtocolError):
            self.cut_off(conn, XENSTORE_ERROR_PROTO)
        self.local._after()

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
