"""`xenolab bench blk`: fio-like block I/O from inside a DomU, through blkfront.

What is measured (one run, one private host):
- the load: a DomU running domains.xenolinux.blk_bench keeps `iodepth`
  bs-sized I/Os in flight on its xvda (its own image of `size` bytes, in a
  temporary directory, served by a disk device) for `runtime` seconds after
  a warm-up, timing each from submit to callback. Its latency histogram and
  counters come out through xenstore (data/bench/).
- the hops: after the load the guest runs probes, one I/O at a time. Where
  the path's processes stamp hop records (hypervisor.public.hops, enabled
  by $XENOLAB_HOPS), each probe's records are matched in time order to give
  frontend -> Xen -> blkback -> device -> IRQ -> blkback -> frontend.
  Without those hooks the hops read null, except the guest's own last one.
- CPU: each of the host's processes' CPU time and context switches over
  the window (psutil; the window placed by this process's clock), per
  request: where the time goes.
- baselines, taken while the guest waits (an idle host): a raw ZeroMQ round
  trip between two plain processes (launcher.bench.measure_zmq) and
  pread/pwrite of the same image by this process, bs-sized, same pattern.

Rules:
1. A host named by --host or $XENOLAB_HOST that is running cannot be used:
   disks are served by devices, and devices (hardware) start before Xen.
   That is said in one line. Otherwise a private host is booted and always
   torn down, and the image directory removed.
2. Progress goes to stderr, so `--json` leaves one JSON object on stdout.
3. Targets are reported, never enforced.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

from domains.xenolinux.blk_bench import (
    DATA,
    WRITE_SHARE,
    BenchOptions,
    Pattern,
    bucket_range,
    decode_hist,
    split_chunks,
)
from launcher import rundir
from launcher.bench import WARMUP, histogram_summary, measure_zmq, say
from launcher.devspec import DeviceSpec
from launcher.host import Host
from launcher.hostspec import DomainSpec, default_host
from launcher.rundir import HostError
from launcher.xlcfg import parse_disk_spec

try:  # the hop hooks (see the module docstring); absent, hops read null
    from hypervisor.public import hops  # type: ignore[attr-defined]
except ImportError:
    hops = None

KERNEL = "domains.xenolinux.blk_bench"
GUEST, DEVICE = "blkbench", "blkbench-disk"
BASELINE_COUNT = 5000
WARMUP_MS = 500
PROBES = 200
PCTS = {"p50": 50, "p90": 90, "p99": 99, "p999": 99.9, "p9999": 99.99}
TARGETS = {"ratio_p50_to_zmq_rtt": 3.5, "iops": 20_000, "notify_per_req": 0.2}
SIZE_RE = re.compile(r"^(\d+)([kmgt]?)i?b?$", re.IGNORECASE)
Xl = Callable[..., Any]

# The probe's path: (hop name, the point ending it, which records match).
# Points are hops.<NAME>, or the guest's own stamps GUEST_EVENT and GUEST_DONE.
GUEST_EVENT, GUEST_DONE = "guest:event", "guest:done"
CHAIN: tuple[tuple[str, str, Callable[[int, int, int], bool]], ...] = (
    ("front_to_xen", "XEN_SEND", lambda a, b, g: a == g),
    ("xen_to_blkback", "BACK_SUBMIT", lambda a, b, g: a == g),
    ("blkback_to_doorbell", "DRV_DOORBELL", lambda a, b, g: True),
    ("doorbell_to_device", "DEV_KICK", lambda a, b, g: True),
    ("device", "DEV_IRQ", lambda a, b, g: True),
    ("irq_to_xen", "XEN_PIRQ", lambda a, b, g: True),
    ("xen_to_dom0_irq", "DRV_IRQ", lambda a, b, g: True),
    ("dom0_irq_to_blkback_notify", "BACK_NOTIFY", lambda a, b, g: a == g),
    ("blkback_to_xen", "XEN_SEND", lambda a, b, g: a == 0 and b == g),
    ("xen_to_front", GUEST_EVENT, lambda a, b, g: True),
    ("front_completion", GUEST_DONE, lambda a, b, g: True),
)


def parse_size(text: str) -> int:
    """fio sizes: 4096, 4k, 64M, 1g (binary units)."""
    m = SIZE_RE.match(text.strip())
    if not m:
        raise HostError(f"bad size {text!r} (e.g. 4k, 64M, 1G)")
    return int(m[1]) << (10 * " kmgt".index((m[2] or " ").lower()))


def run_blk(args, host: str) -> int:
    opts = _options(args)
    if args.plot:
        _check_matplotlib()
    named = getattr(args, "host", None) or os.environ.get("XENOLAB_HOST")
    if named and rundir.running(host):
        raise HostError(f"host '{host}' is running, but a running host cannot get a new disk "
                        f"device (devices start before Xen): drop --host/XENOLAB_HOST to "
                        f"bench on a private host")
    if named:
        say(f"No running host '{host}': booting a private one")
    result, hist = bench_blk(opts)
    if args.plot:
        plot(result, hist, args.plot)
        say(f"Latency distribution drawn in {args.plot}")
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


def _options(args) -> BenchOptions:
    try:
        return BenchOptions(rw=args.rw, bs=parse_size(args.bs), iodepth=args.iodepth,
                            runtime_ms=round(args.runtime * 1000), warmup_ms=WARMUP_MS,
                            size=parse_size(args.size), seed=args.seed, probes=PROBES)
    except ValueError as exc:
        raise HostError(str(exc)) from None


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise HostError("--plot needs matplotlib, which is not installed "
                        "(pip install matplotlib)") from None


# ---- the run ---------------------------------------------------------------------


def bench_blk(opts: BenchOptions) -> tuple[dict[str, Any], dict[int, int]]:
    """Boot a private host, measure, tear down: (the --json object, the histogram)."""
    root = rundir.run_root()
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-blk-", dir=root) as tmp:
        img = os.path.join(tmp, "xvda.img")
        say(f"Creating a {opts.size >> 10} KiB image {img}")
        make_image(img, opts.size, opts.seed)
        hop_dir = _enable_hops(tmp)
        disk = parse_disk_spec(f"{img},raw,xvda,rw")
        dom = DomainSpec(GUEST, memory_mib=64, kernel=KERNEL, cmdline=opts.cmdline(),
                         disks=(disk,))
        spec = dataclasses.replace(default_host().with_domains(dom),
                                   devices=(DeviceSpec(DEVICE, image=img),))
        try:
            with Host(spec, f"bench-{os.getpid()}", progress=say) as h:
                domid = h[GUEST]["domid"]
                raw = _run_guest(h.xl, h.name, domid, opts, img)
                host = h.name
        finally:
            if hop_dir is not None:
                os.environ.pop(hops.ENV, None)
        records = _read_hops(hop_dir)
    hist = decode_hist(split_chunks(raw.pop("hist")))
    result = summarize(opts, raw, hist, records, domid)
    result["host"] = host
    return result, hist


def make_image(path: str, size: int, seed: int) -> None:
    """`size` bytes of seeded noise (not sparse: reads come from the page cache)."""
    import random

    block = random.Random(seed).randbytes(min(size, 1 << 20))
    with open(path, "wb") as f:
        for off in range(0, size, len(block)):
            f.write(block[:size - off])


def _run_guest(xl: Xl, host: str, domid: int, opts: BenchOptions, img: str) -> dict[str, Any]:
    def path(key: str) -> str:
        return f"/local/domain/{domid}/{DATA}/{key}"

    sectors = _wait_key(xl, path("ready"), 30, path("result"))
    say(f"{GUEST} (id {domid}) has xvda connected ({sectors} sectors)")
    say(f"Raw ZeroMQ round trip between two processes: {WARMUP} + {BASELINE_COUNT}")
    zmq_rtt = measure_zmq(BASELINE_COUNT)
    verb = {0.0: "pread", 1.0: "pwrite"}.get(WRITE_SHARE[opts.rw], "pread/pwrite")
    say(f"Direct {verb} of the image by this process: {WARMUP} + {BASELINE_COUNT}")
    pread = measure_pread(img, opts, BASELINE_COUNT)
    say(f"{GUEST}: {opts.rw} bs={opts.bs} iodepth={opts.iodepth}: "
        f"{opts.warmup_ms} ms warm-up + {opts.runtime_ms} ms, then {opts.probes} probes")
    xl("xs_write", path=path("go"), value="1")
    raw_cpu = _cpu_over_window(host, opts)
    budget = opts.runtime_ms / 1000 + opts.probes * 0.05 + 30
    raw = json.loads(_wait_key(xl, path("result"), budget))
    if "error" in raw:
        raise HostError(f"{GUEST}: {raw['error']}")
    raw["hist"] = [xl("xs_read", path=path(f"hist/{i}")) for i in range(raw["hist_keys"])]
    raw["probes"] = [xl("xs_read", path=path(f"probe/{i}")) for i in range(raw["probe_keys"])]
    raw["baseline_zmq_rtt_ns"], raw["baseline_pread_ns"] = zmq_rtt, pread
    raw["cpu_s"] = raw_cpu
    return raw


def _cpu_over_window(host: str, opts: BenchOptions) -> dict[str, tuple[float, int]]:
    """(CPU seconds, context switches) of each process of the host in the guest's
    window, as this process's clock places it (within a few ms: the guest
    starts on `go`)."""
    time.sleep(opts.warmup_ms / 1000)
    before = _cpu_times(host)
    time.sleep(opts.runtime_ms / 1000)
    after = _cpu_times(host)
    return {name: (round(t - before[name][0], 4), c - before[name][1])
            for name, (t, c) in after.items() if name in before}  # fmt: skip


def _cpu_times(host: str) -> dict[str, tuple[float, int]]:
    """{title: (user + system seconds, context switches)} of the host's processes
    (titles "hypervisor", "Domain-0", the guest's and the device's names)."""
    out = {}
    for proc in rundir.host_processes(host):
        try:
            title = " ".join(proc.cmdline()).split("]: ", 1)[-1].split(" (", 1)[0]
            t, c = proc.cpu_times(), proc.num_ctx_switches()
        except psutil.Error:
            continue
        out[title] = (t.user + t.system, c.voluntary + c.involuntary)
    return out


def _wait_key(xl: Xl, path: str, budget_s: float, error_path: str | None = None) -> str:
    """xs_wait beyond one long-poll's cap; a guest's error result ends it early."""
    deadline = time.monotonic() + budget_s
    while True:
        try:
            return xl("xs_wait", path=path, timeout_ms=2000, timeout_s=7)
        except HostError as exc:
            if "timed out" not in str(exc):
                raise  # the host or the toolstack is gone: no point waiting
            failed = error_path and _try_read(xl, error_path)
            if failed:
                raise HostError(f"{GUEST}: {json.loads(failed).get('error', failed)}") from None
            if time.monotonic() > deadline:
                raise HostError(f"no {path} after {budget_s:.0f} s: {exc}") from None


def _try_read(xl: Xl, path: str) -> str | None:
    try:
        return xl("xs_read", path=path)
    except HostError:
        return None


def measure_pread(path: str, opts: BenchOptions, count: int) -> dict[str, int]:
    """The same pattern by a plain process: os.pread/os.pwrite, bs at a time."""
    pattern = Pattern(opts.rw, opts.bs, opts.size, opts.seed)
    data = os.urandom(opts.bs)
    clock, samples = time.monotonic_ns, []
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(WARMUP + count):
            is_write, offset = pattern.next()
            t0 = clock()
            if is_write:
                os.pwrite(fd, data, offset)
            else:
                os.pread(fd, opts.bs, offset)
            samples.append(clock() - t0)
    finally:
        os.close(fd)
    return histogram_summary(samples[WARMUP:])


# ---- hop records -------------------------------------------------------------------


def _enable_hops(tmp: str) -> str | None:
    """Set $XENOLAB_HOPS for the host about to boot (its processes inherit it)."""
    if hops is None:
        return None
    folder = os.path.join(tmp, "hops")
    os.makedirs(folder)
    os.environ[hops.ENV] = folder
    return folder


def _read_hops(folder: str | None) -> list[tuple[int, int, int, int]]:
    return hops.read(folder) if folder is not None and hops is not None else []


def hop_breakdown(probes: list[tuple[int, int, int]], records: list[tuple[int, int, int, int]],
                  domid: int) -> dict[str, list[int]]:
    """Each hop's samples over the probes; `records` are (t_ns, point, a, b), oldest first.

    A probe's points are found in time order between its submit and its event;
    a hop is measured only when both of its ends were found.
    """
    times = [r[0] for r in records]
    out: dict[str, list[int]] = {name: [] for name, _, _ in CHAIN}
    for submit, event, done in probes:
        if not event:
            continue
        prev: int | None = submit
        j = bisect.bisect_left(times, submit)
        for name, point, match in CHAIN:
            if point in (GUEST_EVENT, GUEST_DONE):
                t: int | None = event if point == GUEST_EVENT else done
            else:
                t, j = _find(records, j, event, getattr(hops, point, None), match, domid)
            if t is not None and prev is not None:
                out[name].append(t - prev)
            prev = t
    return out


def _find(records, j: int, until: int, point: int | None, match, domid: int):
    """The first record of `point` from index j up to time `until`: (t, next j)."""
    if point is None:
        return None, j
    for k in range(j, len(records)):
        t, p, a, b = records[k]
        if t > until:
            break
        if p == point and match(a, b, domid):
            return t, k + 1
    return None, j


# ---- the report ------------------------------------------------------------------------


def summarize(opts: BenchOptions, raw: dict[str, Any], hist: dict[int, int],
              records: list[tuple[int, int, int, int]], domid: int) -> dict[str, Any]:
    """The --json object from the guest's raw result and the hop records."""
    n = max(raw["ok"] + raw["errors"], 1)
    iops = raw["ok"] / (raw["window_ns"] / 1e9)
    clat = {k: raw[k] for k in ("min", "mean", "max", "stdev")} | percentiles(hist)
    probes = [tuple(int(x, 16) for x in item.split(".")) for item in split_chunks(raw["probes"])]
    probes = [(s, s + e if e else 0, s + d if d else 0) for s, e, d in probes]
    hop_samples = hop_breakdown(probes, records, domid)
    zmq_p50, pread_p50 = raw["baseline_zmq_rtt_ns"]["p50"], raw["baseline_pread_ns"]["p50"]
    per_req = {k: round(v / n, 3) for k, v in sorted(raw["calls"].items())}
    result = {
        "bench": "blk", "rw": opts.rw, "bs": opts.bs, "iodepth": opts.iodepth,
        "runtime_s": opts.runtime_ms / 1000, "size": opts.size,
        "count": raw["ok"], "errors": raw["errors"], "window_s": raw["window_ns"] / 1e9,
        "iops": round(iops, 1), "bw_bytes_per_s": round(iops * opts.bs),
        "clat_ns": clat,
        "notify_per_req": {"front_to_back": round(raw["notify"] / n, 4),
                           "back_to_front": round(raw["events"] / n, 4)},
        "hypercalls_per_req": round(raw["hypercalls"] / n, 3),
        "traps_per_req": round(raw["traps"] / n, 3),
        "upcalls_per_req": round(raw["upcalls"] / n, 3),
        "grants_per_req": round(raw["grants"] / n, 4),
        "hypercall_mix_per_req": per_req,
        "cpu_us_per_req": {k: round(v[0] * 1e6 / n, 1) for k, v in raw["cpu_s"].items()},
        "ctx_switches_per_req": {k: round(v[1] / n, 2) for k, v in raw["cpu_s"].items()},
        "cpu_busy": round(sum(v[0] for v in raw["cpu_s"].values()) / (raw["window_ns"] / 1e9),
                          3),
        "hops_ns": {k: (int(statistics.median(v)) if v else None)
                    for k, v in hop_samples.items()},
        "hops_source": "hooks" if records else "guest only (no hop records)",
        "probes": len(probes),
        "probe_clat_ns": {"p50": _median([d - s for s, e, d in probes if d])},
        "baseline_zmq_rtt_ns": raw["baseline_zmq_rtt_ns"],
        "baseline_pread_ns": raw["baseline_pread_ns"],
        "ratio_p50_to_zmq_rtt": round(clat["p50"] / zmq_p50, 3) if zmq_p50 else None,
        "ratio_p50_to_pread": round(clat["p50"] / pread_p50, 3) if pread_p50 else None,
    }
    result["targets"] = targets(result)
    return result


def percentiles(hist: dict[int, int]) -> dict[str, int]:
    """fio's percentiles from the guest's buckets, through an HdrHistogram."""
    from hdrh.histogram import HdrHistogram

    h = HdrHistogram(1, 3600 * 10**9, 3)
    for index, count in hist.items():
        low, width = bucket_range(index)
        h.record_value(max(low + width // 2, 1), count)
    if not hist:
        return dict.fromkeys(PCTS, 0)
    return {k: h.get_value_at_percentile(p) for k, p in PCTS.items()}


def _median(values: list[int]) -> int | None:
    return int(statistics.median(values)) if values else None


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged when this run is the workload they are stated for."""
    randread_4k = r["rw"] == "randread" and r["bs"] == 4096
    out: dict[str, Any] = {}
    if randread_4k and r["iodepth"] == 1 and r["ratio_p50_to_zmq_rtt"] is not None:
        goal = TARGETS["ratio_p50_to_zmq_rtt"]
        out["ratio_p50_to_zmq_rtt"] = {"max": goal, "met": r["ratio_p50_to_zmq_rtt"] <= goal}
    if randread_4k and r["iodepth"] >= 32:
        npr = r["notify_per_req"]
        out["iops"] = {"min": TARGETS["iops"], "met": r["iops"] >= TARGETS["iops"]}
        out["notify_per_req"] = {"max": TARGETS["notify_per_req"],
                                 "met": max(npr.values()) <= TARGETS["notify_per_req"]}
    return out


def report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    c = r["clat_ns"]
    console.print(f"[bold]blk: {r['rw']} bs={r['bs']} iodepth={r['iodepth']}[/] on host "
                  f"'{r['host']}': {r['count']} I/Os in {r['window_s']:.2f} s, "
                  f"{r['errors']} errors")
    console.print(f"  IOPS={r['iops']:,.0f}, BW={r['bw_bytes_per_s'] / 2**20:.1f} MiB/s")
    console.print(f"  clat (µs): min={c['min'] / 1e3:.1f}, avg={c['mean'] / 1e3:.1f}, "
                  f"max={c['max'] / 1e3:.1f}, stdev={c['stdev'] / 1e3:.1f}")
    console.print("  clat percentiles (µs): " + ", ".join(
        f"{p}th={c[k] / 1e3:.1f}" for k, p in PCTS.items()))
    n = r["notify_per_req"]
    console.print(f"  notifications/request: front->back {n['front_to_back']:.3f}, "
                  f"back->front {n['back_to_front']:.3f}; hypercalls/request "
                  f"{r['hypercalls_per_req']:.2f} ({r['traps_per_req']:.2f} traps)")
    console.print("  CPU µs/request: " + ", ".join(
        f"{k} {v}" for k, v in r["cpu_us_per_req"].items()) +
        f" (the host's processes kept {r['cpu_busy']:.2f} CPUs busy)")
    console.print("  context switches/request: " + ", ".join(
        f"{k} {v}" for k, v in r["ctx_switches_per_req"].items()))
    console.print("  guest hypercalls/request: " + ", ".join(
        f"{k} {v}" for k, v in r["hypercall_mix_per_req"].items()))
    table = Table(title=f"Per-hop p50 over {r['probes']} one-at-a-time probes "
                        f"({r['hops_source']})")
    table.add_column("hop")
    table.add_column("p50 µs", justify="right")
    for name, v in r["hops_ns"].items():
        table.add_row(name, "n/a" if v is None else f"{v / 1e3:.1f}")
    table.add_row("probe submit -> callback", _us(r["probe_clat_ns"]["p50"]))
    console.print(table)
    z, p = r["baseline_zmq_rtt_ns"], r["baseline_pread_ns"]
    console.print(f"  baselines p50: raw ZeroMQ RTT {z['p50'] / 1e3:.1f} µs, direct "
                  f"pread/pwrite {p['p50'] / 1e3:.1f} µs; clat p50 = "
                  f"{r['ratio_p50_to_zmq_rtt']}x ZeroMQ RTT, {r['ratio_p50_to_pread']}x pread")
    for key, t in r["targets"].items():
        bound = f"<= {t['max']}" if "max" in t else f">= {t['min']:,}"
        console.print(f"  target {key} {bound}: {'met' if t['met'] else 'not met'}")


def _us(v: int | None) -> str:
    return "n/a" if v is None else f"{v / 1e3:.1f}"


def plot(r: dict[str, Any], hist: dict[int, int], path: str) -> None:
    """The completion-latency distribution: bucket densities on a log axis, with p50/p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranges = [(bucket_range(i), n) for i, n in sorted(hist.items())]
    xs = [(low + width / 2) / 1e3 for (low, width), _ in ranges]
    total = sum(hist.values()) or 1
    ys = [100 * n / total for _, n in ranges]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(xs, ys, drawstyle="steps-mid")
    ax.set_xscale("log")
    for key in ("p50", "p99"):
        ax.axvline(r["clat_ns"][key] / 1e3, linestyle="--", color="grey")
        ax.text(r["clat_ns"][key] / 1e3, max(ys, default=1), key, rotation=90, va="top")
    ax.set_xlabel("completion latency (µs)")
    ax.set_ylabel("% of I/Os per bucket")
    ax.set_title(f"{r['rw']} bs={r['bs']} iodepth={r['iodepth']}: "
                 f"{r['iops']:,.0f} IOPS on '{r['host']}'")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

