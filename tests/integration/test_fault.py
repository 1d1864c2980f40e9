"""`xenolab fault`: precise kills on a running host, and every ready scenario
of examples/faults in its short version, checked for what it promises:
zero acknowledged records lost, e2fsck clean where promised, no leaks, and a
report whose fields are present and consistent. The scenarios that need a
recovery the host does not have yet (Dom0 restart, device restart) must say
so honestly."""

import json
import os
import pathlib
import signal
import time

import psutil
import pytest

from launcher.fault_run import Runner
from launcher.fault_scenario import load_scenario
from launcher.hostspec import default_host
from tests.conftest import assert_no_leaks, shm_entries, xenolab

pytestmark = pytest.mark.timeout(120)
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "faults"
FAULT_KEYS = {"index", "time_s", "target", "action", "fault", "expect", "outcome",
              "as_expected", "recovery_s", "max_stall_s", "stall_open", "note"}
TOTAL_KEYS = {"batches_issued", "batches_acked", "batches_failed", "batches_unanswered",
              "records_issued", "records_acked", "acked_records_lost", "max_stall_s"}


def test_fault_kill_signals_domains_devices_and_the_hypervisor(make_host):
    h = make_host(default_host())
    env = {**os.environ, "XENOLAB_HOST": h.name}
    d1, d2 = h["d1"], h["d2"]
    out = xenolab("fault", "kill", "d1", "--signal", "STOP", env=env).stdout
    assert f"Sent SIGSTOP to domain d1 (pid {d1['pid']})" in out
    assert psutil.Process(d1["pid"]).status() == psutil.STATUS_STOPPED
    xenolab("fault", "kill", str(d1["domid"]), "--signal", "cont", env=env)
    assert psutil.Process(d1["pid"]).status() != psutil.STATUS_STOPPED
    bad = xenolab("fault", "kill", "nosuch", env=env, check=False)
    assert bad.returncode == 1 and bad.stderr.strip() == (
        f"xenolab: error: host '{h.name}' has no domain or device 'nosuch'")
    xenolab("fault", "kill", "d2", env=env)  # d2 crashes; on_crash = "restart"
    assert h.xl("wait_gone", domid=d2["domid"], timeout_ms=10_000) is True
    dev = next(d for d in h.firmware.devices if d.spec.name == "vbd-d1-xvda")
    old = dev.proc.pid
    out = xenolab("fault", "kill", "vbd-d1-xvda", env=env).stdout
    assert f"device vbd-d1-xvda (pid {old})" in out
    # the firmware reaps it and starts a new controller (never wait() on it here:
    # this process is the supervisor, and the reap is the firmware's)
    deadline = time.monotonic() + 10
    while dev.proc.pid == old and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dev.proc.pid != old and dev.restarts == 1
    out = xenolab("fault", "kill", "hypervisor", "--signal", "KILL", env=env).stdout
    assert "Sent SIGKILL to the hypervisor" in out
    assert h.xen.wait(10) == -signal.SIGKILL
    nohost = xenolab("fault", "kill", "d1", env=env, check=False)
    assert nohost.returncode == 1 and "no running host" in nohost.stderr


def check_report(r: dict, sc) -> None:
    assert r["scenario"] == sc.name and r["seed"] == 1
    t = r["totals"]
    assert set(t) >= TOTAL_KEYS
    assert t["acked_records_lost"] == 0
    assert 0 < t["batches_acked"] <= t["batches_issued"]
    assert t["batches_acked"] + t["batches_failed"] + t["batches_unanswered"] == \
        t["batches_issued"]
    assert 0 < t["records_acked"] <= t["records_issued"]
    assert r["leaks"] == []
    if sc.fsck == "clean":
        assert r["fsck_status"] == "clean", r["fsck"]
    assert r["fsck"] and all("clean" in v for v in r["fsck"].values())
    assert len(r["faults"]) >= 1
    for f in r["faults"]:
        assert set(f) >= FAULT_KEYS
        assert f["time_s"] is not None and f["time_s"] >= 0
        if f["recovery_s"] is not None:
            assert 0 <= f["recovery_s"] <= f["max_stall_s"] + 0.002
    for w in r["writers"]:
        assert w["acked_lost"] == 0 and w["image"]["acked_missing"] == 0
        if sc.verify_in_guest and (not r["host_crashes"] or sc.on_host_crash == "reboot"):
            assert w["guest_read"].get("acked_missing") == 0, w["guest_read"]
    assert r["verdict"] == {"ok": True, "problems": []}, r["verdict"]


def run_short(name: str) -> tuple[dict, object]:
    sc = load_scenario(EXAMPLES / f"{name}.toml").shortened()
    shm = shm_entries()
    runner = Runner(sc, seed=1, name=f"f{os.getpid()}-{name}"[:40])
    report = runner.run()
    assert_no_leaks(runner.name, shm)
    return report, sc


@pytest.mark.parametrize("name", ["kill-domu", "repeated-kills", "disk-hang", "disk-eio",
                                  "malicious-frontend", "random-20"])
def test_scenario_recovers_and_loses_nothing(name):
    r, sc = run_short(name)
    check_report(r, sc)
    assert all(f["outcome"] == "recovered" for f in r["faults"])
    if name == "disk-eio":
        assert r["totals"]["batches_failed"] > 0  # EIO was seen, and never acknowledged
    if name == "malicious-frontend":
        results = {f["fault"]: f["result"] for f in r["faults"]}
        assert "-1" in results["rogue bad-requests"]
        assert results["rogue corrupt-index"].endswith(("state 5", "state 6"))


def test_stop_cont_through_the_command_line_with_json_and_plot(tmp_path):
    png = tmp_path / "stop.png"
    shm = shm_entries()
    proc = xenolab("fault", "run", str(EXAMPLES / "stop-cont.toml"), "--short", "--json",
                   "--plot", str(png))
    r = json.loads(proc.stdout)
    assert_no_leaks(r["host"], shm)
    check_report(r, load_scenario(EXAMPLES / "stop-cont.toml").shortened())
    assert [f["target"] for f in r["faults"]] == ["d1", "Domain-0"]
    # recovered, each after a stall (how long is the benchmark's business, not a test's)
    assert all(f["outcome"] == "recovered" and f["recovery_s"] > 0 for f in r["faults"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hypervisor_crash_reboots_and_every_acknowledged_record_survives():
    r, sc = run_short("hypervisor-crash")
    check_report(r, sc)
    assert [c["leaks"] for c in r["host_crashes"]] == [[]]
    assert r["host_crashes"][0]["reboot_s"] > 0
    assert r["faults"][0]["outcome"] == "host-reboot"


def test_dom0_killed_under_load_restarts_and_nothing_is_lost():
    r, sc = run_short("kill-dom0")
    check_report(r, sc)
    f = r["faults"][0]
    assert f["expect"] == "recovery" and f["outcome"] == "recovered", f
    assert f["recovery_s"] is not None and not f["stall_open"]
    (load,) = r["loads"]  # the block load ran beside the writers, through the kill
    assert load["ops"] > 0 and load["failed"] == 0 and load["starts"] == 1


def test_a_killed_disk_device_restarts_and_nothing_is_lost():
    r, sc = run_short("kill-disk-device")
    check_report(r, sc)
    f = r["faults"][0]
    assert f["expect"] == "recovery" and f["outcome"] == "recovered", f
    assert f["recovery_s"] is not None and not f["stall_open"]
