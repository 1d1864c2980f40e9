"""`xenolab bench blk` end to end: a private host with a bench DomU is booted,
measured and torn down; the JSON report is complete and self-consistent.
Timing targets are reported by the bench, never asserted here. The pure
parts (histogram, chunks, sizes, hop matching) are checked alone first."""

import json
import os
import random
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from domains.xenolinux.blk_bench import (
    CHUNK,
    BenchOptions,
    Pattern,
    bucket_of,
    bucket_range,
    chunk_items,
    decode_hist,
    encode_hist,
    latency_stats,
    split_chunks,
)
from launcher import bench_blk, rundir
from launcher.bench_blk import CHAIN, hop_breakdown, parse_size, percentiles

ROOT = Path(__file__).resolve().parents[2]
HOPS = [name for name, _, _ in CHAIN]


# ---- the pure parts --------------------------------------------------------------


def test_buckets_are_contiguous_and_within_one_percent() -> None:
    values = [0, 1, 255, 256, 257, 511, 512, 10**5, 123_456_789, 3 * 10**12]
    values += [random.Random(7).randrange(1, 10**10) for _ in range(500)]
    for v in values:
        low, width = bucket_range(bucket_of(v))
        assert low <= v < low + width
        assert width == 1 or width / low <= 1 / 128
    assert [bucket_range(i + 1)[0] for i in range(2000)] == [
        sum(bucket_range(i)) for i in range(2000)]  # fmt: skip


def test_histogram_travels_in_chunks_under_the_xenstore_cap() -> None:
    rng = random.Random(1)
    hist: dict[int, int] = {}
    for _ in range(20_000):
        i = bucket_of(int(rng.lognormvariate(13, 1)))
        hist[i] = hist.get(i, 0) + 1
    chunks = chunk_items(encode_hist(hist))
    assert len(chunks) > 1 and all(0 < len(c) <= CHUNK for c in chunks)
    assert decode_hist(split_chunks(chunks)) == hist
    p = percentiles(hist)
    assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["p999"] <= p["p9999"]


def test_latency_stats_are_exact() -> None:
    s = latency_stats(array("q", [10, 20, 30, 40]))
    assert s == {"count": 4, "min": 10, "max": 40, "mean": 25, "stdev": 11}


def test_options_sizes_and_patterns() -> None:
    assert parse_size("4k") == 4096 and parse_size("64M") == 64 << 20 and parse_size("512") == 512
    opts = BenchOptions(rw="randrw", bs=8192, iodepth=3, size=1 << 20, seed=5)
    assert BenchOptions.from_cmdline(opts.cmdline() + " console=hvc0") == opts
    with pytest.raises(ValueError):
        BenchOptions(bs=1000)
    seq = Pattern("read", 4096, 3 * 4096, 0)
    assert [seq.next() for _ in range(4)] == [(False, 0), (False, 4096), (False, 8192), (False, 0)]
    mixed = [Pattern("randrw", 4096, 1 << 20, 5).next() for _ in range(2)]
    assert mixed == [Pattern("randrw", 4096, 1 << 20, 5).next() for _ in range(2)]  # seeded
    ios = Pattern("randrw", 4096, 1 << 20, 5)
    got = [ios.next() for _ in range(400)]
    assert all(off % 4096 == 0 and off < 1 << 20 for _, off in got)
    assert 100 < sum(w for w, _ in got) < 300


def test_hops_are_matched_in_time_order(monkeypatch) -> None:
    class FakeHops:
        XEN_SEND, BACK_SUBMIT, DRV_DOORBELL, DEV_KICK = 1, 2, 3, 4
        DEV_IRQ, XEN_PIRQ, DRV_IRQ, BACK_NOTIFY = 5, 6, 7, 8

    monkeypatch.setattr(bench_blk, "hops", FakeHops)
    g = 3
    records = [(90, 1, g, 0),  # before the probe: ignored
               (105, 1, 0, g),  # Dom0 -> guest: not the guest's send
               (110, 1, g, 0), (130, 2, g, 0), (131, 2, 7, 0), (140, 3, 0, 0), (150, 4, 0, 0),
               (170, 5, 0, 0), (180, 6, 16, 0), (200, 7, 16, 0), (210, 8, g, 0), (230, 1, 0, g)]
    out = hop_breakdown([(100, 260, 270), (300, 0, 350)], records, g)  # the 2nd saw no event
    assert [out[h] for h in HOPS] == [[10], [20], [10], [10], [20], [10], [20], [10], [20], [30],
                                      [10]]  # fmt: skip
    out = hop_breakdown([(100, 260, 270)], records[:3], g)  # hooks missing from Dom0 on
    assert out["front_to_xen"] == [10] and out["xen_to_blkback"] == out["xen_to_front"] == []
    assert out["front_completion"] == [10]


# ---- the bench, end to end -----------------------------------------------------------


def run_bench(run_root: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XENOLAB_HOST", "XENOLAB_HOPS")}
    env["XENOLAB_RUN_ROOT"] = str(run_root)
    argv = [sys.executable, "-m", "launcher.cli", "bench", "blk", "--json", "--runtime", "1",
            "--iodepth", "4", "--size", "4M", *extra]  # fmt: skip
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)


def test_bench_blk_json(tmp_path: Path, monkeypatch) -> None:
    proc = run_bench(tmp_path, "--plot", str(tmp_path / "lat.png"))
    assert (tmp_path / "lat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # --plot drew it
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)  # progress goes to stderr: stdout is one object

    assert (r["rw"], r["bs"], r["iodepth"], r["size"]) == ("randread", 4096, 4, 4 << 20)
    assert r["count"] > 0 and r["errors"] == 0 and r["iops"] > 0
    assert abs(r["iops"] - r["count"] / r["window_s"]) <= 0.1 + r["iops"] * 1e-3
    assert r["bw_bytes_per_s"] == pytest.approx(r["iops"] * 4096, rel=1e-3)
    c = r["clat_ns"]
    assert 0 < c["min"] <= c["mean"] <= c["max"]
    assert c["min"] * 0.99 <= c["p50"] <= c["p90"] <= c["p99"] <= c["p999"] <= c["p9999"]
    assert c["p9999"] <= c["max"] * 1.01  # buckets are within 1 %

    n = r["notify_per_req"]
    assert 0 < n["front_to_back"] <= 1.01 and 0 < n["back_to_front"] <= 1.01
    assert r["hypercalls_per_req"] >= n["front_to_back"]
    assert r["hypercall_mix_per_req"]["event_channel_op/4"] == pytest.approx(
        n["front_to_back"], abs=0.01)  # EVTCHNOP_send: only blkfront's notifications
    assert r["grants_per_req"] < 0.1  # persistent grants: none per request once warm

    assert set(r["cpu_us_per_req"]) == {"hypervisor", "Domain-0", "blkbench", "blkbench-disk"}
    assert all(v >= 0 for v in r["cpu_us_per_req"].values()) and r["cpu_busy"] > 0
    assert set(r["ctx_switches_per_req"]) == set(r["cpu_us_per_req"])
    assert list(r["hops_ns"]) == HOPS and r["probes"] == 200
    assert r["hops_ns"]["front_completion"] > 0  # the guest's own stamps are always there
    assert all(v is None or v >= 0 for v in r["hops_ns"].values())
    for key in ("baseline_zmq_rtt_ns", "baseline_pread_ns"):
        assert 0 < r[key]["p50"] <= r[key]["p99"]
    assert r["ratio_p50_to_zmq_rtt"] == pytest.approx(
        c["p50"] / r["baseline_zmq_rtt_ns"]["p50"], abs=0.0006)

    # the private host is gone: no process, no PID record, no image directory
    monkeypatch.setenv("XENOLAB_RUN_ROOT", str(tmp_path))
    host = r["host"]
    assert host.startswith("bench-")
    assert rundir.running(host) is None
    assert rundir.host_processes(host) == []
    assert not (tmp_path / host / "pids.json").exists()
    assert not list(tmp_path.glob("bench-blk-*"))
