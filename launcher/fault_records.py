"""The writer's records and console lines, checked from the host (a sans-IO core).

Rules:
1. A record is 64 bytes, "SEQ CRC PAYLOAD\\n": SEQ ten digits, the record's
   place in the file counted from 1; CRC the crc32 of "SEQ PAYLOAD" in
   eight hex digits; PAYLOAD 43 characters derived from SEQ. The guest's
   /bin/writer and /bin/reader hold the same three lines of format (guest
   programs cannot import); a unit test keeps them equal.
2. The writer prints what it does on its console (see domains/xenolinux/bin/
   writer); `parse_line` turns one line into a WriterEvent. Times are the
   guest's CLOCK_MONOTONIC, the host's `time.monotonic_ns()`.
3. A record is acknowledged when an `ack` line covering it was seen: the
   writer prints it only after fsync returned 0. Acknowledged records are
   kept as ranges per (domain, path); a record is lost when it was
   acknowledged and is not intact where it belongs: in the file when a
   restarted writer resumed below it, in what the guest's reader saw, or in
   the disk image read after the host is down.
"""

import re
import zlib
from dataclasses import dataclass, field

RECORD = 64
Ranges = list[tuple[int, int]]  # sorted, disjoint, inclusive (first, last)


def payload(seq: int) -> str:
    return (f"{(seq * 2654435761) & 0xFFFFFFFF:08x}" * 6)[:43]


def record(seq: int) -> bytes:
    body = f"{seq:010d} {payload(seq)}"
    return f"{seq:010d} {zlib.crc32(body.encode()) & 0xFFFFFFFF:08x} {payload(seq)}\n".encode()


# ---- ranges of record numbers -----------------------------------------------------

def add_range(ranges: Ranges, first: int, last: int) -> Ranges:
    """`ranges` with first..last added (merged with neighbours)."""
    if last < first:
        return ranges
    out: Ranges = []
    for a, b in sorted([*ranges, (first, last)]):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def intersect(x: Ranges, y: Ranges) -> Ranges:
    out: Ranges = []
    for a, b in x:
        for c, d in y:
            lo, hi = max(a, c), min(b, d)
            if lo <= hi:
                out = add_range(out, lo, hi)
    return out


def union(x: Ranges, y: Ranges) -> Ranges:
    for a, b in y:
        x = add_range(x, a, b)
    return x


def count(ranges: Ranges) -> int:
    return sum(b - a + 1 for a, b in ranges)


def show(ranges: Ranges) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges) or "none"


def parse_ranges(text: str) -> Ranges:
    out: Ranges = []
    if text == "none":
        return out
    for part in text.split(","):
        a, _, b = part.partition("-")
        out = add_range(out, int(a), int(b or a))
    return out


# ---- a file's records ---------------------------------------------------------------

@dataclass(frozen=True)
class FileScan:
    """What a file holds: its whole records, the ones not intact, a torn tail."""

    size: int
    records: int
    bad: Ranges
    tail: int

    @property
    def intact(self) -> int:
        return self.records - count(self.bad)

    def missing(self, acked: Ranges) -> Ranges:
        """The acknowledged records that are not intact here (rule 3)."""
        beyond = [(self.records + 1, acked[-1][1])] if acked and acked[-1][1] > self.records else []
        return intersect(acked, union(list(self.bad), beyond))


def scan(data: bytes) -> FileScan:
    bad: Ranges = []
    whole = len(data) // RECORD
    for i in range(whole):
        if data[i * RECORD:(i + 1) * RECORD] != record(i + 1):
            bad = add_range(bad, i + 1, i + 1)
    return FileScan(len(data), whole, bad, len(data) % RECORD)


READER_RE = re.compile(r"reader (\S+): (\d+) bytes, (\d+) records, (\d+) intact, bad (\S+), "
                       r"tail (\d+)")


def parse_reader(text: str) -> dict[str, FileScan]:
    """The summary lines of /bin/reader in `text`, by path."""
    return {m[1]: FileScan(int(m[2]), int(m[3]), parse_ranges(m[5]), int(m[6]))
            for m in READER_RE.finditer(text)}


# ---- the writer's console lines -----------------------------------------------------

@dataclass(frozen=True)
class WriterEvent:
    dom: str
    path: str
    kind: str  # start | w | ack | fail
    t_ns: int
    batch: int = 0
    first: int = 0  # start: the first record it writes; w: the batch's first
    last: int = 0
    pid: int = 0
    error: str = ""


LINE_RE = re.compile(r"writer (\S+) (start|w|ack|fail) ([-\w ]+?) (\d+)$")


def parse_line(dom: str, line: str) -> WriterEvent | None:
    m = LINE_RE.search(line.rstrip("\r\n"))
    if m is None:
        return None
    path, kind, t = m[1], m[2], int(m[4])
    f = m[3].split()
    try:
        if kind == "start" and len(f) == 2:
            return WriterEvent(dom, path, kind, t, pid=int(f[0]), first=int(f[1]))
        if kind == "w" and len(f) == 3:
            return WriterEvent(dom, path, kind, t, int(f[0]), int(f[1]), int(f[2]))
        if kind == "ack" and len(f) == 2:
            return WriterEvent(dom, path, kind, t, int(f[0]), last=int(f[1]))
        if kind == "fail" and len(f) == 3:
            return WriterEvent(dom, path, kind, t, int(f[0]), last=int(f[1]), error=f[2])
    except ValueError:
        return None
    return None


class LineSplitter:
    """Bytes of a console in, whole lines out (a line may arrive in pieces)."""

    def __init__(self) -> None:
        self.partial = b""

    def feed(self, data: bytes) -> list[str]:
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [x.decode(errors="replace").rstrip("\r") for x in lines]


@dataclass
class WriterLog:
    """What one writer (a domain's file) did, from its console lines (rule 3)."""

    dom: str
    path: str
    events: list[WriterEvent] = field(default_factory=list)
    acked: Ranges = field(default_factory=list)
    issued: Ranges = field(default_factory=list)
    lost_on_restart: Ranges = field(default_factory=list)
    batch_first: dict[int, int] = field(default_factory=dict)

    def add(self, ev: WriterEvent) -> None:
        self.events.append(ev)
        if ev.kind == "start":
            self.batch_first.clear()  # batch numbers start again with each run
            top = self.acked[-1][1] if self.acked else 0
            if ev.first <= top:  # it came back below what it had acknowledged
                self.lost_on_restart = add_range(self.lost_on_restart, ev.first, top)
        elif ev.kind == "w":
            self.batch_first[ev.batch] = ev.first
            self.issued = add_range(self.issued, ev.first, ev.last)
        elif ev.kind == "ack":
            self.acked = add_range(self.acked, self.batch_first.get(ev.batch, ev.last), ev.last)

    def times(self, kind: str) -> list[int]:
        return [e.t_ns for e in self.events if e.kind == kind]

    def statistics(self) -> dict:
        n = {k: sum(1 for e in self.events if e.kind == k) for k in ("start", "w", "ack", "fail")}
        return {"batches_issued": n["w"], "batches_acked": n["ack"],
                "batches_failed": n["fail"],
                "batches_unanswered": n["w"] - n["ack"] - n["fail"],
                "records_issued": count(self.issued), "records_acked": count(self.acked),
                "writer_starts": n["start"]}


# ---- the block load's console lines (domains/xenolinux/bin/blkload) ----------------

LOAD_RE = re.compile(r"blkload (\S+) (start|ops) ([\d ]+?) (\d+)$")


@dataclass
class LoadLog:
    """What one blkload did: totals over its runs (a restart counts from 0 again)."""

    dom: str
    path: str
    starts: int = 0
    done: dict[str, int] = field(default_factory=lambda: {"reads": 0, "writes": 0, "failed": 0})
    run: tuple[int, int, int] = (0, 0, 0)  # the current run's totals
    times: list[int] = field(default_factory=list)  # when each round ended

    def feed(self, line: str) -> bool:
        """A console line; True if it was this load's."""
        m = LOAD_RE.search(line.rstrip("\r\n"))
        if m is None or m[1] != self.path:
            return False
        f = [int(x) for x in m[3].split()]
        if m[2] == "start":
            self.starts, self.run = self.starts + 1, (0, 0, 0)
        elif len(f) == 3:
            for key, old, new in zip(("reads", "writes", "failed"), self.run, f, strict=True):
                self.done[key] += max(0, new - old)
            self.run = (f[0], f[1], f[2])
            self.times.append(int(m[4]))
        return True

    def statistics(self) -> dict:
        return {"domain": self.dom, "path": self.path, "starts": self.starts, **self.done,
                "ops": self.done["reads"] + self.done["writes"]}
