"""Service-time models for the disk: none, fixed, HDD-like.

Rules:
1. A model is pure: ``service(now_ns, op, sector, nr_sectors)`` returns the
   completion deadline of a command accepted at ``now_ns``. The clock comes
   in as an argument and randomness from an injected ``random.Random``, so
   tests are exact and never sleep.
2. Deadlines never go backwards for commands served by one actuator
   (none, hdd), so completions come back in submission order there.
3. The HDD model serves one command at a time, FIFO: it starts when the head
   is free, seeks (settle plus a square-root curve of the distance, the
   usual fit to measured drives), waits for the platter to bring the first
   sector under the head, then transfers at the media rate. FLUSH and
   DISCARD touch only the drive's cache and tables: no seek.
Specs: "none", "fixed:USEC", "hdd" or "hdd:RPM".
"""

import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from hypervisor.public.diskdev import SECTOR_SIZE, DiskOp

NS = 1_000_000_000


class LatencyModel(Protocol):
    spec: str

    def service(self, now_ns: int, op: int, sector: int, nr_sectors: int) -> int: ...


@dataclass
class NoLatency:
    spec: str = "none"

    def service(self, now_ns: int, op: int, sector: int, nr_sectors: int) -> int:
        return now_ns


@dataclass
class FixedLatency:
    """Every command takes ``usec``; many may be in service at once (an SSD)."""

    usec: int
    spec: str = ""

    def __post_init__(self) -> None:
        self.spec = f"fixed:{self.usec}"

    def service(self, now_ns: int, op: int, sector: int, nr_sectors: int) -> int:
        return now_ns + self.usec * 1000


@dataclass
class HddLatency:
    """A 3.5" 7200 rpm drive by default: 0.8 ms settle, 16 ms full stroke."""

    capacity_sectors: int
    rpm: int = 7200
    settle_us: int = 800
    full_stroke_us: int = 16_000
    media_mb_s: int = 150
    sectors_per_track: int = 2048
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    spec: str = ""
    head: int = 0  # the sector under the head after the last transfer
    busy_until: int = 0

    def __post_init__(self) -> None:
        self.spec = "hdd" if self.rpm == 7200 else f"hdd:{self.rpm}"
        self.period_ns = 60 * NS // self.rpm
        self.phase_ns = int(self.rng.random() * self.period_ns)  # platter angle at t=0

    def seek_ns(self, target: int) -> int:
        distance = abs(target - self.head)
        if distance == 0:
            return 0
        frac = math.sqrt(distance / max(1, self.capacity_sectors))
        return int((self.settle_us + (self.full_stroke_us - self.settle_us) * frac) * 1000)

    def rotation_ns(self, at_ns: int, sector: int) -> int:
        """Wait until ``sector``'s angular position comes under the head."""
        angle = (at_ns + self.phase_ns) % self.period_ns
        target = (sector % self.sectors_per_track) * self.period_ns // self.sectors_per_track
        return (target - angle) % self.period_ns

    def transfer_ns(self, nr_sectors: int) -> int:
        return nr_sectors * SECTOR_SIZE * NS // (self.media_mb_s * 1_000_000)

    def service(self, now_ns: int, op: int, sector: int, nr_sectors: int) -> int:
        start = max(now_ns, self.busy_until)
        if op in (DiskOp.read, DiskOp.write):
            arrive = start + self.seek_ns(sector)
            start = arrive + self.rotation_ns(arrive, sector) + self.transfer_ns(nr_sectors)
            self.head = sector + nr_sectors
        self.busy_until = start
        return start


def parse_latency(spec: str, capacity_sectors: int,
                  rng: random.Random | None = None) -> LatencyModel:
    """A model from its spec; ValueError on anything else."""
    kind, _, arg = spec.partition(":")
    if spec == "none":
        return NoLatency()
    if kind == "fixed" and arg.isdigit():
        return FixedLatency(int(arg))
    if kind == "hdd" and (not arg or arg.isdigit() and 1000 <= int(arg) <= 20000):
        rpm = int(arg) if arg else 7200
        return HddLatency(capacity_sectors, rpm=rpm, rng=rng or random.Random(0))
    raise ValueError(f"latency {spec!r}: want none, fixed:USEC, hdd or hdd:RPM")
