"""netfront's adapter in XenoLinux: xenbus, the rings, grants, the NetDevice.

Rules:
1. The toolstack wrote device/vif/<devid> (state Initialising, backend path,
   mac); we follow domains.kernel.xenbus_state: on backend InitWait set up
   both rings (one page each, granted to the backend) and one unbound port,
   write tx-ring-ref, rx-ring-ref, event-channel, request-rx-copy=1,
   feature-rx-notify, feature-sg, feature-gso-tcpv4 and feature-persistent
   in one transaction -> Initialised; on backend Connected read its
   features (persistent grants are used when the backend offers them too)
   -> Connected.
2. NetfrontCore owns slots, grants and buffers; this adapter moves pages
   and events and is the NetDevice the guest's stack sees (``eth<devid>``).
3. ``transmit`` pushes its batch and notifies at most once; received frames
   go to ``receiver`` from the event handler, then nothing else.
4. When the backend goes away and comes back the rings are rebuilt; frames
   in flight are lost (TCP retransmits). ``on_connect`` runs the first time
   the device connects.
"""

from collections.abc import Callable

from domains.kernel.gnttab import Granter
from domains.kernel.ring import FrontRing
from domains.kernel.xenbus_state import Duty, Role, Switch, next_actions, parse_state
from domains.xenolinux.netfront_core import NetfrontCore, NetfrontState
from hypervisor.public import trace as T
from hypervisor.public.netif import NETIF_RX_ENTRY_SIZE, NETIF_TX_ENTRY_SIZE


class _RingPage:
    """One ring page of ours, granted to the backend."""

    def __init__(self, kernel, backend: int, entry_size: int) -> None:
        self.k = kernel
        self.pfn = kernel.frames.alloc()
        self.buf = kernel.page(self.pfn)
        self.ring = FrontRing(self.buf, entry_size)
        self.gref = kernel.gnttab.grant_access(backend, self.pfn)

    def close(self) -> bool:
        """Revoke the grant (False, and the page leaks, while the backend maps it)."""
        if not self.k.gnttab.end_access(self.gref):
            return False
        self.ring.release()
        self.buf.release()
        self.k.frames.release(self.pfn)
        return True


class Netfront:
    """One vif as the guest sees it: a NetDevice named eth<devid>."""

    def __init__(self, guest, devid: int, on_connect: Callable[["Netfront"], None] | None = None):
        self.g, self.k, self.xs = guest, guest.kernel, guest.xs
        self.devid, self.path = devid, f"device/vif/{devid}"
        self.name = f"eth{devid}"
        self.backend_path = self.xs.read(f"{self.path}/backend")
        self.backend_id = int(self.xs.read(f"{self.path}/backend-id"))
        self.mac = bytes.fromhex(self.xs.read(f"{self.path}/mac").replace(":", ""))
        self.mtu = int(self.xs.try_read(f"{self.path}/mtu") or 1500)
        self.receiver: Callable[[bytes, int], None] | None = None
        self.core = NetfrontCore(Granter(self.k, self.backend_id), self._alloc_page)
        self.rings: tuple[_RingPage, _RingPage] | None = None
        self.port: int | None = None
        self.on_connect = on_connect
        self.announced = False
        self.xs.watch(f"{self.backend_path}/state", f"netfront-{devid}",
                      lambda *_: self.changed())

    @property
    def gso(self) -> bool:
        return self.core.gso

    @property
    def connected(self) -> bool:
        return self.core.state is NetfrontState.CONNECTED

    def _alloc_page(self):
        pfn = self.k.frames.alloc()
        return pfn, self.k.page(pfn)

    # ---- xenbus ----------------------------------------------------------

    def changed(self) -> None:
        mine = parse_state(self.xs.try_read(f"{self.path}/state"))
        other = parse_state(self.xs.try_read(f"{self.backend_path}/state"))
        for action in next_actions(Role.FRONTEND, mine, other):
            if isinstance(action, Switch):
                self.xs.write(f"{self.path}/state", str(int(action.state)))
            elif action is Duty.SETUP_RING:
                self._setup_rings()
            elif action is Duty.FREE_RING:
                self._free_rings()
            elif action is Duty.CONNECT:
                self._connect()
            elif action is Duty.REPORT_ERROR:
                self.g.printk(f"netfront {self.name}: error {self.core.error}")

    def _setup_rings(self) -> None:
        tx = _RingPage(self.k, self.backend_id, NETIF_TX_ENTRY_SIZE)
        rx = _RingPage(self.k, self.backend_id, NETIF_RX_ENTRY_SIZE)
        self.rings = (tx, rx)
        self.port = self.k.evtchn.alloc_unbound(self.backend_id)
        self.k.evtchn.on(self.port, lambda _p: self._on_event())
        keys = (("tx-ring-ref", tx.gref), ("rx-ring-ref", rx.gref),
                ("event-channel", self.port), ("request-rx-copy", 1),
                ("feature-rx-notify", 1), ("feature-sg", 1), ("feature-gso-tcpv4", 1),
                ("feature-persistent", 1))
        self.xs.write_all(self.path, keys)  # talk_to_netback

    def _free_rings(self) -> None:
        self.core.suspend()
        if self.port is not None:
            self.k.evtchn.close(self.port)
            self.port = None
        if self.rings is not None:
            if not all([r.close() for r in self.rings]):
                self.g.printk(f"netfront {self.name}: backend still maps a ring")
            self.rings = None

    def _connect(self) -> None:
        if self.rings is None:
            return
        gso = self.xs.try_read(f"{self.backend_path}/feature-gso-tcpv4") == "1"
        persistent = self.xs.try_read(f"{self.backend_path}/feature-persistent") == "1"
        self.core.connect(self.rings[0].ring, self.rings[1].ring, gso, persistent)
        self.g.printk(f"netfront: {self.name}: {self.mac.hex(':')} connected to "
                      f"{self.xs.try_read(f'{self.backend_path}/bridge') or 'the backend'}"
                      f"{', TSO' if gso else ''}{', persistent grants' if persistent else ''}")
        self._push()
        if not self.announced and self.on_connect is not None:
            self.announced = True
            self.on_connect(self)

    def unplugged(self) -> None:
        self._free_rings()
        try:
            self.xs.unwatch(f"{self.backend_path}/state", f"netfront-{self.devid}")
        except OSError:
            pass

    # ---- the NetDevice ---------------------------------------------------

    def transmit(self, frames: list[tuple[bytes, int]]) -> None:
        self.core.transmit(frames)
        T.stamp(T.NETFRONT_TX, T.current, len(frames))
        self._push()

    def _push(self) -> None:
        if self.port is not None and self.core.push():
            self.k.evtchn.notify(self.port)

    def _on_event(self) -> None:
        frames = self.core.handle_responses()
        if frames:
            T.stamp(T.NETFRONT_RX, 0, len(frames))
        if self.core.error is not None and self.core.state is NetfrontState.ERROR:
            self.g.printk(f"netfront {self.name}: {self.core.error}")
        receiver = self.receiver
        if receiver is not None:
            for frame, gso_size in frames:
                receiver(frame, gso_size)
        self._push()




def probe(guest, on_connect=None) -> dict[str, Netfront]:
    """xenbus frontend probe: every vif the toolstack gives us, now and later."""
    devs: dict[int, Netfront] = {}
    netdevs: dict[str, Netfront] = {}

    def rescan(*_) -> None:
        try:
            devids = {int(d) for d in guest.xs.directory("device/vif")}
        except OSError:
            devids = set()
        for devid in devids - devs.keys():
            try:
                dev = devs[devid] = Netfront(guest, devid, on_connect)
            except (OSError, ValueError) as exc:
                guest.printk(f"netfront: vif {devid}: {exc}")
                continue
            netdevs[dev.name] = dev
        for devid in devs.keys() - devids:
            dev = devs.pop(devid)
            netdevs.pop(dev.name, None)
            dev.unplugged()

    guest.xs.watch("device/vif", "netfront-probe", rescan)
    return netdevs
