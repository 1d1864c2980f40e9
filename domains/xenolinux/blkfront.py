"""blkfront's adapter in XenoLinux: xenbus, the ring, grants, the block API.

Rules:
1. The toolstack wrote device/vbd/<devid> (state Initialising, backend
   path); we watch the backend's state and follow the table in
   domains.kernel.xenbus_state: set up a ring (granted frames, an unbound
   port, ring-ref/event-channel in one transaction) -> Initialised; on
   backend Connected read its features and connect -> Connected.
2. BlkfrontCore owns requests, shadows and grants; this adapter moves pages
   and events. Reads and writes go through whole guest pages; the caller's
   callback runs when the I/O completes (from the event loop).
3. When the backend goes away and comes back (reference 2.6) the core parks
   in-flight I/O and re-issues it on the new ring: callers see a stall.
"""

from collections.abc import Callable

from domains.kernel.gnttab import Granter
from domains.kernel.ringio import FrontendRing
from domains.kernel.xenbus_state import Duty, Role, Switch, next_actions, parse_state
from domains.xenolinux.blkfront_core import BlkfrontCore
from domains.xenolinux.blkfront_io import BackendFeatures, BlockIo, Completion
from hypervisor.public import trace
from hypervisor.public.blkif import (
    BLKIF_ENTRY_SIZE,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    SECTOR_SIZE,
)
from hypervisor.public.xen import PAGE_SIZE

_OP_NAMES = {BLKIF_OP_READ: "read", BLKIF_OP_WRITE: "write",
             BLKIF_OP_FLUSH_DISKCACHE: "flush"}
RING_PAGE_ORDER = 1  # 64 slots: many requests in flight
FEATURE_KEYS = ("sectors", "info", "sector-size", "feature-flush-cache", "feature-barrier",
                "feature-discard", "discard-secure", "feature-persistent")
Callback = Callable[[int, bytes], None]  # (BLKIF_RSP_*, data read or b"")


class _Pages:
    def __init__(self, kernel) -> None:
        self.k = kernel

    def alloc(self):
        pfn = self.k.frames.alloc()
        return pfn, self.k.page(pfn)

    def free(self, pfn: int) -> None:
        self.k.frames.release(pfn)


class Blkfront:
    def __init__(self, guest, devid: int, on_connect: Callable[["Blkfront"], None] | None = None):
        self.g, self.k, self.xs = guest, guest.kernel, guest.xs
        self.devid, self.path = devid, f"device/vbd/{devid}"
        self.backend_path = self.xs.read(f"{self.path}/backend")
        self.backend_id = int(self.xs.read(f"{self.path}/backend-id"))
        self.core = BlkfrontCore(Granter(self.k, self.backend_id), _Pages(self.k), handle=devid)
        self.ring: FrontendRing | None = None
        self.features: BackendFeatures | None = None
        self.on_connect = on_connect
        self.trace_ids: dict[int, int] = {}  # id(io) -> the submitter's trace id
        # blkfront.ring_start=N on the command line starts the ring's free-running
        # indices at N (to exercise 2^32 wrap-around on a real host).
        opts = dict(w.split("=", 1) for w in guest.si.cmdline.split() if "=" in w)
        self.ring_start = int(opts.get("blkfront.ring_start", "0")) & 0xFFFFFFFF
        self.xs.watch(f"{self.backend_path}/state", f"blkfront-{devid}", lambda *_: self.changed())

    # ---- xenbus ----------------------------------------------------------

    def changed(self) -> None:
        mine = parse_state(self.xs.try_read(f"{self.path}/state"))
        other = parse_state(self.xs.try_read(f"{self.backend_path}/state"))
        self.g.printk(f"blkfront {self.devid}: frontend {mine.name}, backend {other.name}")
        for action in next_actions(Role.FRONTEND, mine, other):
            if isinstance(action, Switch):
                self.xs.write(f"{self.path}/state", str(int(action.state)))
            else:
                self._duty(action)

    def _duty(self, duty: Duty) -> None:
        if duty is Duty.SETUP_RING:
            self._setup_ring()
        elif duty is Duty.FREE_RING:
            self._free_ring()
        elif duty in (Duty.CONNECT, Duty.UPDATE_CAPACITY):
            self._connect(duty is Duty.CONNECT)
        elif duty is Duty.REPORT_ERROR:
            self.g.printk(f"blkfront {self.devid}: error {self.core.error}")

    def _setup_ring(self) -> None:
        self.ring = FrontendRing(self.k, self.backend_id, BLKIF_ENTRY_SIZE, RING_PAGE_ORDER,
                                 start=self.ring_start)
        self.k.evtchn.on(self.ring.port, lambda _p: self._on_event())
        refs = {"ring-ref": self.ring.grefs[0]} if RING_PAGE_ORDER == 0 else {
            f"ring-ref{i}": g for i, g in enumerate(self.ring.grefs)}
        keys = (*refs.items(), ("ring-page-order", RING_PAGE_ORDER),
                ("event-channel", self.ring.port), ("protocol", "x86_64-abi"),
                ("feature-persistent", 1))
        self.xs.write_all(self.path, keys)  # talk_to_blkback

    def _free_ring(self) -> None:
        self.core.suspend()
        if self.ring is not None and not self.ring.close():
            self.g.printk(f"blkfront {self.devid}: backend still maps the ring")
        self.ring = None

    def _connect(self, first: bool) -> None:
        keys = {k: v for k in FEATURE_KEYS
                if (v := self.xs.try_read(f"{self.backend_path}/{k}")) is not None}
        self.features = BackendFeatures.from_keys(keys)
        if first and self.ring is not None:
            reissued = self.core.connect(self.ring.ring, self.features)
            self.g.printk(f"blkfront: xvd{chr(97 + ((self.devid >> 4) & 15))}: "
                          f"{self.features.sectors} sectors, persistent grants "
                          f"{'on' if self.core.persistent else 'off'}, "
                          f"{len(reissued)} requests re-issued")
            self._push()
            if self.on_connect is not None:
                self.on_connect(self)

    def unplugged(self) -> None:
        """The toolstack removed the device: fail what is still queued."""
        if self.ring is not None:
            self._free_ring()
        for done in self.core.abandon():
            self._finish(done)
        try:
            self.xs.unwatch(f"{self.backend_path}/state", f"blkfront-{self.devid}")
        except OSError:
            pass

    # ---- I/O -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.features is not None and self.ring is not None

    def read(self, sector: int, nr_sectors: int, callback: Callback) -> None:
        pages = self._pages(nr_sectors)
        io = BlockIo(BLKIF_OP_READ, sector, nr_sectors, tuple(pages),
                     cookie=(callback, pages, nr_sectors))
        self._submit(io)

    def write(self, sector: int, data: bytes, callback: Callback) -> None:
        nr = -(-len(data) // SECTOR_SIZE)
        pages = self._pages(nr)
        for i, (_, page) in enumerate(pages):
            chunk = data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
            page[:len(chunk)] = chunk
        self._submit(BlockIo(BLKIF_OP_WRITE, sector, nr, tuple(pages),
                             cookie=(callback, pages, 0)))

    def flush(self, callback: Callback) -> None:
        self._submit(BlockIo(BLKIF_OP_FLUSH_DISKCACHE, cookie=(callback, [], 0)))

    def _pages(self, nr_sectors: int) -> list:
        n = -(-nr_sectors * SECTOR_SIZE // PAGE_SIZE)
        return [(pfn, self.k.page(pfn)) for pfn in (self.k.frames.alloc() for _ in range(n))]

    def _submit(self, io: BlockIo) -> None:
        if trace.on:
            self._trace_submit(io)
        self.core.submit(io)
        self.k.call_soon_once(self._push)  # every submit of this turn: one push

    def _push(self) -> None:
        if self.ring is not None and self.core.push():
            self.k.evtchn.notify(self.ring.port)

    def _on_event(self) -> None:
        for done in self.core.handle_responses():
            self._finish(done)
        self._push()

    # ---- tracing (rule: the submitter's trace id follows its requests) -----

    def _trace_submit(self, io: BlockIo) -> None:
        tid = trace.current  # the system call being served
        self.trace_ids[id(io)] = tid
        self.core.on_issue = self._trace_issue
        what = _OP_NAMES.get(io.operation, "request")
        if io.nr_sectors:
            what += f" of {io.nr_sectors} sectors at sector {io.sector}"
        trace.stamp(trace.BLKFRONT_SUBMIT, tid, self.k.domid, io.sector, what)

    def _trace_issue(self, req_id: int, io: BlockIo) -> None:
        trace.stamp(trace.RING_PUSH, self.trace_ids.get(id(io), 0), self.k.domid, req_id)

    def _finish(self, done: Completion) -> None:
        if self.trace_ids:
            tid = self.trace_ids.pop(id(done.io), 0)
            trace.stamp(trace.BLKFRONT_RESPONSE, tid, self.k.domid, done.req_id,
                        "OK" if done.status == 0 else f"status {done.status}")
        callback, pages, nr = done.io.cookie
        data = b"".join(bytes(p) for _, p in pages)[:nr * SECTOR_SIZE] if nr else b""
        for pfn, page in pages:
            page.release()
            self.k.frames.release(pfn)
        callback(done.status, data)




def probe(guest, on_connect=None) -> dict[int, Blkfront]:
    """xenbus frontend probe: every vbd the toolstack gives us, now and later
    (a watch on device/vbd sees hot-attached and hot-detached disks)."""
    disks: dict[int, Blkfront] = {}

    def rescan(*_) -> None:
        try:
            devids = {int(d) for d in guest.xs.directory("device/vbd")}
        except OSError:
            devids = set()
        for devid in devids - disks.keys():
            disks[devid] = Blkfront(guest, devid, on_connect)
        for devid in disks.keys() - devids:
            disks.pop(devid).unplugged()

    guest.xs.watch("device/vbd", "blkfront-probe", rescan)
    return disks
