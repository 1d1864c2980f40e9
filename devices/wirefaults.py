"""The link's fault model (like netem), sans-IO: frames and a clock in, frames out.

Rules:
1. One model sits between a NIC and its media (the wire and the TAP), on
   each direction separately (the adapter keeps one for egress and one for
   ingress); `settings` are shared, each draws from its own seeded Random.
2. For each frame, in this order: partition drops it; `drop` drops it with
   that probability; `dup` sends it twice; `reorder` holds it back so the
   next frame passes it (or, if none comes, it leaves after REORDER_HOLD_NS);
   every frame leaves `delay_ms` after it was offered.
3. `offer(frame, now_ns)` queues; `due(now_ns)` returns what may leave, in
   order; `next_deadline()` says when to call `due` next. No clock, no I/O.
4. With every setting at zero, frames pass at once and in order (the fast
   path: no heap, no draw).
"""

import heapq
import itertools
import random
from dataclasses import dataclass, replace

REORDER_HOLD_NS = 2_000_000  # a reordered frame waits at most this for a successor


@dataclass(frozen=True, slots=True)
class WireSettings:
    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay_ms: float = 0.0
    partition: bool = False

    def __post_init__(self) -> None:
        for key in ("drop", "dup", "reorder"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"wire {key} must be within 0..1")
        if self.delay_ms < 0:
            raise ValueError("wire delay_ms must be >= 0")

    @property
    def clean(self) -> bool:
        return self == CLEAN

    def updated(self, **changes) -> "WireSettings":
        """These settings with the given keys changed (None: unchanged)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        if self.clean:
            return "clean"
        parts = [f"{k} {getattr(self, k)}" for k in ("drop", "dup", "reorder", "delay_ms")
                 if getattr(self, k)]
        return ", ".join(parts + (["partitioned"] if self.partition else []))


CLEAN = WireSettings()


class WireFaults:
    """One direction of the link (rule 1)."""

    def __init__(self, settings: WireSettings = CLEAN, seed: int = 0) -> None:
        self.settings = settings
        self.rng = random.Random(seed)
        self.queue: list[tuple[int, int, bytes]] = []  # (deadline, seq, frame)
        self.held: tuple[int, bytes] | None = None  # (release deadline, frame)
        self._seq = itertools.count()
        self.counts = {"offered": 0, "dropped": 0, "duplicated": 0, "reordered": 0,
                       "partitioned": 0}

    def offer(self, frame: bytes, now_ns: int) -> None:
        s = self.settings
        self.counts["offered"] += 1
        if s.partition:
            self.counts["partitioned"] += 1
            return
        if s.drop and self.rng.random() < s.drop:
            self.counts["dropped"] += 1
            return
        copies = 1
        if s.dup and self.rng.random() < s.dup:
            self.counts["duplicated"] += 1
            copies = 2
        deadline = now_ns + int(s.delay_ms * 1_000_000)
        if s.reorder and self.held is None and self.rng.random() < s.reorder:
            self.counts["reordered"] += 1
            self.held = (deadline + REORDER_HOLD_NS, frame)
            copies -= 1  # a duplicate of a held frame leaves now
        for _ in range(copies):
            self._put(deadline, frame)
        if copies and self.held is not None and self.held[1] is not frame:
            self._put(deadline, self.held[1])  # it follows the frame that passed it
            self.held = None

    def _put(self, deadline: int, frame: bytes) -> None:
        heapq.heappush(self.queue, (deadline, next(self._seq), frame))

    def due(self, now_ns: int) -> list[bytes]:
        if self.held is not None and self.held[0] <= now_ns:
            self._put(self.held[0], self.held[1])
            self.held = None
        out = []
        while self.queue and self.queue[0][0] <= now_ns:
            out.append(heapq.heappop(self.queue)[2])
        return out

    def next_deadline(self) -> int | None:
        times = [self.queue[0][0]] if self.queue else []
        if self.held is not None:
            times.append(self.held[0])
        return min(times) if times else None

    def set(self, settings: WireSettings) -> None:
        """New settings; a partition also loses what was in flight."""
        self.settings = settings
        if settings.partition:
            self.queue.clear()
            self.held = None
