"""Domain-0's physical disk driver (the controller of hypervisor.public.diskdev).

Rules:
1. Dom0 owns the queue pair and the info page: contiguous frames of its own
   memory, so their bus addresses are their pfns (identity IOMMU map). The
   ring is initialised (SHARED_RING_INIT) before "init" goes out.
2. The completion interrupt is the device's physical IRQ, bound with
   bind_pirq. Its handler takes every completion, FINAL_CHECKs, and then
   refills the ring from the wait queue.
3. Doorbells: commands submitted in one turn of the event loop are published
   together (call_soon), and the doorbell is rung only when push_requests()
   says so: the device arms req_event when it goes idle.
4. A buffer named by a command belongs to the device until that command's
   callback has run: do not reuse, free or unmap it before.
5. The device is not trusted: a completion with an id we never issued is
   counted and dropped; a lying rsp_prod halts the driver and fails every
   command in flight.
6. Link down and reset (hypervisor.public.platform rule 6). Every command
   stays in `cmds` until it completes. When Xen says the device is gone,
   the completions it left in the ring are taken (its last IRQ may be
   lost), the info page is zeroed (nothing is trusted until a new init),
   and the commands the device still held are failed with DiskStatus.error
   at once (`on_crash = "fail"`) or kept (`"wait"`); commands submitted
   meanwhile wait. When a replacement is up, the driver re-initialises the
   queue pair (SHARED_RING_INIT), reconnects its MMIO, sends "init", and
   the info page's interrupt re-submits every command still pending, in
   submission order (a kept command may thus run twice, as after a
   controller reset). A removed device halts the driver: everything
   pending fails. Like a controller reset, the run-time latency and fault
   switches are lost.
"""

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from domains.dom0.drivers.devinfo import InfoPageDriver
from domains.kernel.ring import FrontRing, RingError, RingStatistics
from hypervisor.public import hops, trace
from hypervisor.public.diskdev import (
    CMD_SIZE,
    DISK_INFO_MAGIC,
    DISK_RING_PAGES,
    INFO_SIZE,
    DiskFeature,
    DiskOp,
    DiskStatus,
    encode_mmio,
    pack_command,
    unpack_command_header,
    unpack_completion,
    unpack_info,
)
from hypervisor.public.xen import PAGE_SHIFT, PAGE_SIZE

Callback = Callable[[int], None]
KICK = encode_mmio("kick")


@dataclass(frozen=True, slots=True)
class DiskStatistics:
    submitted: int
    completed: int
    errors: int
    in_flight: int
    queued: int
    doorbells: int
    irqs: int
    unknown_completions: int
    resets: int  # replacements of the device this driver re-initialised
    failed_by_crash: int  # commands failed because the device died (on_crash "fail")
    ring: RingStatistics


class DiskDriver(InfoPageDriver):
    INFO_MAGIC, INFO_SIZE, unpack_info = DISK_INFO_MAGIC, INFO_SIZE, staticmethod(unpack_info)

    def __init__(self, kernel, dev: dict, ctx: zmq.Context,
                 ring_pages: int = DISK_RING_PAGES, on_crash: str = "wait") -> None:
        self.k, self.name, self.irq = kernel, dev["name"], dev["irq"]
        self.on_crash = on_crash  # rule 6: "fail" or "wait"
        self.generation = dev.get("generation", 0)
        self.link = "up"  # "down" between the device's death and its replacement
        self.ring_pfns = kernel.frames.alloc_contiguous(ring_pages)
        self.info_pfn = kernel.frames.alloc()
        first = self.ring_pfns[0]
        self.ring_buf = kernel.mem[first * PAGE_SIZE:(first + ring_pages) * PAGE_SIZE]
        self.ring = FrontRing(self.ring_buf, CMD_SIZE)
        self.info_page = kernel.page(self.info_pfn)
        self.info_page[:] = bytes(PAGE_SIZE)  # no stale magic (diskdev rule 4)
        self.info: dict | None = None
        self.error = ""
        self.inflight: dict[int, Callback | None] = {}
        self.cmds: dict[int, bytes] = {}  # every command not yet completed (rule 6)
        self.waiting: deque[bytes] = deque()
        self._ids = itertools.count(1)
        self.submitted = self.completed = self.errors = self.doorbells = self.irqs = 0
        self.unknown = self.resets = self.failed_by_crash = 0
        self.down_ns = 0  # when the link last went down
        self.irq_ns = 0  # when the last completion interrupt was handled
        self._connect(dev, ctx)

    def _connect(self, dev: dict, ctx: zmq.Context) -> None:
        self.ctx, self.mmio_addr = ctx, dev["mmio"]
        self._open_mmio()
        self.port = self.k.evtchn.bind_pirq(self.irq)
        self.k.evtchn.on(self.port, self._on_irq)
        self._init()

    def _open_mmio(self) -> None:
        self.mmio = self.ctx.socket(zmq.PUSH)
        self.mmio.setsockopt(zmq.LINGER, 0)
        self.mmio.connect(self.mmio_addr)

    def _init(self) -> None:
        self.send_mmio("init", ring_bfn=self.ring_pfns[0], ring_pages=len(self.ring_pfns),
                       info_bfn=self.info_pfn)

    # ---- link down, reset, removal (rule 6) ---------------------------------

    def device_changed(self, dev: dict) -> None:
        """Xen's device_list entry for us, after VIRQ_DEVICE."""
        state, generation = dev.get("state"), dev.get("generation", 0)
        if self.error:
            return
        if state == "removed":
            self.link_down()
            self._halt("the device was removed")
        elif generation > self.generation:
            self.link_down()  # the death and the replacement may come in one upcall
            if state == "up":
                self.reset(generation)
        elif state == "dead":
            self.link_down()

    def link_down(self) -> None:
        if self.link == "down":
            return
        self.link, self.down_ns = "down", time.monotonic_ns()
        if self.info is not None:  # what it completed before dying counts
            try:
                self._take_completions()
            except RingError:
                pass
        self.info = None
        self.info_page[:] = bytes(PAGE_SIZE)
        queued = {id_ for id_, _, _ in map(_header, self.waiting)}
        held = [id_ for id_ in self.cmds if id_ not in queued]
        if self.on_crash == "fail":
            for id_ in held:
                self.failed_by_crash += 1
                self._complete(id_, 0, DiskStatus.error)
        print(f"disk {self.name}: link down, {len(held)} commands "
              f"{'failed' if self.on_crash == 'fail' else 'kept'}, {len(queued)} queued",
              flush=True)

    def reset(self, generation: int) -> None:
        """A replacement is up: a fresh queue pair; pending commands go again."""
        self.generation, self.link = generation, "up"
        self.resets += 1
        self.ring.release()
        self.ring = FrontRing(self.ring_buf, CMD_SIZE)  # SHARED_RING_INIT
        self.waiting = deque(self.cmds.values())  # submission order; _check_info refills
        self.mmio.close(0)
        self._open_mmio()
        self._init()
        print(f"disk {self.name}: generation {generation} up, re-init; "
              f"{len(self.waiting)} commands to submit again", flush=True)

    # ---- bring-up --------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.info is not None and not self.error

    @property
    def capacity_sectors(self) -> int:
        return self.info["capacity_sectors"] if self.info else 0

    @property
    def features(self) -> DiskFeature:
        return DiskFeature(self.info["features"] if self.info else 0)

    def _info_ready(self) -> None:
        if self.resets:
            print(f"disk {self.name}: ready again, {len(self.waiting)} commands queued",
                  flush=True)
        self._refill()

    # ---- commands ----------------------------------------------------------

    def submit(self, op: int, sector: int, segments: list[tuple[int, int, int]],
               flags: int = 0, callback: Callback | None = None,
               nr_sectors: int | None = None) -> int:
        """Queue one command; ``segments`` are (bus_addr, first_sect, last_sect)
        with page-aligned bus addresses. ``callback(status)`` runs from the IRQ."""
        if self.error:
            raise OSError(f"{self.name}: {self.error}")
        if any(bus & (PAGE_SIZE - 1) for bus, _, _ in segments):
            raise ValueError("bus addresses must be page-aligned (use first_sect)")
        id_ = next(self._ids)
        segs = [(bus >> PAGE_SHIFT, first, last) for bus, first, last in segments]
        cmd = pack_command(op, id_, sector, segs, flags, nr_sectors)
        self.inflight[id_] = callback
        self.cmds[id_] = cmd
        self.submitted += 1
        if self.waiting or not self.ready or self.ring.full():
            self.waiting.append(cmd)
        else:
            self.ring.put_request(cmd)
            self._schedule_push()
        return id_

    def flush(self, callback: Callback | None = None) -> int:
        return self.submit(DiskOp.flush, 0, [], 0, callback)

    def discard(self, sector: int, nr_sectors: int, callback: Callback | None = None) -> int:
        return self.submit(DiskOp.discard, sector, [], 0, callback, nr_sectors)

    def _schedule_push(self) -> None:
        self.k.call_soon_once(self._push)  # one doorbell per event-loop turn

    def _push(self) -> None:
        if self.ring.push_requests():
            self.doorbells += 1
            hops.stamp(hops.DRV_DOORBELL, self.irq)
            trace.stamp(trace.DRIVER_DOORBELL, 0, self.irq, self.doorbells)
            self._send(KICK)

    def _refill(self) -> None:
        moved = False
        while self.waiting and not self.ring.full():
            self.ring.put_request(self.waiting.popleft())
            moved = True
        if moved:
            self._schedule_push()

    # ---- completions ---------------------------------------------------------

    def _on_irq(self, _port: int) -> None:
        self.irqs += 1
        self.irq_ns = time.monotonic_ns()
        hops.stamp(hops.DRV_IRQ, self.irq)
        trace.stamp(trace.DRIVER_IRQ, 0, self.irq, self.irqs)
        if not self._check_info():
            return
        try:
            self._take_completions()
        except RingError as exc:
            self._halt(str(exc))
            return
        self._refill()

    def _take_completions(self) -> None:
        while True:
            for raw in self.ring.take_responses():
                self._complete(*unpack_completion(raw))
            if not self.ring.final_check_for_responses():
                return

    def _complete(self, id_: int, _op: int, status: int) -> None:
        if id_ not in self.inflight:
            self.unknown += 1  # rule 5: a device answering for nothing
            return
        callback = self.inflight.pop(id_)
        self.cmds.pop(id_, None)
        self.completed += 1
        self.errors += status != DiskStatus.ok
        if callback is not None:
            callback(status)

    def _halt(self, why: str) -> None:
        self.error = why
        self.waiting.clear()
        self.cmds.clear()
        failed, self.inflight = self.inflight, {}
        for callback in failed.values():
            if callback is not None:
                callback(DiskStatus.error)

    # ---- MMIO, statistics ------------------------------------------------------

    def send_mmio(self, op: str, **fields) -> None:
        self._send(encode_mmio(op, **fields))

    def set_fault(self, mode: str, rate: float = 0.0) -> None:
        self.send_mmio("fault", mode=mode, rate=rate)

    def set_latency(self, spec: str) -> None:
        self.send_mmio("latency", spec=spec)

    def _send(self, frame: bytes) -> None:
        try:
            self.mmio.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            pass  # a dead device: the MMIO write goes nowhere, as on a bus

    def statistics(self) -> DiskStatistics:
        return DiskStatistics(self.submitted, self.completed, self.errors, len(self.inflight),
                              len(self.waiting), self.doorbells, self.irqs, self.unknown,
                              self.resets, self.failed_by_crash, self.ring.statistics())

    def describe(self) -> dict:
        info = dict(self.info or {})
        info.pop("magic", None)
        return {"name": self.name, "irq": self.irq, "port": self.port, "ready": self.ready,
                "error": self.error, "link": self.link, "generation": self.generation,
                "on_crash": self.on_crash, **info,
                "features": [f.name for f in DiskFeature if f in self.features],
                "ring_bfn": self.ring_pfns[0], "ring_slots": self.ring.size,
                "statistics": _as_dict(self.statistics())}


def _header(cmd: bytes) -> tuple[int, int, int]:
    """(id, op, sector) of a packed command."""
    op, _, _, _, id_, sector = unpack_command_header(cmd)
    return id_, op, sector


def _as_dict(stats: DiskStatistics) -> dict:
    out = {k: getattr(stats, k) for k in DiskStatistics.__slots__ if k != "ring"}
    out["ring"] = {k: getattr(stats.ring, k) for k in RingStatistics.__slots__}
    return out
