"""Boot, use and tear down real hosts."""

import json
import os
import signal

import psutil
import pytest

from launcher.hostspec import default_host
from tests.conftest import assert_no_leaks, shm_entries, xenolab


def test_default_host_boots_with_consoles_and_xenstore(make_host):
    h = make_host(default_host())
    doms = h.domains()
    assert set(doms) == {"Domain-0", "d1", "d2"}
    assert all(d["state"] in ("running", "blocked") for d in doms.values())
    d1 = doms["d1"]
    assert h.xl("xs_read", path=f"/local/domain/{d1['domid']}/name") == "d1"
    with open(os.path.join(h.dir, "console", "d1.log")) as f:
        log = f.read()
    assert "xenbus: connected to xenstore" in log
    assert psutil.Process(d1["pid"]).is_running()


def test_cli_list_info_dmesg_and_errors(make_host):
    h = make_host(default_host())
    env = {**os.environ, "XENOLAB_HOST": h.name}
    rows = json.loads(xenolab("xl", "list", "--json", env=env).stdout)
    assert {r["name"] for r in rows} == {"Domain-0", "d1", "d2"}
    assert all({"name", "domid", "state", "pid", "memory_mib", "vcpus"} <= r.keys() for r in rows)
    info = json.loads(xenolab("xl", "info", "--json", env=env).stdout)
    assert info["xen_pid"] == h.xen.pid and info["nr_cpus"] >= 1
    assert "Domain 1 (d1) created" in xenolab("xl", "dmesg", env=env).stdout
    bad = xenolab("xl", "destroy", "nosuch", env=env, check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "nosuch" in bad.stderr
    none = xenolab("xl", "list", "--host", "no-such-host", check=False)
    assert none.returncode != 0 and "no running host" in none.stderr
    assert "Traceback" not in bad.stderr + none.stderr


def test_pause_unpause_shutdown_reboot(make_host):
    h = make_host(default_host())
    h.xl("pause", dom="d1")
    assert h["d1"]["state_letters"][2] == "p"
    assert psutil.Process(h["d1"]["pid"]).status() == psutil.STATUS_STOPPED
    h.xl("unpause", dom="d1")
    assert h["d1"]["state"] in ("running", "blocked")
    old = h["d1"]["domid"]
    assert h.xl("shutdown", dom="d1", reason="reboot", wait_ms=10_000) is True
    h.xl("wait_booted", doms=["d1"], timeout_ms=10_000)
    assert h["d1"]["domid"] != old  # on_reboot=restart: a new domain
    assert h.xl("shutdown", dom="d2", reason="poweroff", wait_ms=10_000) is True
    assert "d2" not in h.domains()


def test_sigkill_of_a_domu_crashes_it_and_on_crash_applies(make_host):
    h = make_host(default_host())
    d1, d2 = h["d1"], h["d2"]
    os.kill(d1["pid"], signal.SIGKILL)
    assert h.xl("wait_gone", domid=d1["domid"], timeout_ms=10_000) is True
    h.xl("wait_booted", doms=["d1"], timeout_ms=10_000)
    new = h["d1"]
    assert new["domid"] != d1["domid"]  # on_crash = "restart" in the default host
    dmesg = h.xl("dmesg").decode()
    assert f"Domain {d1['domid']} (d1) crashed" in dmesg
    assert f"domain {d1['domid']} (d1) crash: restart" in dmesg  # Dom0 saw VIRQ_DOM_EXC
    assert h["d2"]["pid"] == d2["pid"] and psutil.Process(d2["pid"]).is_running()


@pytest.mark.parametrize("victim", ["hypervisor", "supervisor"])
def test_sigkill_of_host_processes_leaves_nothing(victim, tmp_path):
    """Kill a process of a detached host with SIGKILL: everything goes.
    (Domain-0 is restarted instead: tests/integration/test_dom0_restart.py.)"""
    name = f"kill-{victim.lower()}-{os.getpid()}"
    shm = shm_entries()
    xenolab("up", "--detach", "--host", name)
    from launcher import rundir
    rec = rundir.read_pids(rundir.path(name))
    pid = {"hypervisor": rec.hypervisor, "supervisor": rec.supervisor}[victim]
    procs = rundir.host_processes(name)
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    if victim == "supervisor":  # nobody left to remove the record
        rundir.remove_pids(rundir.path(name))
    assert_no_leaks(name, shm)


def test_down_via_cli_leaves_nothing():
    name = f"down-{os.getpid()}"
    shm = shm_entries()
    xenolab("up", "--detach", "--host", name)
    out = xenolab("down", "--host", name).stdout
    assert "is down" in out
    assert_no_leaks(name, shm)
    again = xenolab("down", "--host", name, check=False)
    assert again.returncode == 1 and "no running host" in again.stderr


def _read_until(stream, marker: bytes, timeout: float) -> bytes:
    """What `xl console` printed, up to and including `marker` (as a user watches)."""
    import os
    import select
    import time
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        if select.select([stream], [], [], 0.5)[0]:
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    assert marker in seen, f"{marker!r} not shown within {timeout} s: {seen[-300:]!r}"
    return seen


def test_xl_console_shows_output_takes_input_and_detaches(make_host):
    import subprocess
    import sys
    h = make_host(default_host())
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "xl", "console", "d1",
                             "--host", h.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out = _read_until(proc.stdout, b"/ # ", timeout=30)  # the user waits for the prompt
    proc.stdin.write(b"echo hello xen\n")  # to d1's shell
    proc.stdin.flush()
    out += _read_until(proc.stdout, b"\nhello xen\r\n", timeout=30)
    proc.stdin.write(b"\x1d")  # Ctrl-] detaches, once the user has seen the echo
    proc.stdin.close()
    out = (out + proc.stdout.read()).decode()
    proc.stdout.close()
    assert proc.wait(10) == 0
    assert "xenbus: connected to xenstore" in out and "\nhello xen\r\n" in out
