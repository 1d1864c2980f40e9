"""A disk device that dies is restarted by the firmware (launcher.firmware);
Domain-0's driver fails or keeps the commands it held (`on_crash`), then
re-initialises the queue pair and I/O resumes. A guest's vbd stays connected.
"""

import json
import os
import signal
import time

import psutil
import pytest

from launcher import rundir
from launcher.devspec import DeviceSpec
from launcher.firmware import RESTART_LIMIT
from launcher.hostspec import DomainSpec, HostSpec
from launcher.xlcfg import parse_disk_spec
from tests.conftest import xenolab

SECTOR = 512


def device_process(h) -> psutil.Process:
    title = f"xenolab[{h.name}]: disk0 (disk device)"
    procs = [p for p in rundir.host_processes(h.name) if p.cmdline()[0] == title]
    assert len(procs) == 1, f"no single process titled {title!r}"
    return procs[0]


def wait_for(cond, timeout_s: float = 10.0):
    """Poll a condition (each check is a round trip to Domain-0), never sleep."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
    raise AssertionError("condition not met in time")


def held_by_device(h) -> bool:
    return h.xl("phys_info", dev="disk0")["statistics"]["in_flight"] >= 1


@pytest.fixture
def guest_host(make_host, agent, tmp_path, request):
    on_crash = getattr(request, "param", "wait")
    img = tmp_path / "g.img"
    img.write_bytes(bytes(8 << 20))
    disk = parse_disk_spec(f"{img},raw,xvda,rw")
    spec = HostSpec(name="t", domains=(DomainSpec(name="g", memory_mib=16, disks=(disk,),
                                                  kernel="tests.kernels.agent"),),
                    devices=(DeviceSpec(name="disk0", image=str(img), on_crash=on_crash),))
    h = make_host(spec)
    g = agent(h, "g")
    wait_for(lambda: g("blk_connected"))
    return h, g, img


def write(g, sector: int, byte: int) -> int:
    return g.start("blk", kind="write", sector=sector, data=f"{byte:02x}" * SECTOR)


def kill_while_held(h, g, victim: str = "kill") -> tuple[int, float]:
    """A guest write the device holds (hang fault), then the device dies;
    returns the write's command id and when the device died."""
    h.xl("phys_fault", dev="disk0", mode="hang")
    n = write(g, 20, 0x5A)
    wait_for(lambda: held_by_device(h))
    dev = device_process(h)
    t0 = time.monotonic()
    if victim == "kill":
        dev.send_signal(signal.SIGKILL)
    else:
        xenolab("dev", "fault", "disk0", "die", env={**os.environ, "XENOLAB_HOST": h.name})
    # No dev.wait(): the device is the supervisor's child (this process), and
    # reaping it here would hide its death from the firmware's watcher.
    return n, t0


@pytest.mark.parametrize("victim", ["kill", "die"])
def test_wait_mode_the_guest_sees_a_stall_and_its_data_is_intact(guest_host, victim):
    h, g, img = guest_host
    assert g("blk", kind="write", sector=10, data="11" * SECTOR)["status"] == 0
    n, t0 = kill_while_held(h, g, victim)
    res = g.wait(n)
    stall = time.monotonic() - t0
    assert res["ok"] and res["result"]["status"] == 0  # no error: the write went again
    print(f"stall ({victim}): {stall * 1000:.0f} ms from the death to the write's completion")
    assert g("blk", kind="flush")["status"] == 0
    raw = img.read_bytes()
    assert raw[20 * SECTOR:21 * SECTOR] == b"\x5a" * SECTOR
    assert raw[10 * SECTOR:11 * SECTOR] == b"\x11" * SECTOR
    assert g("blk", kind="read", sector=20, count=1)["data"] == "5a" * SECTOR
    info = h.xl("phys_info", dev="disk0")
    assert info["ready"] and info["generation"] == 1 and info["link"] == "up"
    assert info["statistics"]["resets"] == 1 and info["statistics"]["failed_by_crash"] == 0
    assert g("blk_connected")  # blkback never disconnected the guest


@pytest.mark.parametrize("guest_host", ["fail"], indirect=True)
def test_fail_mode_in_flight_requests_fail_and_later_ones_succeed(guest_host):
    h, g, img = guest_host
    n, _ = kill_while_held(h, g)
    res = g.wait(n)
    assert res["ok"] and res["result"]["status"] != 0  # BLKIF_RSP_ERROR
    assert g("blk", kind="write", sector=21, data="77" * SECTOR)["status"] == 0
    assert g("blk", kind="flush")["status"] == 0
    assert img.read_bytes()[21 * SECTOR:22 * SECTOR] == b"\x77" * SECTOR
    info = h.xl("phys_info", dev="disk0")
    assert info["statistics"]["failed_by_crash"] == 1 and info["generation"] == 1
    assert g("blk_connected")


def test_on_crash_switches_at_run_time(guest_host):
    h, g, _ = guest_host
    env = {**os.environ, "XENOLAB_HOST": h.name}
    xenolab("dev", "on-crash", "disk0", "fail", env=env)
    n, _ = kill_while_held(h, g)
    assert g.wait(n)["result"]["status"] != 0  # failed at the death, not at the restart:
    wait_for(lambda: h.xl("phys_info", dev="disk0")["generation"] == 1)  # that comes later
    rows = json.loads(xenolab("dev", "list", "--json", env=env).stdout)
    assert rows[0]["on_crash"] == "fail" and rows[0]["generation"] == 1


def test_the_physical_path_resumes_after_a_kill(make_host, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(8 << 20))
    h = make_host(HostSpec(name="t", domains=(),
                           devices=(DeviceSpec(name="disk0", image=str(img)),)))
    for gen in range(1, RESTART_LIMIT + 2):
        device_process(h).kill()  # not reaped here: the firmware must see it die
        if gen <= RESTART_LIMIT:  # wait mode: the write waits for the replacement
            data = bytes([gen]) * SECTOR
            assert h.xl("phys_write", dev="disk0", sector=gen, data=data) == SECTOR
            assert h.xl("phys_read", dev="disk0", sector=gen, count=1) == data
            assert h.xl("phys_info", dev="disk0")["generation"] == gen
    # one death too many within the window: the firmware removes the device
    error = wait_for(lambda: h.xl("phys_list")[0]["error"])
    assert "removed" in error
    assert [p for p in rundir.host_processes(h.name) if "disk device" in p.cmdline()[0]] == []
    assert h.xl("list")[0]["name"] == "Domain-0"  # the host carries on
