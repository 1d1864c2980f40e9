"""A XenoLinux kernel for `xenolab bench blk`: an fio-like load through blkfront.

The cmdline (written by launcher.bench_blk) says what to run, e.g.
``rw=randread bs=4096 iodepth=32 runtime_ms=5000 warmup_ms=500
size=67108864 seed=1 probes=200`` (sizes in bytes; ``devid`` defaults to
xvda's 51712).

Protocol, in the guest-owned xenstore directory ``data/bench/``:
1. Once blkfront has connected the disk the guest writes ``ready`` (the disk's size
   in sectors) and waits for Dom0 to write ``go``, so that baselines taken
   meanwhile see an idle host.
2. On ``go``: a warm-up, the measured window (``runtime_ms``), a drain,
   then ``probes`` I/Os one at a time, each stamped at submit, at the event
   on blkfront's port and at its callback (for the per-hop breakdown).
3. It writes ``hist/0..`` and ``probe/0..`` (chunks below the 2048-byte cap
   of a value a guest writes), then ``result`` (compact JSON) last: the
   orchestrator waits on that one.

Rules:
1. ``iodepth`` I/Os in flight: a callback submits the next I/O at once, so
   blkfront batches all that one turn of the event loop submits into one
   push (and at most one notification).
2. A latency is callback time minus submit time (``time.monotonic_ns``, one
   clock for every process) of an I/O that completes inside the window;
   IOPS counts those that completed OK.
3. Offsets are bs-aligned within min(size, disk); sequential ones wrap,
   random ones come from ``Random(seed)``; randrw is half reads, half writes.
4. Counters are deltas over the window: notifications blkfront sent
   (front->back), events on blkfront's port (back->front; the port's handler
   is wrapped once at connect: a reconnect stops that count), and the
   guest's hypercalls (posted ones too) and traps.
5. Latencies travel as a log-linear histogram (HdrHistogram's layout,
   SUB_BITS significant bits: under 0.8 % error), sparse, as hex
   ``delta.count`` pairs (delta from the previous bucket index).
"""

from __future__ import annotations

import json
import random
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from domains.xenolinux.blkfront import Blkfront
from domains.xenolinux.evtchn_bench import parse_cmdline
from domains.xenolinux.kernel import Guest, boot
from hypervisor.public.blkif import BLKIF_RSP_OKAY, SECTOR_SIZE
from hypervisor.public.xen import Hypercall

RW_MODES = ("read", "write", "randread", "randwrite", "randrw")
WRITE_SHARE = {"read": 0.0, "randread": 0.0, "write": 1.0, "randwrite": 1.0, "randrw": 0.5}
XVDA = 51712
DATA = "data/bench"
CHUNK = 2000  # characters per xenstore value (a guest's are capped at 2048)
SUB_BITS = 8
CONNECT_TIMEOUT_S = 20
_HALF = 1 << (SUB_BITS - 1)


# ---- pure parts (the orchestrator uses them too) -------------------------------


@dataclass(frozen=True)
class BenchOptions:
    rw: str = "randread"
    bs: int = 4096
    iodepth: int = 1
    runtime_ms: int = 5000
    warmup_ms: int = 500
    size: int = 64 << 20
    seed: int = 1
    probes: int = 200
    devid: int = XVDA

    def __post_init__(self) -> None:
        if self.rw not in RW_MODES:
            raise ValueError(f"rw must be one of {', '.join(RW_MODES)}, not {self.rw!r}")
        if self.bs <= 0 or self.bs % SECTOR_SIZE:
            raise ValueError(f"bs must be a positive multiple of {SECTOR_SIZE}, not {self.bs}")
        if self.size < self.bs:
            raise ValueError(f"size {self.size} is smaller than bs {self.bs}")
        for key in ("iodepth", "runtime_ms"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1")
        if self.warmup_ms < 0 or self.probes < 0:
            raise ValueError("warmup_ms and probes must not be negative")

    def cmdline(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.__dict__.items())

    @classmethod
    def from_cmdline(cls, cmdline: str) -> BenchOptions:
        """Unknown words are ignored; a bad value raises ValueError."""
        words = parse_cmdline(cmdline)
        fields = {k: (v if k == "rw" else int(v)) for k, v in words.items()
                  if k in cls.__dataclass_fields__}  # fmt: skip
        return cls(**fields)


class Pattern:
    """Offsets (bytes) and directions of successive I/Os (rule 3)."""

    def __init__(self, rw: str, bs: int, size: int, seed: int) -> None:
        self.bs, self.blocks = bs, max(size // bs, 1)
        self.random, self.write_share = rw.startswith("rand"), WRITE_SHARE[rw]
        self.rng = random.Random(seed)
        self.block = 0

    def next(self) -> tuple[bool, int]:
        """(is_write, byte offset) of the next I/O."""
        if self.random:
            block = self.rng.randrange(self.blocks)
        else:
            block, self.block = self.block, (self.block + 1) % self.blocks
        share = self.write_share
        return share == 1.0 or (share > 0.0 and self.rng.random() < share), block * self.bs


def bucket_of(value: int) -> int:
    """The log-linear bucket of a non-negative value (rule 5)."""
    e = max(value.bit_length() - SUB_BITS, 0)
    return (e << (SUB_BITS - 1)) + (value >> e)


def bucket_range(index: int) -> tuple[int, int]:
    """(lowest value, width) of a bucket."""
    if index < 2 * _HALF:
        return index, 1
    e = (index >> (SUB_BITS - 1)) - 1
    return (index - (e << (SUB_BITS - 1))) << e, 1 << e


def encode_hist(counts: dict[int, int]) -> list[str]:
    prev, items = 0, []
    for index in sorted(counts):
        items.append(f"{index - prev:x}.{counts[index]:x}")
        prev = index
    return items


def decode_hist(items: Iterable[str]) -> dict[int, int]:
    counts, index = {}, 0
    for item in items:
        delta, count = item.split(".")
        index += int(delta, 16)
        counts[index] = counts.get(index, 0) + int(count, 16)
    return counts


def chunk_items(items: list[str], limit: int = CHUNK) -> list[str]:
    """Join items with ',' into strings of at most `limit` characters."""
    chunks: list[str] = []
    current = ""
    for item in items:
        if current and len(current) + 1 + len(item) > limit:
            chunks.append(current)
            current = ""
        current = f"{current},{item}" if current else item
    return [*chunks, current] if current else chunks


def split_chunks(chunks: Iterable[str]) -> list[str]:
    return [item for chunk in chunks for item in chunk.split(",") if item]


def latency_stats(samples: array) -> dict[str, int]:
    """Exact count, min, max, mean and stdev (ns) of the window's latencies."""
    n = len(samples)
    if not n:
        return {"count": 0, "min": 0, "max": 0, "mean": 0, "stdev": 0}
    total = sum(samples)
    mean = total / n
    var = max(sum(v * v for v in samples) / n - mean * mean, 0.0)
    return {"count": n, "min": min(samples), "max": max(samples), "mean": round(mean),
            "stdev": round(var ** 0.5)}


# ---- the load, inside the guest ----------------------------------------------


@dataclass
class Counters:
    notify: int
    events: int
    hypercalls: int
    traps: int
    upcalls: int
    blocks: int
    grants: int
    by_call: dict[tuple[int, int], int]


class BlkBench:
    """Drives one virtual disk through blkfront and reports through xenstore."""

    def __init__(self, g: Guest, opts: BenchOptions) -> None:
        self.g, self.k, self.o = g, g.kernel, opts
        self.disk: Blkfront | None = None
        self.pattern = Pattern(opts.rw, opts.bs, opts.size, opts.seed)
        self.wdata = random.Random(opts.seed).randbytes(opts.bs)
        self.samples = array("q")
        self.errors = self.inflight = self.events = self.event_ns = 0
        self.phase = "idle"  # -> load (warm-up, then window) -> drain -> probe -> done
        self.measuring = False
        self.window: list[tuple[int, Counters]] = []
        self.probes: list[tuple[int, int, int]] = []
        # blkfront probes disks from a watch, later: follow the frontend's state
        path = f"device/vbd/{opts.devid}/state"
        g.xs.watch(path, "blk-bench-disk", lambda *_: self.check_disk())
        self.k.call_later(CONNECT_TIMEOUT_S, self.check_disk_late)

    def fail(self, why: str) -> None:
        self.g.printk(f"blk-bench: {why}")
        self.phase = "done"
        self.g.xs.write(f"{DATA}/result", json.dumps({"error": why}))

    # -- setup ---------------------------------------------------------------

    def check_disk(self) -> None:
        disk = self.g.disks.get(self.o.devid)
        if self.disk is None and disk is not None and disk.connected:
            self.connected(disk)

    def check_disk_late(self) -> None:
        if self.disk is None and self.phase == "idle":
            self.fail(f"virtual disk {self.o.devid} not connected after {CONNECT_TIMEOUT_S} s")

    def connected(self, disk: Blkfront) -> None:
        assert disk.ring is not None and disk.features is not None
        self.disk = disk
        sectors = disk.features.sectors
        self.pattern.blocks = min(self.o.size, sectors * SECTOR_SIZE) // self.o.bs
        if self.pattern.blocks < 1:
            self.fail(f"the disk ({sectors} sectors) is smaller than bs {self.o.bs}")
            return
        ev, port = self.k.evtchn, disk.ring.port
        handler = ev.handlers[port]

        def counted(p: int) -> None:  # rule 4: back->front events
            self.events += 1
            self.event_ns = time.monotonic_ns()
            handler(p)

        ev.on(port, counted)
        self.g.xs.write(f"{DATA}/ready", str(sectors))
        self.g.xs.watch(f"{DATA}/go", "blk-bench-go", lambda *_: self.go())
        self.g.printk(f"blk-bench: disk {self.o.devid} on port {port}, {sectors} sectors; "
                      "waiting for go")

    def go(self) -> None:
        if self.phase != "idle" or self.g.xs.try_read(f"{DATA}/go") != "1":
            return
        o = self.o
        self.g.printk(f"blk-bench: {o.rw} bs={o.bs} iodepth={o.iodepth} "
                      f"{o.warmup_ms} + {o.runtime_ms} ms")
        self.phase = "load"
        start = time.monotonic_ns() + o.warmup_ms * 1_000_000
        self.k.call_at(start, self.open_window)
        self.k.call_at(start + o.runtime_ms * 1_000_000, self.close_window)
        for _ in range(o.iodepth):
            self.submit(self.on_load)

    # -- I/O -------------------------------------------------------------------

    def submit(self, done: Callable[[int, int, bytes], None]) -> None:
        assert self.disk is not None
        is_write, offset = self.pattern.next()
        t0 = time.monotonic_ns()
        self.inflight += 1
        cb = lambda status, data: done(t0, status, data)  # noqa: E731
        if is_write:
            self.disk.write(offset // SECTOR_SIZE, self.wdata, cb)
        else:
            self.disk.read(offset // SECTOR_SIZE, self.o.bs // SECTOR_SIZE, cb)

    def on_load(self, t0: int, status: int, _data: bytes) -> None:
        t = time.monotonic_ns()
        self.inflight -= 1
        if self.measuring:
            if status == BLKIF_RSP_OKAY:
                self.samples.append(t - t0)
            else:
                self.errors += 1
        if self.phase == "load":
            self.submit(self.on_load)
        elif self.inflight == 0:
            self.start_probes()

    def open_window(self) -> None:
        self.window.append((time.monotonic_ns(), self.counters()))
        self.measuring = True

    def close_window(self) -> None:
        self.window.append((time.monotonic_ns(), self.counters()))
        self.measuring = False
        self.phase = "drain"
        if self.inflight == 0:
            self.start_probes()

    def start_probes(self) -> None:
        self.phase = "probe"
        self.next_probe()

    def next_probe(self) -> None:
        if len(self.probes) >= self.o.probes:
            self.phase = "done"
            self.k.call_soon(self.finish)
            return
        self.submit(self.on_probe)

    def on_probe(self, t0: int, status: int, _data: bytes) -> None:
        t = time.monotonic_ns()
        self.inflight -= 1
        if status == BLKIF_RSP_OKAY:
            self.probes.append((t0, self.event_ns if self.event_ns >= t0 else 0, t))
        else:
            self.errors += 1
            self.probes.append((t0, 0, 0))
        self.next_probe()

    # -- results ---------------------------------------------------------------

    def counters(self) -> Counters:
        assert self.disk is not None
        xen, stats = self.k.xen, self.disk.core.statistics()
        return Counters(stats.notifications, self.events, sum(xen.counts.values()), xen.traps,
                        self.k.evtchn.upcalls, self.k.idle_blocks, stats.grants,
                        dict(xen.counts))

    def finish(self) -> None:
        (t_open, a), (t_close, b) = self.window
        hist: dict[int, int] = {}
        for v in self.samples:
            i = bucket_of(v)
            hist[i] = hist.get(i, 0) + 1
        hist_chunks = chunk_items(encode_hist(hist))
        probe_chunks = chunk_items([f"{s:x}.{(e - s) if e else 0:x}.{(d - s) if d else 0:x}"
                                    for s, e, d in self.probes])
        for i, chunk in enumerate(hist_chunks):
            self.g.xs.write(f"{DATA}/hist/{i}", chunk)
        for i, chunk in enumerate(probe_chunks):
            self.g.xs.write(f"{DATA}/probe/{i}", chunk)
        result = {"window_ns": t_close - t_open, "ok": len(self.samples), "errors": self.errors,
                  **latency_stats(self.samples), "notify": b.notify - a.notify,
                  "events": b.events - a.events, "hypercalls": b.hypercalls - a.hypercalls,
                  "traps": b.traps - a.traps, "upcalls": b.upcalls - a.upcalls,
                  "blocks": b.blocks - a.blocks, "grants": b.grants - a.grants,
                  "calls": _call_deltas(a.by_call, b.by_call), "hist_keys": len(hist_chunks),
                  "probe_keys": len(probe_chunks), "blocks_on_disk": self.pattern.blocks}
        self.g.xs.write(f"{DATA}/result", json.dumps(result, separators=(",", ":")))
        self.g.printk(f"blk-bench: {len(self.samples)} I/Os in {result['window_ns'] / 1e9:.2f} s,"
                      f" {self.errors} errors; {len(self.probes)} probes")


def _call_deltas(a: dict[tuple[int, int], int], b: dict[tuple[int, int], int]) -> dict:
    """{"name/cmd": calls} for the hypercalls made in the window."""
    out = {}
    for (hc, cmd), n in b.items():
        if n - a.get((hc, cmd), 0):
            name = Hypercall(hc).name if hc in Hypercall._value2member_map_ else str(hc)
            out[f"{name}/{cmd}"] = n - a.get((hc, cmd), 0)
    return out


def main(kernel) -> None:
    g = boot(kernel)
    try:
        opts = BenchOptions.from_cmdline(g.si.cmdline)
    except (ValueError, TypeError) as exc:
        g.xs.write(f"{DATA}/result", json.dumps({"error": f"bad cmdline: {exc}"}))
        g.printk(f"blk-bench: bad cmdline {g.si.cmdline!r}: {exc}; idle")
    else:
        BlkBench(g, opts)
    kernel.run()
