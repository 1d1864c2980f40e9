"""The controller's queue pair: a ring.h BackRing driven by doorbells and time.

Rules (hypervisor.public.diskdev rules 2-3):
1. A doorbell ("kick") consumes every published command, then arms
   req_event with FINAL_CHECK and goes round again if more arrived, so the
   driver rings again only after we have gone idle (blkback's loop).
2. Completions wait in a deadline heap (the latency model's answer) and are
   put on the ring when due; one push_responses() per batch, and the IRQ
   is raised only if it says notify.
3. A driver that breaks the ring rules halts this queue pair for good
   (``error``); the device process and its other state carry on.
4. Sans-IO: the caller passes the clock and raises the IRQ itself.
"""

import heapq
import itertools
from collections.abc import Callable

from devices.diskcore import Completion, DiskCore
from domains.kernel.ring import BackRing, RingError


class QueuePair:
    def __init__(self, ring: BackRing, core: DiskCore, clock: Callable[[], int]) -> None:
        self.ring, self.core, self.clock = ring, core, clock
        self.pending: list[tuple[int, int, Completion]] = []
        self._seq = itertools.count()
        self.error: RingError | None = None
        self.kicks = self.irqs = self.commands = 0

    def kick(self) -> bool:
        """A doorbell: consume everything, complete what is due; True = raise the IRQ."""
        self.kicks += 1
        self.consume()
        return self.complete_due()

    def consume(self) -> None:
        """Rule 1 (may raise DeviceDeath from the core)."""
        if self.error is not None:
            return
        try:
            while True:
                for raw in self.ring.take_requests():
                    self.commands += 1
                    self.add(self.core.execute(raw, self.clock()))
                if not self.ring.final_check_for_requests():
                    return
        except RingError as exc:
            self.error = exc

    def add(self, completion: Completion | None) -> None:
        if completion is not None:
            heapq.heappush(self.pending, (completion.deadline_ns, next(self._seq), completion))

    def complete_due(self) -> bool:
        """Rule 2: put due completions, push once; True = raise the IRQ."""
        if self.error is not None or not self.pending:
            return False
        now, put = self.clock(), 0
        while self.pending and self.pending[0][0] <= now:
            self.ring.put_response(heapq.heappop(self.pending)[2].pack())
            put += 1
        if not put:
            return False
        notify = self.ring.push_responses()
        self.irqs += notify
        return notify

    def next_deadline(self) -> int | None:
        return self.pending[0][0] if self.pending and self.error is None else None

    def set_fault(self, mode: str, rate: float) -> bool:
        """Change the fault switch; released commands complete when due."""
        for completion in self.core.set_fault(mode, rate, self.clock()):
            self.add(completion)
        return self.complete_due()

    def outstanding(self) -> int:
        return len(self.pending) + len(self.core.held)
