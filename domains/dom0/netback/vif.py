"""One vif in netback: xenbus, the mapped rings, the bridge port, pcap, counters.

Rules:
1. A VifBackend probes (features, InitWait) and follows the frontend through
   domains.kernel.xenbus_state. The model differs from Linux netback in one
   step: it connects when the frontend is Initialised (the shared xenbus
   table), not Connected. It requires request-rx-copy=1. It offers
   feature-persistent and uses persistent mappings (netback/persistent.py)
   when the frontend offered it too; they are unmapped at disconnect.
2. A frontend that breaks the protocol is cut off alone: its port leaves
   the bridge, its rings are unmapped, an error node says why and the
   backend goes Closing (xenbus_dev_fatal).
3. The vif is a bridge port named vif<domid>.<devid> (or ``vifname``) and
   writes <rundir>/<name>.pcap (nanosecond timestamps, Ethernet), flushed
   after every turn, with the frames both ways as seen on the vif. Its
   counters are live in ``counters()`` and published under
   <backend>/statistics/ at most once a second.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import dpkt

from domains.dom0.bridge import Bridge
from domains.dom0.netback.core import NetbackCore, VifFeatures
from domains.dom0.netback.persistent import PersistentMaps
from domains.dom0.xenbus_backend import XenbusBackend
from domains.dom0.xenstored.perms import XsError
from domains.kernel.ring import BackRing
from domains.kernel.xenbus_state import Duty, Event, Role, Switch, next_actions
from hypervisor.public.netif import NETIF_RX_ENTRY_SIZE, NETIF_TX_ENTRY_SIZE
from hypervisor.public.xenbus import XenbusState as S

ROOT = "/local/domain/0/backend/vif"
PCAP_SNAPLEN = 262144
FEATURES = (("feature-sg", "1"), ("feature-gso-tcpv4", "1"), ("feature-rx-copy", "1"),
            ("feature-rx-flip", "0"), ("feature-split-event-channels", "0"),
            ("feature-persistent", "1"))


@dataclass(eq=False)
class VifPort:
    """The vif as a bridge port (contract: name, gso, deliver)."""

    vif: VifBackend
    name: str
    gso: bool

    def deliver(self, frame: bytes, gso_size: int) -> None:
        vif = self.vif
        if vif.core is not None and vif.core.queue_rx(frame, gso_size):
            vif.service.kick(vif)


class VifBackend(XenbusBackend):
    KIND = "vif"

    def __init__(self, service, fe: int, devid: int) -> None:
        super().__init__(service, fe, devid)
        self.name = self.xs.try_read(f"{self.path}/vifname") or f"vif{fe}.{devid}"
        self.bridge_name = self.xs.try_read(f"{self.path}/bridge") or "xenbr0"
        self.core: NetbackCore | None = None
        self.maps: list = []
        self.pmaps: PersistentMaps | None = None  # feature-persistent agreed
        self.port: int | None = None
        self.bport: VifPort | None = None
        self.bridge = None
        self.pcap = self.pcap_file = None
        self.published: dict[str, int] = {}
        self.counters_total: dict[str, int] = {}
        self.removed = False
        self._guarded(lambda: self._run(next_actions(Role.BACKEND, self.state, self.other,
                                                     Event.PROBE)))
        self.xs.watch(f"{self.fe_path}/state", f"netback-{fe}-{devid}", lambda *_: self.changed())

    # ---- xenbus ----------------------------------------------------------

    @property
    def log_name(self) -> str:
        return f"netback {self.name}"

    def changed(self) -> None:
        if not self.removed:
            self._guarded(lambda: self._run(next_actions(Role.BACKEND, self.state, self.other)))

    def _before_fatal(self) -> None:
        self._disconnect()

    def _run(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Switch):
                self.xs.write(f"{self.path}/state", str(int(action.state)))
            else:
                self._duty(action)

    def _duty(self, duty: Duty) -> None:
        if duty is Duty.PUBLISH_FEATURES:
            for key, value in FEATURES:
                self.xs.write(f"{self.path}/{key}", value)
        elif duty is Duty.MAP_RING:
            self._map_rings()
        elif duty is Duty.PUBLISH_DISK:  # for a vif: the carrier comes up
            self._attach()
        elif duty is Duty.DISCONNECT:
            self._disconnect()
        elif duty is Duty.REMOVE_IF_OFFLINE:
            if self.xs.try_read(f"{self.path}/online") == "0":
                self.remove()
        elif duty is Duty.REMOVE:
            self.remove()
        # REPORT_ERROR: fatal() wrote the reason to the error node already

    # ---- connect / disconnect -------------------------------------------

    def restart(self) -> None:
        """Model a netback driver restart (unbind, rebind): the rings go, the
        backend probes again, and the frontend builds new rings (2.6)."""
        self._guarded(lambda: (self._disconnect(), self._run([Switch(S.InitWait)])))

    def _map_rings(self) -> None:
        fe, xs = self.fe_path, self.xs
        if xs.try_read(f"{fe}/request-rx-copy") != "1":
            raise XsError("EOPNOTSUPP", "the frontend must use rx-copy (request-rx-copy=1)")
        tx_ref, rx_ref = int(xs.read(f"{fe}/tx-ring-ref")), int(xs.read(f"{fe}/rx-ring-ref"))
        evtchn = int(xs.read(f"{fe}/event-channel"))
        maps = self.k.gnttab.map_grants([(self.fe, tx_ref, False), (self.fe, rx_ref, False)])
        good = [m for m in maps if not isinstance(m, int)]
        if len(good) != 2:
            if good:
                self.k.gnttab.unmap_grants(good)
            raise OSError(f"cannot map the rings of d{self.fe}: {maps}")
        self.maps = good
        flag = lambda k: xs.try_read(f"{fe}/{k}") == "1"  # noqa: E731
        features = VifFeatures(sg=flag("feature-sg"), gso_tcpv4=flag("feature-gso-tcpv4"),
                               rx_notify=flag("feature-rx-notify"))
        mtu = int(xs.try_read(f"{self.path}/mtu") or 1500)
        tx, rx = BackRing(good[0].page, NETIF_TX_ENTRY_SIZE), BackRing(good[1].page,
                                                                         NETIF_RX_ENTRY_SIZE)
        for ring in (tx, rx):  # BACK_RING_ATTACH where the frontend left the indices
            start = ring.statistics().rsp_prod
            ring.attach(start, start)
        self.core = NetbackCore(tx, rx, features, mtu)
        if flag("feature-persistent"):  # a ring's worth of grants per direction
            self.pmaps = PersistentMaps(self.k.gnttab, self.fe, max(tx.size, rx.size))
        self.port = self.k.evtchn.bind_interdomain(self.fe, evtchn)
        self.k.evtchn.on(self.port, lambda _p: self.service.kick(self))

    def _attach(self) -> None:
        bridges = self.dom0.bridges
        if self.bridge_name not in bridges:
            bridges[self.bridge_name] = Bridge(self.bridge_name)
        self.bridge = bridges[self.bridge_name]
        self.bport = VifPort(self, self.name, self.core.features.gso_tcpv4)
        self.bridge.add_port(self.bport)
        if self.pcap is None:
            self._open_pcap()
        self.xs.write(f"{self.path}/hotplug-status", "connected")
        self.service.kick(self)  # requests may be waiting already

    def _open_pcap(self) -> None:
        """<rundir>/<name>.pcap; a restarted Domain-0 (or a re-attached vif)
        appends to the file its predecessor wrote, without a second header."""
        path = os.path.join(self.k.rundir, f"{self.name}.pcap")
        self.pcap_file = open(path, "ab")  # noqa: SIM115 - lives as long as the vif
        fresh = self.pcap_file.tell() == 0
        out = self.pcap_file if fresh else _SkipHeader(self.pcap_file)
        self.pcap = dpkt.pcap.Writer(out, snaplen=PCAP_SNAPLEN, nano=True)

    def _disconnect(self) -> None:
        if self.bport is not None and self.bridge is not None:
            self.bridge.remove_port(self.bport)
        self.bport = None
        if self.core is not None:
            self._keep_counters()
            for ring in (self.core.tx, self.core.rx):
                ring.release()
            self.core = None
        if self.port is not None:
            self.k.evtchn.close(self.port)
            self.port = None
        if self.pmaps is not None:
            pmaps, self.pmaps = self.pmaps, None
            bad = [st for st in pmaps.clear() if st != 0]
            if bad:
                print(f"netback {self.name}: {len(bad)} persistent grants would not unmap: "
                      f"{bad[:4]}", flush=True)
        if self.maps:
            self.k.gnttab.unmap_grants(self.maps)
            self.maps = []

    def _keep_counters(self) -> None:
        for key, value in self.core.counters.as_dict().items():
            self.counters_total[key] = self.counters_total.get(key, 0) + value

    # ---- the data path (called by the service) ---------------------------

    def bridge_input(self, frame: bytes, gso_size: int) -> None:
        if self.bridge is not None and self.bport is not None:
            self.bridge.input(self.bport, frame, gso_size)

    def capture(self, frame: bytes) -> None:
        if self.pcap is not None:
            self.pcap.writepkt(frame, time.time_ns() / 1e9)

    def log_drop(self, reason: str) -> None:
        print(f"netback {self.name}: dropped a packet: {reason}", flush=True)

    def finish_turn(self) -> None:
        core = self.core
        if self.pmaps is not None:
            self.pmaps.end_turn()
        if self.pcap_file is not None:
            self.pcap_file.flush()
        if core is None:
            return
        notify = core.push_tx()
        notify = core.push_rx() or notify
        if core.error is not None:
            self.fatal(f"frontend broke the netif protocol: {core.error}")
            return
        if notify and self.port is not None:
            self.k.evtchn.notify(self.port)
        if core.tx_more() or core.rx_ready():  # else req_event wakes us (build_rx)
            self.service.kick(self)

    # ---- counters --------------------------------------------------------

    def counters(self) -> dict[str, int]:
        now = self.core.counters.as_dict() if self.core is not None else {}
        keys = now.keys() | self.counters_total.keys()
        return {k: self.counters_total.get(k, 0) + now.get(k, 0) for k in sorted(keys)}

    def publish_stats(self) -> None:
        counters = self.counters()
        if counters != self.published:
            try:
                for key, value in counters.items():
                    self.xs.write(f"{self.path}/statistics/{key}", str(value))
            except XsError:
                return
            self.published = counters

    def describe(self) -> dict:
        xs = self.xs
        return {"devid": self.devid, "name": self.name, "bridge": self.bridge_name,
                "mac": xs.try_read(f"{self.path}/mac"), "ip": xs.try_read(f"{self.path}/ip"),
                "backend_state": xs.try_read(f"{self.path}/state"),
                "frontend_state": xs.try_read(f"{self.fe_path}/state"),
                "error": self.core.error if self.core is not None else None,
                "persistent_grants": len(self.pmaps) if self.pmaps is not None else None,
                **self.counters()}

    # ---- the rest --------------------------------------------------------

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        self._disconnect()
        if self.pcap_file is not None:
            self.pcap_file.close()
            self.pcap = self.pcap_file = None
        try:
            self.xs.unwatch(f"{self.fe_path}/state", f"netback-{self.fe}-{self.devid}")
        except XsError:
            pass
        self.service.forget(self)


class _SkipHeader:
    """A file whose first write (dpkt's pcap file header) is dropped."""

    def __init__(self, f) -> None:
        self.f, self.first = f, True

    def write(self, data: bytes) -> int:
        if self.first:
            self.first = False
            return len(data)
        return self.f.write(data)
