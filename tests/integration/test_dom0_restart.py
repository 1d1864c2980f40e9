"""Domain-0 dies and comes back; the DomUs keep running (issue 5, 1).

Xen tears the dead Domain-0 down and builds a new one; xenstored, xenconsoled,
the toolstack and blkback take up what the run directory says, and each
blkfront reconnects and re-issues its in-flight requests.
"""

import json
import os
import pathlib
import signal
import subprocess
import time

import psutil
import pytest

from hypervisor.core import DOM0_RESTART_BURST
from hypervisor.main import EXIT_CRASH
from launcher import rundir
from launcher.guestshell import GuestShell
from launcher.hostspec import parse_host_toml
from tests.conftest import agent_domain, boot_blk_guest
from tests.kernels.agent import stream_sector


def kill_dom0(h) -> int:
    """SIGKILL Domain-0 and wait until it is gone; returns its old pid."""
    return kill_dom0_pid(h, h["Domain-0"]["pid"])


def kill_dom0_pid(h, pid: int) -> int:
    proc = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    proc.wait(10)
    if h._client is not None:  # a fresh connection for the new Domain-0
        h._client.close()
        h._client = None
    return pid


@pytest.fixture
def blk_host(make_host, agent, tmp_path):
    return boot_blk_guest(make_host, agent, tmp_path)


def test_idle_dom0_killed_comes_back_and_the_guest_keeps_its_disk(blk_host):
    h, g, img = blk_host
    before = h["g"]
    assert g("blk", kind="write", sector=3, data=(b"A" * 512).hex())["status"] == 0
    old = kill_dom0(h)
    dom0 = h["Domain-0"]
    assert dom0["domid"] == 0 and dom0["pid"] != old
    after = h["g"]
    assert (after["domid"], after["pid"]) == (before["domid"], before["pid"])
    assert g("blk", kind="write", sector=4, data=(b"B" * 512).hex())["status"] == 0
    assert g("blk", kind="flush")["status"] == 0
    raw = img.read_bytes()
    assert raw[3 * 512:5 * 512] == b"A" * 512 + b"B" * 512
    be = h.xl("xs_read", path=f"/local/domain/0/backend/vbd/{g.domid}/51712/state")
    fe = h.xl("xs_read", path=f"/local/domain/{g.domid}/device/vbd/51712/state")
    assert (be, fe) == ("4", "4")
    dmesg = h.xl("dmesg").decode()
    assert "Domain-0 restarting" in dmesg


def wait_for(cond, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def sector_of(img, n: int) -> bytes:
    with open(img, "rb") as f:
        f.seek(n * 512)
        return f.read(512)


def test_dom0_killed_under_block_io_the_guest_sees_a_stall_only(blk_host, capsys):
    h, g, img = blk_host
    first, count = 100, 4000
    n = g.start("blk_stream", sector=first, count=count, depth=8)
    wait_for(lambda: sector_of(img, first + 400) == stream_sector(first + 400),
             what="the stream to get going")
    t_kill = time.monotonic_ns()
    kill_dom0(h)
    res = g.wait(n, timeout_ms=30_000)
    assert res["ok"], res
    out = res["result"]
    assert (out["done"], out["errors"]) == (count, 0)
    assert out["reissued"] > 0  # requests were in flight when the backend died
    gap_start, gap_end = out["gap"]
    recovery_s = (gap_end - t_kill) / 1e9
    with capsys.disabled():
        print(f"\nDom0 killed under block I/O: first completion {recovery_s * 1000:.0f} ms "
              f"after the kill (longest stall {(gap_end - gap_start) / 1e6:.0f} ms, "
              f"{out['reissued']} requests re-issued)")
    assert recovery_s > 0  # the 2 s target is measured by `xenolab fault run`, not asserted
    for s in range(first, first + count):  # every acknowledged write is on the image
        assert sector_of(img, s) == stream_sector(s), f"sector {s}"


def test_dom0_that_keeps_dying_takes_the_host_down(make_host):
    """Two restarts within DOM0_RESTART_WINDOW_S; the third death is a host crash."""
    h = make_host(None, agent_domain("a1"))
    pids = set()
    for _ in range(DOM0_RESTART_BURST):
        pids.add(kill_dom0(h))
        assert h["a1"]["state"] in ("running", "blocked")  # the new Domain-0 answers
    dom0 = h["Domain-0"]["pid"]
    assert dom0 not in pids
    os.kill(dom0, signal.SIGKILL)
    assert h.xen.wait(10) == EXIT_CRASH
    xen_log = (pathlib.Path(h.dir) / "xen.log").read_text()
    assert f"Domain 0 crashed {DOM0_RESTART_BURST + 1} times" in xen_log
    # make_host's teardown asserts that nothing of the host is left


FS_HOST = """
[host]
name = "fsrestart"
[[domain]]
name = "g1"
memory = 32
disk = ["format=raw, vdev=xvda, access=rw, target=g1.img"]
"""


def test_dom0_killed_during_dd_oflag_sync_in_a_xenolinux_guest(make_host):
    """The guest's filesystem sees a stall: dd finishes without an error, the
    shell still answers, and after a clean shutdown the image passes e2fsck
    and holds the file."""
    h = make_host(parse_host_toml(FS_HOST, "test"))
    sh = GuestShell(h, "g1")
    (dev,) = [d["name"] for d in h.xl("phys_list")]

    def completed() -> int:
        return h.xl("phys_info", dev=dev)["statistics"]["completed"]

    base = completed()
    sh.type("dd if=/dev/zero of=/home/f bs=4096 count=300 oflag=sync\n")
    wait_for(lambda: completed() > base + 60, what="dd to get going")
    kill_dom0(h)
    out = sh.wait_for("bytes copied")
    assert "300+0 records out" in out and "dd:" not in out, out
    assert sh.run("echo alive") == "alive"
    assert h.xl("shutdown", dom="g1", wait_ms=20_000)
    img = str(pathlib.Path(rundir.run_root()) / "images" / h.name / "g1.img")
    fsck = subprocess.run(["e2fsck", "-fn", img], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    got = subprocess.run(["debugfs", "-R", "cat /home/f", img], capture_output=True).stdout
    assert got == bytes(300 * 4096)


def test_guest_xenstore_requests_in_flight_survive_a_dom0_kill(make_host, agent):
    """The guest's xenbus reconnects: requests resent, transactions retried."""
    h = make_host(None, agent_domain("a1"))
    a, count = agent(h, "a1"), 1200
    path = f"/local/domain/{a.domid}/data/loop"
    n = a.start("xs_loop", count=count)
    wait_for(lambda: int(h.xl("xs_wait", path=path, timeout_ms=5000)) > 300,
             what="the loop to get going")
    kill_dom0(h)
    res = a.wait(n, timeout_ms=30_000)
    assert res["ok"], res
    assert res["result"]["reconnects"] == 1
    assert h.xl("xs_read", path=path) == str(count - 1)
    assert h.xl("xs_read", path=f"/local/domain/{a.domid}/data/txn") == str(count // 10)


def test_a_guest_that_crashed_while_dom0_was_down_gets_its_on_crash(make_host):
    """The new toolstack applies what the dead one never saw (SIGSTOP keeps
    the old Domain-0 from handling VIRQ_DOM_EXC before it dies)."""
    h = make_host(None, agent_domain("a1", on_crash="restart"), agent_domain("a2"))
    a1, a2, dom0 = h["a1"], h["a2"], h["Domain-0"]["pid"]
    os.kill(dom0, signal.SIGSTOP)
    os.kill(a1["pid"], signal.SIGKILL)
    psutil.Process(a1["pid"]).wait(10)
    kill_dom0_pid(h, dom0)
    h.xl("wait_booted", doms=["a1"], timeout_ms=10_000)
    assert h["a1"]["domid"] != a1["domid"]
    assert h["a2"]["pid"] == a2["pid"]
    assert f"domain {a1['domid']} (a1) crash: restart" in h.xl("dmesg").decode()


def test_a_restart_the_dead_dom0_began_is_finished_by_the_new_one(make_host):
    """Killed between destroying the old domain and creating the new one:
    the pending-restart record in the run directory finishes the job."""
    h = make_host(None, agent_domain("a1", on_crash="restart"))
    libxl = pathlib.Path(h.dir) / "libxl"
    record = json.loads((libxl / f"{h['a1']['domid']}.json").read_text())
    h.xl("destroy", dom="a1")
    (libxl / "pending-a1.json").write_text(json.dumps(record["spec"]))
    kill_dom0(h)
    h.xl("wait_booted", doms=["a1"], timeout_ms=10_000)
    assert "finishing the restart of a1" in h.xl("dmesg").decode()
    assert not (libxl / "pending-a1.json").exists()


def test_the_crash_loop_history_survives_a_dom0_restart(make_host):
    h = make_host(None, agent_domain("a1", on_crash="restart"))
    libxl = pathlib.Path(h.dir) / "libxl"
    now = time.monotonic()
    (libxl / "restarts.json").write_text(json.dumps({"a1": [now - 1.0] * 5}))
    kill_dom0(h)  # the new toolstack reads the history
    a1 = h["a1"]
    os.kill(a1["pid"], signal.SIGKILL)
    wait_for(lambda: "a1 restarts too fast" in h.xl("dmesg").decode(), what="crash-loop stop")
    assert "a1" not in [d["name"] for d in h.xl("list")]


def _connected_client(host: str):
    from launcher.client import ToolstackClient
    c = ToolstackClient(host, check_running=False)
    c.call("list")  # connected (ZMTP handshake done) before Domain-0 is stopped
    return c


def _call_in_thread(c, op: str, **args):
    """c.call(op) on its own thread, once sent -> (thread, outcome list)."""
    import threading

    from launcher.rundir import HostError
    out: list = []
    sent = c.next_id + 1

    def run():
        with c:
            try:
                out.append(c.call(op, **args))
            except HostError as exc:
                out.append(exc)
    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: c.next_id == sent, what=f"'{op}' sent")  # numbered just before sending
    return t, out


def test_xl_requests_in_flight_when_dom0_dies(make_host):
    """A read-only request is asked again of the new Domain-0; a changing one
    fails in one line instead of waiting out its timeout."""
    h = make_host(None, agent_domain("a1"))
    dom0 = h["Domain-0"]["pid"]
    rc, wc = _connected_client(h.name), _connected_client(h.name)
    os.kill(dom0, signal.SIGSTOP)  # both requests reach a Domain-0 that never answers
    reader, got = _call_in_thread(rc, "list")
    writer, failed = _call_in_thread(wc, "pause", dom="a1")
    kill_dom0_pid(h, dom0)
    reader.join(30)
    writer.join(30)
    assert [d["name"] for d in got[0]][:2] == ["Domain-0", "a1"]
    if isinstance(failed[0], Exception):
        assert "Domain-0 restarted while handling 'pause'" in str(failed[0])
        assert h["a1"]["state"] != "paused"
    else:
        # The client's I/O thread had not yet written the request when the
        # old Domain-0 died: ZeroMQ kept it and delivered it to the new one,
        # which did it once and answered. Rare, and just as correct.
        assert h["a1"]["state"] == "paused"
