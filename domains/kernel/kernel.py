"""A domain kernel's event loop and the services every kernel shares.

Rules:
1. One thread. Work arrives as upcalls (event-channel handlers), timers,
   callbacks queued with `call_soon`, and readers of extra sockets (Dom0's
   toolstack socket).
2. When nothing is runnable the kernel arms its timer with set_timer_op
   (only if the earliest deadline changed) and blocks in Xen
   (SCHEDOP_block); the reply to the block is the wake-up. set_timer_op is
   posted: it rides in the same multicall as the block (Xen runs them in
   order), so going idle costs one trap, not two round trips. Calls posted
   during a busy turn (EVTCHNOP_send) go as one multicall at its end.
3. Timers are guest-side; Xen only provides the one-shot VIRQ_TIMER.
4. Fairness: every turn serves every source that is ready -- queued
   callbacks, upcalls, expired timers, and each extra reader (polled without
   waiting while busy) -- so a busy data path cannot starve the toolstack.
"""

import heapq
import itertools
import mmap
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable

import zmq

from domains.kernel.evtchn import EventChannelDriver
from domains.kernel.gnttab import GrantTableDriver
from domains.kernel.hypercall import HypercallClient
from domains.kernel.mm import FrameAllocator
from domains.kernel.profiling import Profiler
from hypervisor.public import trace
from hypervisor.public.event_channel import SHARED_INFO_SIZE
from hypervisor.public.start_info import FIRST_FREE_PFN, START_INFO_PFN, StartInfo
from hypervisor.public.xen import PAGE_SIZE, ConsoleIO, Hypercall, SchedOp, Virq, XenVersionCmd


class Timer:
    __slots__ = ("deadline", "fn", "cancelled")

    def __init__(self, deadline: int, fn: Callable[[], None]) -> None:
        self.deadline, self.fn, self.cancelled = deadline, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Kernel:
    """What boot.py hands to a kernel's main(): Xen, memory, events, grants."""

    def __init__(self, boot: dict, ctl: socket.socket, mem_fd: int, shinfo_fd: int) -> None:
        self.boot = boot
        self.domid: int = boot["domid"]
        self.name: str = boot["name"]
        self.privileged: bool = boot["privileged"]
        self.rundir: str = boot["rundir"]
        self.ctl = ctl
        self.mem_map = mmap.mmap(mem_fd, boot["nr_pages"] * PAGE_SIZE)
        self.mem = memoryview(self.mem_map)
        self.shinfo_map = mmap.mmap(shinfo_fd, PAGE_SIZE)
        os.close(mem_fd)
        os.close(shinfo_fd)
        self.xen = HypercallClient(boot["endpoint"], boot["secret"])
        self.evtchn = EventChannelDriver(self.xen, memoryview(self.shinfo_map)[:SHARED_INFO_SIZE])
        self.gnttab = GrantTableDriver(self.xen, self.mem, ctl)
        self.ready: deque[Callable[[], None]] = deque()
        self.queued: set[Callable[[], None]] = set()  # for call_soon_once
        self.timers: list[tuple[int, int, Timer]] = []
        self._tseq = itertools.count()
        self.armed_ns = 0
        self.readers: dict[object, Callable[[], None]] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.xen.sock, zmq.POLLIN)
        self.running = False
        self.start_info: StartInfo | None = None
        self.frames: FrameAllocator | None = None
        self.idle_blocks = 0

    # ---- boot ----------------------------------------------------------

    def early_boot(self) -> StartInfo:
        """First trap (held by Xen until the builder unpauses us), then read
        start_info, set up the grant table and the timer VIRQ."""
        self.xen.call(Hypercall.xen_version, XenVersionCmd.version)
        raw = bytes(self.mem[START_INFO_PFN * PAGE_SIZE:(START_INFO_PFN + 1) * PAGE_SIZE])
        self.start_info = StartInfo.unpack(raw)
        frames = self.gnttab.setup(self.boot["max_grant_frames"])
        self.frames = FrameAllocator(FIRST_FREE_PFN, frames[0])
        self.timer_port = self.evtchn.bind_virq(Virq.TIMER)
        self.evtchn.on(self.timer_port, lambda _p: None)
        return self.start_info

    def page(self, pfn: int) -> memoryview:
        return self.mem[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE]

    def console_io(self, text: str) -> None:
        """HYPERVISOR_console_io: Dom0 writes to Xen's console."""
        self.xen.call(Hypercall.console_io, ConsoleIO.write, {"data": text.encode()[:4096]})

    # ---- scheduling ----------------------------------------------------

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.ready.append(fn)

    def call_soon_once(self, fn: Callable[[], None]) -> None:
        """call_soon, unless `fn` is already queued (coalesces repeated wake-ups)."""
        if fn not in self.queued:
            self.queued.add(fn)
            self.ready.append(fn)

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic_ns() + int(delay_s * 1e9), fn)

    def call_at(self, deadline_ns: int, fn: Callable[[], None]) -> Timer:
        t = Timer(deadline_ns, fn)
        heapq.heappush(self.timers, (deadline_ns, next(self._tseq), t))
        return t

    def add_reader(self, sock, fn: Callable[[], None]) -> None:
        self.readers[sock] = fn
        self.poller.register(sock, zmq.POLLIN)

    def remove_reader(self, sock) -> None:
        if self.readers.pop(sock, None) is not None:
            self.poller.unregister(sock)

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        self.running = True
        prof = Profiler(self.name)
        prof.start()
        while self.running:
            self.run_once()
            if prof.prof is not None:
                prof.tick()

    def run_once(self) -> None:
        self._run_ready()
        self.xen.drain()
        if self.xen.upcall:
            self.xen.upcall = False
            self.evtchn.dispatch()
        self._run_timers()
        busy = self.ready or self.xen.upcall or not self.running
        if busy and self.readers:
            self._serve_readers(0)  # rule 4 (idle, _idle polls them anyway)
        if busy:
            # Busy: what this turn posted (its notifications) goes now, as one
            # multicall: a turn is the batch, and a peer never waits for our
            # next turn to learn of this one's work.
            if self.xen.posted:
                self.xen.flush()
            return
        self._idle()

    def _run_ready(self) -> None:
        for _ in range(len(self.ready)):
            fn = self.ready.popleft()
            self.queued.discard(fn)
            fn()

    def _run_timers(self) -> None:
        now = time.monotonic_ns()
        while self.timers and self.timers[0][0] <= now:
            t = heapq.heappop(self.timers)[2]
            if not t.cancelled:
                t.fn()
        while self.timers and self.timers[0][2].cancelled:
            heapq.heappop(self.timers)

    def _idle(self) -> None:
        """Nothing runnable: arm the timer if needed, then SCHEDOP_block."""
        deadline = self.timers[0][0] if self.timers else 0
        if deadline != self.armed_ns:
            # Posted (rule 2): nothing here reads its result; a bad deadline
            # is Xen's to log, as for any posted call.
            self.xen.post(Hypercall.set_timer_op, 0, {"deadline_ns": deadline})
            self.armed_ns = deadline
        if self.xen.upcall:
            self.xen.flush()
            return
        if trace.on:
            trace.begin(trace.KERNEL_BLOCK)
        self.xen.block_async()  # carries the posted calls
        self.xen.flush()
        self.idle_blocks += 1
        if not self.readers:
            self.xen.wait()  # a DomU: nothing but Xen can wake us
            if trace.on:
                trace.end(trace.KERNEL_WAKE)
            return
        self._serve_readers(None)
        if trace.on:
            trace.end(trace.KERNEL_WAKE)
        if self.armed_ns and self.armed_ns <= time.monotonic_ns():
            self.armed_ns = 0  # the one-shot timer has fired

    def _serve_readers(self, timeout_ms: int | None) -> None:
        """Serve every ready extra reader (and take Xen's messages); timeout
        None sleeps until one of them or Xen is ready."""
        for sock, _ in self.poller.poll(timeout_ms):
            if sock is self.xen.sock:
                self.xen.drain()
            else:
                fn = self.readers.get(sock)
                if fn is not None:  # a reader may remove another
                    fn()

    def shutdown(self, reason: int) -> None:
        """SCHEDOP_shutdown: the vCPU never runs again."""
        sys.stdout.flush()
        self.xen.send_only(Hypercall.sched_op, SchedOp.shutdown, {"reason": int(reason)})
        self.running = False
