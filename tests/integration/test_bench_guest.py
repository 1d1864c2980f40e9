"""`xenolab bench guest` end to end: a private host boots with fresh images,
d1 runs osbench from its shell, and the JSON report is complete and sane.
Timing targets are reported by the bench, never asserted here. The parsing
of osbench's lines is checked alone first."""

import json
import os

import pytest

from launcher import rundir
from launcher.bench_guest import parse, summarize
from launcher.rundir import HostError
from tests.conftest import assert_no_leaks, shm_entries, xenolab

pytestmark = pytest.mark.timeout(60)

SUMMARY = ("count", "p50", "p90", "p99", "max", "mean")


def test_osbench_lines_are_parsed_and_summarized():
    out = "\n".join(["osbench 2 ; echo osbench-exit $?", "exec_ns 3000000", "exec_ns 5000000",
                     "exec_cold_ns 9000000 6 6", "exec_cold_ns 11000000 6 6",
                     "some kernel message", "fopen_ns 6000000 5 5", "blk_ns 1000000",
                     "blk_ns 1000000", "fopen_ns 6500000 5 5", "blk_ns 1200000",
                     "blk_ns 1 2", "osbench-exit 0"])
    samples = parse(out)
    assert [len(samples[k]) for k in ("exec_ns", "exec_cold_ns", "fopen_ns", "blk_ns")] == [
        2, 2, 2, 3]  # fmt: skip
    r = summarize(samples)
    assert r["fopen_requests"] == 5 and r["exec_cold_blocks"] == 6
    assert r["fopen_ratio"] == pytest.approx(r["fopen_ns"]["p50"] / (5 * r["blk_ns"]["p50"]),
                                             abs=0.001)
    assert r["targets"]["exec_p50_ms"]["met"] and set(r["targets"]) == {"exec_p50_ms",
                                                                        "fopen_ratio"}
    with pytest.raises(HostError, match="osbench failed"):
        parse("exec_ns 5\nosbench: blkread_ns: ENODEV\nosbench-exit 1")
    with pytest.raises(HostError, match="osbench failed"):
        parse("sh: osbench: command not found\nosbench-exit 127")


def test_bench_guest_json():
    shm = shm_entries()
    r = json.loads(xenolab("bench", "guest", "--iterations", "5", "--json").stdout)
    assert r["bench"] == "guest" and r["iterations"] == 5
    for key, count in (("exec_ns", 5), ("exec_cold_ns", 5), ("fopen_ns", 5), ("blk_ns", 20)):
        s = r[key]
        assert set(SUMMARY) <= set(s) and s["count"] == count, key
        assert 0 < s["p50"] <= s["p90"] <= s["p99"] <= s["max"] * 1.01, key
    assert r["fopen_blocks"] >= 1 and r["fopen_requests"] >= 1
    assert r["exec_cold_blocks"] >= r["exec_cold_requests"] >= 1
    assert r["fopen_ratio"] > 0
    assert set(r["targets"]) == {"exec_p50_ms", "fopen_ratio"}
    assert all(isinstance(t["met"], bool) for t in r["targets"].values())
    # the private host is gone, and so are its images
    host = r["host"]
    assert host.startswith("bench-guest-")
    assert rundir.running(host) is None
    assert_no_leaks(host, shm)
    assert not os.path.exists(rundir.image_dir(host))
