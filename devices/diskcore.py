"""The disk controller's command engine, sans-IO: a slot copy in, a completion out.

Rules:
1. Copy, then validate (XSA-155): ``execute`` gets the private copy of a
   ring slot and decodes it exactly once. Every field is checked before any
   byte of memory or of the image is touched: opcode, flags, segment count
   and sector ranges, the sector count against the segments, the capacity,
   and then every segment against the IOMMU (devices.dma). A failed check
   completes the command with a DiskStatus code; nothing a driver writes
   raises out of here.
2. DMA goes straight into the frames: the store reads into (or writes from)
   the memoryviews the IOMMU returned, with no bounce buffer.
3. Durability: FLUSH syncs the store; a WRITE with FUA syncs after its data.
   Either completes after the sync returned, and a FLUSH's deadline is never
   earlier than that of any command accepted before it.
4. Faults are drawn after validation, from an injected seeded Random:
   "eio" fails a command without I/O, "hang" holds it (no completion) until
   the mode changes, "die" raises DeviceDeath before any I/O (the adapter
   exits). ``rate`` is the probability per command; 0 means every command.
5. The clock is an argument; the store is injected (an image file in the
   device process, a fake in tests).
"""

import random
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from devices.dma import DmaFault, Iommu
from devices.latency import LatencyModel
from hypervisor.public.diskdev import (
    DISK_FLAG_FUA,
    DISK_FLAGS_ALL,
    DISK_MAX_SEGMENTS,
    FAULT_MODES,
    SECTOR_SHIFT,
    SECTORS_PER_PAGE,
    DiskFeature,
    DiskOp,
    DiskStatus,
    pack_completion,
    unpack_command_header,
    unpack_segments,
)

FEATURES = DiskFeature.flush | DiskFeature.fua | DiskFeature.discard
MAX_DISCARD_SECTORS = 1 << 22  # 2 GiB per command
_OPS = frozenset(int(op) for op in DiskOp)


class DeviceDeath(Exception):
    """The "die" fault fired: the adapter must exit at once."""


class CommandError(Exception):
    def __init__(self, status: DiskStatus, why: str) -> None:
        super().__init__(status, why)
        self.status, self.why = status, why


class Store(Protocol):
    """Where the sectors live; offsets and lengths are in bytes."""

    def readv(self, offset: int, views: list[memoryview]) -> int: ...

    def writev(self, offset: int, views: list[memoryview]) -> int: ...

    def sync(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Command:
    op: int
    flags: int
    id: int
    sector: int
    nr_sectors: int
    segments: tuple[tuple[int, int, int], ...]  # (bfn, first_sect, last_sect)


@dataclass(frozen=True, slots=True)
class Completion:
    id: int
    op: int
    status: int
    deadline_ns: int

    def pack(self) -> bytes:
        return pack_completion(self.id, self.op, self.status)


def decode(raw: bytes) -> Command:
    """Decode a slot copy; CommandError(invalid) if the layout is impossible."""
    op, flags, nseg, nr_sectors, id_, sector = unpack_command_header(raw)
    if nseg > DISK_MAX_SEGMENTS:
        raise CommandError(DiskStatus.invalid, f"{nseg} segments > {DISK_MAX_SEGMENTS}")
    return Command(op, flags, id_, sector, nr_sectors, tuple(unpack_segments(raw, nseg)))


def validate(cmd: Command, capacity: int) -> None:
    """Rule 1, everything but the IOMMU; raises CommandError."""
    if cmd.op not in _OPS:
        raise CommandError(DiskStatus.unsupported, f"opcode {cmd.op:#x}")
    if cmd.flags & ~DISK_FLAGS_ALL or (cmd.flags & DISK_FLAG_FUA and cmd.op != DiskOp.write):
        raise CommandError(DiskStatus.invalid, f"flags {cmd.flags:#x} on opcode {cmd.op:#x}")
    if cmd.op in (DiskOp.read, DiskOp.write):
        _validate_transfer(cmd)
    elif cmd.segments:
        raise CommandError(DiskStatus.invalid, "flush and discard carry no segments")
    elif cmd.op == DiskOp.discard and not 0 < cmd.nr_sectors <= MAX_DISCARD_SECTORS:
        raise CommandError(DiskStatus.invalid, f"discard of {cmd.nr_sectors} sectors")
    if cmd.op != DiskOp.flush and cmd.sector + cmd.nr_sectors > capacity:
        raise CommandError(DiskStatus.range, f"sectors {cmd.sector}+{cmd.nr_sectors} "
                                             f"beyond {capacity}")


def _validate_transfer(cmd: Command) -> None:
    if not cmd.segments:
        raise CommandError(DiskStatus.invalid, "a transfer needs 1 or more segments")
    for _, first, last in cmd.segments:
        if not first <= last < SECTORS_PER_PAGE:
            raise CommandError(DiskStatus.invalid, f"segment sectors {first}..{last}")
    counted = sum(last - first + 1 for _, first, last in cmd.segments)
    if counted != cmd.nr_sectors:
        raise CommandError(DiskStatus.invalid, f"nr_sectors {cmd.nr_sectors} but the "
                                               f"segments hold {counted}")


class Faults:
    """The fault switch (rule 4)."""

    def __init__(self, mode: str = "none", rate: float = 0.0, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.mode, self.rate = "none", 0.0
        self.set(mode, rate)

    def set(self, mode: str, rate: float = 0.0) -> None:
        if mode not in FAULT_MODES or not 0 <= rate <= 1:
            raise ValueError(f"fault {mode!r} rate {rate!r}")
        self.mode, self.rate = mode, float(rate)

    def draw(self) -> str:
        """The fault that hits the next valid command ("none" for no fault)."""
        if self.mode == "none":
            return "none"
        if 0 < self.rate < 1 and self.rng.random() >= self.rate:
            return "none"
        return self.mode


class DiskCore:
    """Execute commands against a store through an IOMMU (sans-IO)."""

    def __init__(self, store: Store, iommu: Iommu, capacity_sectors: int,
                 latency: LatencyModel, faults: Faults) -> None:
        self.store, self.iommu, self.capacity = store, iommu, capacity_sectors
        self.latency, self.faults = latency, faults
        self.held: list[bytes] = []  # slot copies hung by the "hang" fault
        self.last_deadline = 0
        self.counts: Counter[str] = Counter()
        self.last_error = ""

    def execute(self, raw: bytes, now_ns: int) -> Completion | None:
        """One command; None while it hangs. May raise DeviceDeath."""
        try:
            cmd = decode(raw)
        except CommandError as exc:
            op, _, _, _, id_, _ = unpack_command_header(raw)
            return self._refuse(id_, op, exc, now_ns)
        return self._accept(cmd, raw, now_ns)

    def _accept(self, cmd: Command, raw: bytes, now_ns: int) -> Completion | None:
        try:
            validate(cmd, self.capacity)
            views = self.dma_views(cmd)
        except CommandError as exc:
            return self._refuse(cmd.id, cmd.op, exc, now_ns)
        fault = self.faults.draw()
        if fault == "die":
            raise DeviceDeath(f"die fault on command {cmd.id}")
        if fault == "hang":
            self.held.append(raw)
            self.counts["hung"] += 1
            return None
        status = DiskStatus.error if fault == "eio" else self._perform(cmd, views)
        self.counts["injected_eio" if fault == "eio" else "executed"] += 1
        return self._complete(cmd, status, now_ns)

    def dma_views(self, cmd: Command) -> list[memoryview]:
        """Every segment through the IOMMU, before any I/O (rule 1)."""
        write_memory = cmd.op == DiskOp.read
        try:
            return [self.iommu.span(bfn, first, last, write_memory)
                    for bfn, first, last in cmd.segments]
        except DmaFault as exc:
            self.counts["dma_faults"] += 1
            raise CommandError(DiskStatus.dma_fault, str(exc)) from None

    def _perform(self, cmd: Command, views: list[memoryview]) -> DiskStatus:
        try:
            return self._io(cmd, views)
        except OSError as exc:
            self.last_error = f"command {cmd.id}: {exc}"
            return DiskStatus.error

    def _io(self, cmd: Command, views: list[memoryview]) -> DiskStatus:
        offset, length = cmd.sector << SECTOR_SHIFT, cmd.nr_sectors << SECTOR_SHIFT
        if cmd.op == DiskOp.read:
            done = self.store.readv(offset, views)
        elif cmd.op == DiskOp.write:
            done = self.store.writev(offset, views)
            if cmd.flags & DISK_FLAG_FUA and done == length:
                self._sync()
        elif cmd.op == DiskOp.flush:
            self._sync()
            done = length = 0
        else:
            self.store.discard(offset, length)
            done = length
        return DiskStatus.ok if done == length else DiskStatus.error  # short: a media error

    def _sync(self) -> None:
        self.store.sync()
        self.counts["syncs"] += 1

    def _complete(self, cmd: Command, status: DiskStatus, now_ns: int) -> Completion:
        deadline = self.latency.service(now_ns, cmd.op, cmd.sector, cmd.nr_sectors)
        if cmd.op == DiskOp.flush:
            deadline = max(deadline, self.last_deadline)  # rule 3
        self.last_deadline = max(self.last_deadline, deadline)
        self.counts["ok" if status == DiskStatus.ok else "errors"] += 1
        return Completion(cmd.id, cmd.op, int(status), deadline)

    def _refuse(self, id_: int, op: int, exc: CommandError, now_ns: int) -> Completion:
        self.counts["refused"] += 1
        self.last_error = f"command {id_}: {exc.status.name}: {exc.why}"
        return Completion(id_, op, int(exc.status), now_ns)

    def set_fault(self, mode: str, rate: float, now_ns: int) -> list[Completion]:
        """Change the fault switch; leaving "hang" runs the held commands."""
        self.faults.set(mode, rate)
        if mode == "hang" or not self.held:
            return []
        held, self.held = self.held, []
        return [self._resume(raw, now_ns) for raw in held]

    def _resume(self, raw: bytes, now_ns: int) -> Completion:
        """A held command, re-checked (its mappings may be gone) but not re-faulted."""
        cmd = decode(raw)  # decoded fine when it was accepted
        try:
            views = self.dma_views(cmd)
        except CommandError as exc:
            return self._refuse(cmd.id, cmd.op, exc, now_ns)
        return self._complete(cmd, self._perform(cmd, views), now_ns)
