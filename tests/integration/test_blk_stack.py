"""A guest's block I/O through blkfront, the ring, Xen, blkback and the disk device."""

import hashlib
import signal

import psutil
import pytest

from launcher import rundir
from tests.conftest import boot_blk_guest


@pytest.fixture
def blk_host(make_host, agent, tmp_path, request):
    return boot_blk_guest(make_host, agent, tmp_path, getattr(request, "param", ""))


def test_read_after_write_lands_at_the_right_offset(blk_host):
    h, g, img = blk_host
    data = bytes(range(256)) * 6  # 1536 bytes: 3 sectors
    assert g("blk", kind="write", sector=5, data=data.hex())["status"] == 0
    got = g("blk", kind="read", sector=5, count=3)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    assert g("blk", kind="flush")["status"] == 0
    raw = img.read_bytes()
    assert raw[5 * 512:8 * 512] == data
    assert raw[4 * 512:5 * 512] == bytes(512) and raw[8 * 512:9 * 512] == bytes(512)
    be = h.xl("xs_read", path=f"/local/domain/0/backend/vbd/{g.domid}/51712/state")
    fe = h.xl("xs_read", path=f"/local/domain/{g.domid}/device/vbd/51712/state")
    assert (be, fe) == ("4", "4")  # XenbusState.Connected on both ends


@pytest.mark.parametrize("blk_host", ["", "blkfront.ring_start=4294967200"], indirect=True)
def test_many_requests_in_flight_more_than_the_ring_holds(blk_host):
    h, g, img = blk_host
    statuses = g("blk_burst", sector=100, count=200, fill=7)
    assert statuses == [0] * 200
    assert g("blk", kind="flush")["status"] == 0
    raw = img.read_bytes()
    for i in range(200):
        assert raw[(100 + i) * 512:(101 + i) * 512] == bytes([(7 + i) & 0xFF]) * 512


def test_backend_restart_with_requests_in_flight_loses_nothing(blk_host):
    h, g, img = blk_host
    h.xl("phys_latency", dev="disk0", spec="fixed:20000")  # 20 ms a command: I/O stays in flight
    burst = g.start("blk_burst", sector=300, count=40, fill=3)
    assert h.xl("blkback_restart", dom="g") is True
    assert g.wait(burst, timeout_ms=20_000)["result"] == [0] * 40
    h.xl("phys_latency", dev="disk0", spec="none")
    for i in (0, 17, 39):
        got = bytes.fromhex(g("blk", kind="read", sector=300 + i, count=1)["data"])
        assert got == bytes([(3 + i) & 0xFF]) * 512
    log = h.xl("console_read", dom="g", offset=0)["data"].decode()
    assert log.count("frontend Initialised, backend Connected") >= 2  # it reconnected


def test_hot_detach_and_reattach(blk_host):
    h, g, img = blk_host
    assert g("blk", kind="write", sector=9, data="c3" * 512)["status"] == 0
    assert g("blk", kind="flush")["status"] == 0
    assert h.xl("block_detach", dom="g", vdev="xvda", timeout_s=20) is True  # through xenbus
    assert h.xl("block_list", dom="g") == []
    for _ in range(300):
        if not g("blk_connected"):
            break
    h.xl("block_attach", dom="g", disk={"target": str(img), "vdev": "xvda", "access": "rw"})
    for _ in range(300):
        if g("blk_connected"):
            break
    assert g("blk", kind="read", sector=9, count=1)["data"] == "c3" * 512


@pytest.mark.parametrize("victim", ["g", "Domain-0", "disk0"])
def test_an_acknowledged_flush_survives_sigkill(blk_host, victim):
    h, g, img = blk_host
    data = bytes([0x42]) * 512 * 4
    assert g("blk", kind="write", sector=40, data=data[:512].hex())["status"] == 0
    assert g("blk_burst", sector=41, count=3, fill=0x42) == [0, 0, 0]
    assert g("blk", kind="flush")["status"] == 0  # acknowledged: it must be on disk
    if victim == "disk0":
        proc = next(p for p in rundir.host_processes(h.name)
                    if "disk0 (disk device)" in " ".join(p.cmdline()))
    else:
        proc = psutil.Process(h[victim]["pid"])
    proc.send_signal(signal.SIGKILL)
    psutil.wait_procs([proc], timeout=10)
    raw = img.read_bytes()
    assert raw[40 * 512:41 * 512] == data[:512]
    assert raw[41 * 512:44 * 512] == bytes([0x42, 0x43, 0x44][i] for i in range(3) for _ in
                                           range(512))
