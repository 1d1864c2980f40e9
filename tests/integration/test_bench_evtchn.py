"""`xenolab bench evtchn` end to end: a private host is booted, measured and
torn down; the JSON report is complete and self-consistent. Timing targets
are reported by the bench, never asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

from launcher import rundir

ROOT = Path(__file__).resolve().parents[2]
COUNT = 300


def run_bench(run_root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XENOLAB_HOST"}
    env["XENOLAB_RUN_ROOT"] = str(run_root)
    argv = [sys.executable, "-m", "launcher.cli", "bench", "evtchn", "--json",
            "--count", str(COUNT)]  # fmt: skip
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)


def check_summary(s: dict, count: int) -> None:
    assert s["count"] == count
    assert 0 < s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert 0 < s["mean"] <= s["max"]


def test_bench_evtchn_json(tmp_path: Path, monkeypatch) -> None:
    proc = run_bench(tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # progress goes to stderr: stdout is one object

    assert result["count"] == result["baseline_count"] == COUNT
    assert result["hops"] == 4
    assert result["target_ratio_p50"] == 2.5
    check_summary(result["rtt_ns"], COUNT)
    check_summary(result["baseline_zmq_rtt_ns"], COUNT)
    ratio = result["rtt_ns"]["p50"] / result["baseline_zmq_rtt_ns"]["p50"]
    assert abs(result["ratio_p50"] - ratio) <= 0.0005 + 1e-9
    # the floor: the same four hops through plain relay processes
    floor = result["floor_chain_rtt_ns"]
    check_summary(floor, COUNT)
    assert abs(result["ratio_p50_to_floor"] - result["rtt_ns"]["p50"] / floor["p50"]) <= 0.0005
    assert abs(result["floor_ratio_p50"] - floor["p50"] / result["baseline_zmq_rtt_ns"]["p50"]) \
        <= 0.0005

    # the private host is gone: no process, no PID record
    monkeypatch.setenv("XENOLAB_RUN_ROOT", str(tmp_path))
    host = result["host"]
    assert host.startswith("bench-")
    assert rundir.running(host) is None
    assert rundir.host_processes(host) == []
    assert not (tmp_path / host / "pids.json").exists()
