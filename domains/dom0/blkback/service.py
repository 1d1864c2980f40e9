"""blkback's adapter in Domain-0: xenbus, the shared ring, grants, the disk.

Rules:
1. Devices are found the way Linux's xenbus backend finds them: a watch on
   /local/domain/0/backend/vbd; each <frontend>/<devid> directory becomes a
   VbdBackend that probes (-> InitWait) and then follows the frontend's
   state through the table in domains.kernel.xenbus_state.
2. A vbd's `params` names an image; the physical disk is the controller
   that serves that image (Xen's device list says which). Guest pages are
   mapped with GNTMAP_device_map so the controller can DMA straight into
   them; nothing is copied in Dom0.
3. BlkbackCore decides (validation, grants, ordering); this adapter moves
   events and plans, and translates device statuses to BLKIF_RSP_*.
4. A frontend that breaks the ring protocol is disconnected (Closing)
   without touching any other device.
"""

from domains.dom0.blkback.core import BlkbackCore, BlkbackOutput, IoPlan
from domains.dom0.blkback.vbd import DiskFlags, DiskOp, VbdConfig, backend_keys
from domains.dom0.drivers import device_list
from domains.dom0.xenbus_backend import XenbusBackend
from domains.dom0.xenstored.perms import XsError
from domains.kernel.ringio import BackendRing
from domains.kernel.xenbus_state import Duty, Event, Role, Switch, next_actions
from hypervisor.public import hops, trace
from hypervisor.public.blkif import (
    BLKIF_ENTRY_SIZE,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
)
from hypervisor.public.diskdev import DISK_FLAG_FUA, DiskStatus
from hypervisor.public.diskdev import DiskOp as Op
from hypervisor.public.xenbus import XenbusState as S

MAX_RING_PAGE_ORDER = 3
ROOT = "/local/domain/0/backend/vbd"
DEVICE_OPS = {DiskOp.READ: Op.read, DiskOp.WRITE: Op.write, DiskOp.FLUSH: Op.flush,
              DiskOp.DISCARD: Op.discard}


def blkif_status(status: int) -> int:
    if status == DiskStatus.ok:
        return BLKIF_RSP_OKAY
    return BLKIF_RSP_EOPNOTSUPP if status == DiskStatus.unsupported else BLKIF_RSP_ERROR


class Mapper:
    """BlkbackCore's GrantMapper for one frontend: map for DMA by our disks."""

    def __init__(self, kernel, fe: int) -> None:
        self.k, self.fe = kernel, fe

    def map(self, refs):
        return self.k.gnttab.map_grants([(self.fe, g, ro) for g, ro in refs], device=True)

    def unmap(self, mappings) -> None:
        if mappings:
            self.k.gnttab.unmap_grants(list(mappings))


class BlkbackService:
    """Watches the backend/vbd tree and runs one VbdBackend per device."""

    def __init__(self, dom0) -> None:
        self.dom0 = dom0
        self.backends: dict[tuple[int, int], VbdBackend] = {}
        dom0.xs.watch(ROOT, "blkback", lambda *_: self.scan())

    def scan(self) -> None:
        xs = self.dom0.xs
        for fe in xs.try_directory(ROOT):
            for devid in xs.try_directory(f"{ROOT}/{fe}"):
                key = (int(fe), int(devid))
                if key not in self.backends and xs.try_read(f"{ROOT}/{fe}/{devid}/state"):
                    self.backends[key] = VbdBackend(self, *key)
        for be in list(self.backends.values()):
            if xs.try_read(f"{be.path}/state") is None:
                be.remove()

    def forget(self, be: "VbdBackend") -> None:
        self.backends.pop((be.fe, be.devid), None)


class VbdBackend(XenbusBackend):
    KIND = "vbd"

    def __init__(self, service: BlkbackService, fe: int, devid: int) -> None:
        super().__init__(service, fe, devid)
        self.disk = self._find_disk()
        self.ring: BackendRing | None = None
        self.core: BlkbackCore | None = None
        self.pending_actions: list = []
        self.done: list[tuple[int, int]] = []  # device completions not yet answered
        self.traced: dict[int, tuple[int, int]] = {}  # tag -> (trace id, request id)
        self.removed = False
        self._guarded(lambda: self._run(next_actions(Role.BACKEND, self.state, self.other,
                                                     Event.PROBE)))
        self.xs.watch(f"{self.fe_path}/state", f"blkback-{fe}-{devid}", lambda *_: self.changed())

    # ---- xenbus ----------------------------------------------------------

    @property
    def log_name(self) -> str:
        return f"blkback d{self.fe}/{self.devid}"

    def changed(self) -> None:
        if not self.removed and not self.pending_actions:
            self._guarded(lambda: self._run(next_actions(Role.BACKEND, self.state, self.other)))

    def _before_fatal(self) -> None:
        self.pending_actions = []  # Closing replaces what was waiting for the device

    def _run(self, actions: list) -> None:
        while actions:
            action = actions.pop(0)
            if isinstance(action, Switch):
                self.xs.write(f"{self.path}/state", str(int(action.state)))
            elif not self._duty(action):
                self.pending_actions = actions  # resumed once in-flight I/O drained
                return

    def _duty(self, duty: Duty) -> bool:
        """Perform one duty; False to pause the action list."""
        if duty is Duty.PUBLISH_FEATURES:
            self._publish_features()
        elif duty is Duty.MAP_RING:
            self._map_ring()
        elif duty is Duty.PUBLISH_DISK:
            for key, value in backend_keys(self.vbd).items():
                self.xs.write(f"{self.path}/{key}", value)
        elif duty is Duty.DISCONNECT:
            return self._disconnect()
        elif duty is Duty.REMOVE_IF_OFFLINE:
            if self.xs.try_read(f"{self.path}/online") == "0":
                self.remove()
        elif duty is Duty.REMOVE:
            self.remove()
        elif duty is Duty.REPORT_ERROR:
            self._error("blkback: device error")
        return True

    def _publish_features(self) -> None:
        for key, value in (("feature-persistent", "1"), ("feature-flush-cache", "1"),
                           ("feature-barrier", "1"), ("feature-discard", "1"),
                           ("max-ring-page-order", str(MAX_RING_PAGE_ORDER))):
            self.xs.write(f"{self.path}/{key}", value)

    # ---- the ring --------------------------------------------------------

    @property
    def vbd(self) -> VbdConfig:
        readonly = self.xs.try_read(f"{self.path}/mode") == "r"
        sectors = self.disk.capacity_sectors if self.disk is not None else 0
        return VbdConfig(sectors=sectors, readonly=readonly)

    def _map_ring(self) -> None:
        fe = self.fe_path
        order = int(self.xs.try_read(f"{fe}/ring-page-order", "0") or 0)
        if self.disk is None:
            raise XsError("ENODEV", "no physical disk for this vbd")
        if not 0 <= order <= MAX_RING_PAGE_ORDER:
            raise XsError("EINVAL", f"ring-page-order {order} (at most {MAX_RING_PAGE_ORDER})")
        keys = ["ring-ref"] if order == 0 else [f"ring-ref{i}" for i in range(1 << order)]
        grefs = [int(self.xs.read(f"{fe}/{k}")) for k in keys]
        port = int(self.xs.read(f"{fe}/event-channel"))
        self.ring = BackendRing(self.k, self.fe, grefs, port, BLKIF_ENTRY_SIZE)
        persistent = self.xs.try_read(f"{fe}/feature-persistent") == "1"
        self.core = BlkbackCore(self.ring.ring, self.vbd, Mapper(self.k, self.fe),
                                persistent=persistent)
        self.k.evtchn.on(self.ring.port, lambda _p: self._poll())
        self.k.call_soon(self._poll)

    def restart(self) -> None:
        """Model a backend driver restart (unbind and rebind, reference 2.6):
        drain and unmap the ring, then probe again; the frontend sets up a
        new ring and re-issues whatever had no response."""
        self._guarded(lambda: self._run([Duty.DISCONNECT, Switch(S.InitWait)]))

    def _poll(self) -> None:
        if self.core is not None:
            self._guarded(lambda: self._handle(self.core.poll()))

    def _handle(self, out: BlkbackOutput) -> None:
        for plan in out.plans:
            self._submit(plan)
        if out.notify and self.ring is not None:
            hops.stamp(hops.BACK_NOTIFY, self.fe)
            self.k.evtchn.notify(self.ring.port)
        if out.disconnect is not None:
            self._error(f"frontend broke the ring protocol: {out.disconnect}")
            self._run(next_actions(Role.BACKEND, self.state, self.other, Event.FATAL))
        if self.pending_actions and self.core is not None and self.core.in_flight() == 0:
            actions, self.pending_actions = self.pending_actions, []
            self._run(actions)

    def _submit(self, plan: IoPlan) -> None:
        hops.stamp(hops.BACK_SUBMIT, self.fe)
        if trace.on:  # a local id, joined to the frontend's by the collector
            tid = trace.new_id()
            self.traced[plan.tag] = (tid, plan.id)
            trace.stamp(trace.BLKBACK_DISPATCH, tid, self.fe, plan.id)
        done = lambda status, tag=plan.tag: self._complete(tag, status)  # noqa: E731
        if plan.flags & DiskFlags.PREFLUSH and plan.disk_op is not DiskOp.FLUSH:
            self.disk.flush()  # the device runs commands in ring order
        segs = [(s.mapping.bus_addr, s.first_sect, s.last_sect) for s in plan.segments]
        flags = DISK_FLAG_FUA if plan.flags & DiskFlags.FUA else 0
        self.disk.submit(DEVICE_OPS[plan.disk_op], plan.sector, segs, flags, done,
                         nr_sectors=plan.nr_sectors)

    def _complete(self, tag: int, status: int) -> None:
        """Collect an interrupt's completions; answer them all with one push."""
        if trace.on and tag in self.traced:
            tid, req_id = self.traced.pop(tag)
            trace.stamp(trace.BLKBACK_RESPONSE, tid, self.fe, req_id)
        if not self.done:
            self.k.call_soon(self._complete_batch)
        self.done.append((tag, blkif_status(status)))

    def _complete_batch(self) -> None:
        done, self.done = self.done, []
        if self.core is not None and done:
            self._guarded(lambda: self._handle(self.core.complete_all(done)))

    def _disconnect(self) -> bool:
        if self.core is not None and self.core.in_flight():
            return False
        if self.core is not None:
            self.core.shutdown()
            self.core = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        return True

    # ---- the rest --------------------------------------------------------

    def _find_disk(self):
        params = self.xs.try_read(f"{self.path}/params") or ""
        for dev in device_list(self.k):
            if dev.get("image") == params and dev["name"] in self.dom0.disks:
                return self.dom0.disks[dev["name"]]
        self._error(f"no physical disk serves {params!r}")
        return None

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        self._disconnect()
        try:
            self.xs.unwatch(f"{self.fe_path}/state", f"blkback-{self.fe}-{self.devid}")
        except XsError:
            pass
        self.service.forget(self)
