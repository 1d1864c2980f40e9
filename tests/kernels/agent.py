"""A test guest: XenoLinux plus an agent that runs commands from xenstore.

The test (acting as the toolstack in Dom0) writes a JSON command to the
guest-owned node ``data/cmd``; the agent runs it with real hypercalls from
this real DomU and answers in ``data/res`` with the same id. Events that
arrive on ports it bound are counted in ``self.events``.
"""

import hashlib
import json

from domains.kernel.gnttab import GrantMapping
from domains.kernel.hypercall import XenError
from domains.kernel.xenbus import XenbusError
from domains.xenolinux.kernel import boot


class Agent:
    def __init__(self, kernel) -> None:
        self.k = kernel
        self.g = boot(kernel)
        self.events: dict[int, int] = {}
        self.echo: set[int] = set()
        self.maps: dict[int, GrantMapping] = {}
        self.pages: dict[int, int] = {}  # gref -> pfn
        self.last = None
        self.g.xs.watch("data/cmd", "agent", lambda *_: self.on_cmd())

    def on_cmd(self) -> None:
        raw = self.g.xs.try_read("data/cmd")
        if not raw:
            return
        cmd = json.loads(raw)
        if cmd["id"] == self.last:
            return
        self.last = cmd["id"]
        try:
            result = getattr(self, "op_" + cmd["op"])(**cmd.get("args", {}))
            if result is _LATER:
                return  # the op answers when its I/O completes
            res = {"id": cmd["id"], "ok": True, "result": result}
        except (XenError, XenbusError, OSError, TypeError, KeyError) as exc:
            res = {"id": cmd["id"], "ok": False, "error": str(exc),
                   "name": getattr(exc, "name", None)}
        self.g.xs.write("data/res", json.dumps(res))

    # ---- xenstore -------------------------------------------------------

    def op_xs_read(self, path):
        return self.g.xs.read(path)

    def op_xs_write(self, path, value):
        self.g.xs.write(path, value)

    def op_xs_rm(self, path):
        self.g.xs.rm(path)

    def op_xs_dir(self, path):
        return self.g.xs.directory(path)

    def op_xs_watch(self, path, token):
        def record(p, t):
            self.g.xs.write(f"data/watch-{t}", p)
        self.g.xs.watch(path, token, record)

    def op_tx_start(self):
        return self.g.xs.transaction_start()

    def op_tx_read(self, tx, path):
        return self.g.xs.read(path, tx)

    def op_tx_write(self, tx, path, value):
        self.g.xs.write(path, value, tx)

    def op_tx_end(self, tx, commit=True):
        self.g.xs.transaction_end(tx, commit)

    # ---- event channels ------------------------------------------------

    def _count(self, port):
        self.events[port] = self.events.get(port, 0) + 1
        if port in self.echo:
            self.k.evtchn.notify(port)

    def op_alloc_unbound(self, remote, echo=False):
        port = self.k.evtchn.alloc_unbound(remote)
        self._listen(port, echo)
        return port

    def op_bind(self, remote, port, echo=False):
        local = self.k.evtchn.bind_interdomain(remote, port)
        self._listen(local, echo)
        return local

    def _listen(self, port, echo):
        if echo:
            self.echo.add(port)
        self.k.evtchn.on(port, self._count)

    def op_send(self, port, times=1):
        return [self.k.evtchn.send(port) for _ in range(times)][-1]

    def op_notify(self, port):
        """A posted EVTCHNOP_send (no return value), as a driver notifies."""
        self.k.evtchn.notify(port)

    def op_events(self, port):
        return self.events.get(port, 0)

    def op_close(self, port):
        self.k.evtchn.close(port)

    def op_status(self, port):
        return self.k.evtchn.status(port)

    # ---- grants ---------------------------------------------------------

    def op_grant(self, domid, fill, readonly=False):
        pfn = self.k.frames.alloc()
        self.k.page(pfn)[:] = bytes([fill]) * 4096
        ref = self.k.gnttab.grant_access(domid, pfn, readonly)
        self.pages[ref] = pfn
        return ref

    def op_page(self, ref):
        return self.k.page(self.pages[ref])[:16].hex()

    def op_in_use(self, ref):
        return self.k.gnttab.in_use(ref)

    def op_end_access(self, ref):
        return self.k.gnttab.end_access(ref)

    def op_map(self, domid, ref, readonly=False):
        res = self.k.gnttab.map_grants([(domid, ref, readonly)])[0]
        if isinstance(res, int):
            return {"status": res}
        self.maps[res.handle] = res
        return {"status": 0, "handle": res.handle}

    def op_map_raw(self, domid, ref, flags):
        from hypervisor.public.grant_table import GnttabOp
        from hypervisor.public.xen import Hypercall
        _, out = self.k.xen.call(Hypercall.grant_table_op, GnttabOp.map_grant_ref,
                                 [{"dom": domid, "ref": ref, "flags": flags}])
        return out[0]["status"]

    def op_peek(self, handle, n=16):
        return bytes(self.maps[handle].page[:n]).hex()

    def op_poke(self, handle, fill):
        self.maps[handle].page[:16] = bytes([fill]) * 16

    def op_unmap(self, handle):
        return self.k.gnttab.unmap_grant(self.maps.pop(handle))

    def op_copy(self, ops):
        return self.k.gnttab.copy(ops)


def main(kernel) -> None:
    Agent(kernel)
    kernel.run()


def _raw_hypercall(self, frame_hex, wait_ms=2000):
    """Send an arbitrary frame as this domain's trap; return (rc, seq) or None."""
    from hypervisor.public import envelope
    sock = self.k.xen.sock
    sock.send(bytes.fromhex(frame_hex))
    while sock.poll(wait_ms):
        try:
            kind, seq, rc, _ = envelope.decode_from_xen(sock.recv())
        except envelope.EnvelopeError:
            return {"bad_reply": True}
        if kind == envelope.UPCALL:
            self.k.xen.upcall = True
            continue
        if seq == self.k.xen.block_seq:
            self.k.xen.block_seq = None
            continue
        return {"rc": rc, "seq": seq}
    return None


Agent.op_hypercall_raw = _raw_hypercall


# ---- a ring between two agents (frontend and backend), echoing counters ----

def _ring_front(self, backend, order=0, start=0):
    from domains.kernel.ringio import FrontendRing
    self.front = FrontendRing(self.k, backend, 16, order, start)
    self.k.evtchn.on(self.front.port, lambda _p: self._front_event())
    return {"grefs": self.front.grefs, "port": self.front.port, "size": self.front.ring.size}


def _ring_back(self, frontend, grefs, port, start=0):
    from domains.kernel.ringio import BackendRing
    self.back = BackendRing(self.k, frontend, grefs, port, 16, start)
    self.k.evtchn.on(self.back.port, lambda _p: self._back_event())
    self._back_event()


def _back_event(self):
    ring = self.back.ring
    while True:
        reqs = ring.take_requests()
        for r in reqs:
            ring.put_response((int.from_bytes(r[:8], "little") + 1).to_bytes(8, "little"))
        if reqs:
            self.back.push()
        if not ring.final_check_for_requests():
            return


def _ring_run(self, count):
    self.ring_todo, self.ring_next, self.ring_done, self.ring_peak = count, 0, 0, 0
    self._front_event()


def _front_event(self):
    ring = self.front.ring
    while True:
        for rsp in ring.take_responses():
            if int.from_bytes(rsp[:8], "little") != self.ring_done + 1:
                self.g.xs.write("data/ring-result", f"bad response after {self.ring_done}")
                return
            self.ring_done += 1
        while not ring.full() and self.ring_next < self.ring_todo:
            ring.put_request(self.ring_next.to_bytes(8, "little"))
            self.ring_next += 1
        self.ring_peak = max(self.ring_peak, self.ring_next - self.ring_done)
        self.front.push()
        if self.ring_done == self.ring_todo:
            stats = ring.statistics()
            self.g.xs.write("data/ring-result",
                            f"ok {self.ring_done} peak {self.ring_peak} rsp_prod {stats.rsp_prod}")
            return
        if not ring.final_check_for_responses():
            return


Agent.op_ring_front = _ring_front
Agent.op_ring_back = _ring_back
Agent.op_ring_run = _ring_run
Agent._back_event = _back_event
Agent._front_event = _front_event


# ---- block I/O through blkfront (answers when the I/O completes) ----

def _blk(self, cmd_id, start):
    def done(status, data):
        # Values a guest writes are capped at 2048 bytes: return a digest of big reads.
        self.g.xs.write("data/res", json.dumps({"id": cmd_id, "ok": True, "result": {
            "status": status, "sha256": hashlib.sha256(data).hexdigest(),
            "data": data.hex() if len(data) <= 512 else None}}))
    start(done)
    return _LATER


def _blk_cmd(self, kind, devid=51712, sector=0, count=1, data=""):
    disk = self.g.disks[devid]
    if kind == "read":
        return lambda cb: disk.read(sector, count, cb)
    if kind == "write":
        return lambda cb: disk.write(sector, bytes.fromhex(data), cb)
    return lambda cb: disk.flush(cb)


def _op_blk(self, **args):
    return _blk(self, self.last, _blk_cmd(self, **args))


def _op_blk_connected(self, devid=51712):
    disk = self.g.disks.get(devid)
    return bool(disk and disk.connected)


_LATER = object()
Agent.op_blk = _op_blk
Agent.op_blk_connected = _op_blk_connected


def _op_blk_burst(self, devid=51712, sector=0, count=8, fill=1):
    """`count` one-sector writes at once; answers with their statuses when all are done."""
    disk, cmd_id, statuses = self.g.disks[devid], self.last, {}

    def done(i):
        def cb(status, _data):
            statuses[i] = status
            if len(statuses) == count:
                self.g.xs.write("data/res", json.dumps({"id": cmd_id, "ok": True, "result": [
                    statuses[j] for j in range(count)]}))
        return cb
    for i in range(count):
        disk.write(sector + i, bytes([(fill + i) & 0xFF]) * 512, done(i))
    return _LATER


Agent.op_blk_burst = _op_blk_burst


# ---- a rogue blkfront: its own ring, hand-made requests ----

def _op_rogue_connect(self, devid=51712):
    """Do the frontend handshake by hand (boot with blkfront=off)."""
    from domains.kernel.ringio import FrontendRing
    from hypervisor.public.blkif import BLKIF_ENTRY_SIZE
    path = f"device/vbd/{devid}"
    backend = self.g.xs.read(f"{path}/backend")
    self.rogue = FrontendRing(self.k, 0, BLKIF_ENTRY_SIZE)
    self.rogue_backend = backend
    for key, value in (("ring-ref", self.rogue.grefs[0]), ("event-channel", self.rogue.port),
                       ("protocol", "x86_64-abi"), ("state", 3)):
        self.g.xs.write(f"{path}/{key}", str(value))
    return backend


def _op_rogue_request(self, operation=0, segments=((1, 0, 7),), nr_segments=None, sector=0,
                      own_page=False, req_id=1):
    """Push one request; a segment's gref 1 is replaced by a page we granted when own_page."""
    from hypervisor.public.blkif import BlkifRequest, BlkifSegment
    segs = []
    for gref, first, last in segments:
        if own_page:
            gref = self.k.gnttab.grant_access(0, self.k.frames.alloc())
        segs.append(BlkifSegment(gref, first, last))
    n = len(segs) if nr_segments is None else nr_segments
    raw = BlkifRequest(operation, req_id, sector, 51712, n, tuple(segs[:11])).pack()
    self.rogue.ring.put_request(raw)
    self.rogue.ring.push_requests()
    self.k.evtchn.notify(self.rogue.port)
    self.k.xen.flush()


def _op_rogue_responses(self):
    from hypervisor.public.blkif import BlkifResponse
    ring = self.rogue.ring
    return [[r.id, r.status] for r in map(BlkifResponse.unpack, ring.take_responses())]


def _op_rogue_bogus_index(self):
    """Claim a whole extra ring of requests (RING_REQUEST_PROD_OVERFLOW)."""
    idx = self.rogue.buf[:16].cast("I")
    idx[0] = (idx[0] + 10 * self.rogue.ring.size) & 0xFFFFFFFF
    idx.release()
    self.k.evtchn.notify(self.rogue.port)
    self.k.xen.flush()


Agent.op_rogue_connect = _op_rogue_connect
Agent.op_rogue_request = _op_rogue_request
Agent.op_rogue_responses = _op_rogue_responses
Agent.op_rogue_bogus_index = _op_rogue_bogus_index


# ---- PV MMU: address spaces over Xen-validated page tables, and raw batches ----

def _op_mmu_info(self):
    return {"domid": self.k.domid, "mfn_base": self.k.boot["mfn_base"],
            "nr_pages": self.k.boot["nr_pages"]}


def _op_vm_create(self, vmmax=None):
    from domains.xenolinux.vm import VMMAX, AddressSpace
    if not hasattr(self, "vms"):
        self.vms = {}
    aspace = AddressSpace(self.k, vmmax or VMMAX)
    vid = len(self.vms)
    self.vms[vid] = aspace
    return {"id": vid, "l2_pfn": aspace.l2_pfn, "l2_mfn": aspace.l2_mfn}


def _op_vm_map(self, id, va, pfn=None, writable=True, user=True):
    """Map `va` (to a fresh zeroed frame unless `pfn` is given) and flush."""
    if pfn is None:
        pfn = self.k.frames.alloc()
        self.k.page(pfn)[:] = bytes(4096)
    self.vms[id].map_page(va, pfn, writable, user)
    self.vms[id].flush()
    return pfn


def _op_vm_unmap(self, id, va):
    pfn = self.vms[id].unmap_page(va)
    self.vms[id].flush()
    return pfn


def _op_vm_switch(self, id):
    self.vms[id].switch_to()


def _op_vm_destroy(self, id):
    self.vms.pop(id).destroy()


def _op_vm_tables(self, id):
    aspace = self.vms[id]
    return {"l2": aspace.l2_pfn, "l1": {str(s): p for s, p in aspace.l1_tables().items()}}


def _op_vm_load(self, va, n, user=True):
    from domains.xenolinux.vm import cpu_for
    cpu = cpu_for(self.k)
    try:
        return {"data": cpu.load(va, n, user).hex()}
    except cpu.PageFault as pf:
        return {"fault": pf.reason}


def _op_vm_store(self, va, data, user=True):
    from domains.xenolinux.vm import cpu_for
    cpu = cpu_for(self.k)
    try:
        cpu.store(va, bytes.fromhex(data), user)
    except cpu.PageFault as pf:
        return {"fault": pf.reason}
    return {}


def _op_frame_peek(self, pfn, n=16):
    return bytes(self.k.page(pfn)[:n]).hex()


def _op_mmu_raw(self, updates=(), exts=(), foreigndom=None):
    """One batch, as given: Xen's verdict is {"rc", "index" of the refused entry}."""
    from domains.kernel.mmu import MmuBatch, MmuError
    from hypervisor.public.xen import DOMID_SELF
    batch = MmuBatch(self.k, DOMID_SELF if foreigndom is None else foreigndom)
    for ptr, val in updates:
        batch.queue_update(ptr, val)
    for cmd, arg1, arg2 in exts:
        batch.queue_ext(cmd, arg1, arg2)
    try:
        batch.flush()
    except MmuError as err:
        return {"rc": err.rc, "index": err.index}
    return {"rc": 0, "index": None}


Agent.op_mmu_info = _op_mmu_info
Agent.op_vm_create = _op_vm_create
Agent.op_vm_map = _op_vm_map
Agent.op_vm_unmap = _op_vm_unmap
Agent.op_vm_switch = _op_vm_switch
Agent.op_vm_destroy = _op_vm_destroy
Agent.op_vm_tables = _op_vm_tables
Agent.op_vm_load = _op_vm_load
Agent.op_vm_store = _op_vm_store
Agent.op_frame_peek = _op_frame_peek
Agent.op_mmu_raw = _op_mmu_raw


def _op_blk_stream(self, devid=51712, sector=0, count=1000, depth=8):
    """`count` one-sector writes, `depth` in flight, each sector's data named
    by its number (stream_sector). Answers when all are done with their
    statuses and the longest gap between two completions (CLOCK_MONOTONIC),
    which is where a stall shows."""
    import time
    disk, cmd_id = self.g.disks[devid], self.last
    st = {"next": 0, "done": 0, "errors": 0, "last": time.monotonic_ns(), "gap": (0, 0)}

    def issue():
        i = st["next"]
        st["next"] += 1
        disk.write(sector + i, stream_sector(sector + i), done)

    def done(status, _data):
        now = time.monotonic_ns()
        if now - st["last"] > st["gap"][1] - st["gap"][0]:
            st["gap"] = (st["last"], now)
        st["last"] = now
        st["done"] += 1
        st["errors"] += status != 0
        if st["next"] < count:
            issue()
        elif st["done"] == count:
            stats = disk.core.statistics()
            self.g.xs.write("data/res", json.dumps({"id": cmd_id, "ok": True, "result": {
                "done": st["done"], "errors": st["errors"], "gap": list(st["gap"]),
                "reissued": stats.reissued}}))
    for _ in range(min(depth, count)):
        issue()
    return _LATER


def stream_sector(n: int) -> bytes:
    """What blk_stream writes to sector n."""
    return (f"sector {n:08d} " * 32).encode()[:512]


Agent.op_blk_stream = _op_blk_stream


def _op_xs_loop(self, count=1000):
    """`count` xenstore writes to data/loop, every tenth followed by a
    transaction that increments data/txn (retried on EAGAIN, as callers of
    xenbus transactions do). Answers with the number of reconnections seen."""
    xs = self.g.xs
    xs.write("data/txn", "0")
    for i in range(count):
        xs.write("data/loop", str(i))
        if i % 10 == 9:
            while True:
                try:
                    tx = xs.transaction_start()
                    xs.write("data/txn", str(int(xs.read("data/txn", tx)) + 1), tx)
                    xs.transaction_end(tx)
                    break
                except XenbusError as exc:
                    if exc.name != "EAGAIN":
                        raise
    return {"reconnects": xs.reconnects}


Agent.op_xs_loop = _op_xs_loop
