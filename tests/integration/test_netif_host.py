"""The network split driver on a real host: handshake, xl network-list, pcap, frames."""

import time

import dpkt
import pytest

from launcher import rundir
from launcher.hostspec import DomainSpec, HostSpec, VifSpec
from tests.kernels.netagent import digest, make_frame

MAC1, MAC2 = "00:16:3e:00:00:11", "00:16:3e:00:00:12"


def _domain(name: str, mac: str) -> DomainSpec:
    return DomainSpec(name=name, memory_mib=16, kernel="tests.kernels.netagent",
                      vifs=(VifSpec(devid=0, mac=mac, ip="10.0.0.1" + name[-1]),))


def _wait(cond, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
    raise AssertionError(f"timed out waiting for {what}")


def _hex(mac: str) -> str:
    return mac.replace(":", "")


def _recv(g, n: int, what: str) -> list:
    got: list = []
    while len(got) < n:
        got += _wait(lambda: g("net_recv", dev="eth0"), what=what)
    return got


@pytest.fixture
def net_host(make_host, agent):
    h = make_host(HostSpec(name="t", domains=(_domain("d1", MAC1), _domain("d2", MAC2))))
    d1, d2 = agent(h, "d1"), agent(h, "d2")
    for g in (d1, d2):
        _wait(lambda g=g: g("net_state").get("eth0", {}).get("connected"), what="netfront")
    return h, d1, d2


def test_vifs_connect_and_carry_frames(net_host):
    h, d1, d2 = net_host
    rows = h.xl("network_list", dom="d1")
    assert [(r["devid"], r["mac"], r["backend_state"], r["frontend_state"], r["name"])
            for r in rows] == [(0, MAC1, "4", "4", f"vif{d1.domid}.0")]
    assert d1("net_state")["eth0"]["gso"] is True

    made = [[_hex(MAC2), _hex(MAC1), 1, 94], [_hex(MAC2), _hex(MAC1), 7, 1514]]
    small, big = (make_frame(*m) for m in made)
    d1("net_send", dev="eth0", made=made)
    got = _recv(d2, 2, "frames at d2")
    assert got == [[digest(small), 94, 0], [digest(big), 1514, 0]]

    # counters: vif rx = from the guest, tx = to the guest
    r1 = _wait(lambda: [r for r in h.xl("network_list", dom="d1") if r["rx_packets"] >= 2],
               what="d1's counters")[0]
    assert r1["rx_bytes"] >= len(small) + len(big) and r1["rx_errors"] == 0
    r2 = h.xl("network_list", dom="d2")[0]
    assert r2["tx_packets"] >= 2 and r2["tx_bytes"] >= len(small) + len(big)

    # published for users under the backend directory (at most once a second)
    stats = f"/local/domain/0/backend/vif/{d1.domid}/0/statistics/rx_packets"
    assert int(h.xl("xs_wait", path=stats, not_value="0")) >= 2

    # the pcap of each vif holds the frames, readable by dpkt
    path = f"{rundir.path(h.name)}/vif{d2.domid}.0.pcap"
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        records = list(reader)
    frames = [bytes(buf) for _ts, buf in records]
    assert small in frames and big in frames
    assert abs(float(records[-1][0]) - time.time()) < 60  # wall-clock, nanosecond pcap


def test_gso_frame_crosses_as_one_chain(net_host):
    h, d1, d2 = net_host
    payload = bytes(60000)
    ip = dpkt.ip.IP(src=bytes([10, 0, 0, 11]), dst=bytes([10, 0, 0, 12]), p=6,
                    data=dpkt.tcp.TCP(sport=1, dport=2, seq=1, flags=0x18, data=payload))
    ip.len = 20 + 20 + len(payload)
    frame = bytes(dpkt.ethernet.Ethernet(dst=bytes.fromhex(MAC2.replace(":", "")),
                                         src=bytes.fromhex(MAC1.replace(":", "")), data=ip))
    made = [_hex(MAC2), _hex(MAC1), 3, 60054]
    frame = make_frame(*made)
    d1("net_send", dev="eth0", made=[made], gso=1448)
    got = _recv(d2, 1, "the GSO frame at d2")
    assert got == [[digest(frame), len(frame), 1448]]


def test_a_malicious_frontend_is_cut_off_alone(net_host):
    h, d1, d2 = net_host
    d1("net_evil", dev="eth0")
    err = f"/local/domain/0/error/backend/vif/{d1.domid}/0/error"
    assert "txreq.offset: 4000, size: 200" in h.xl("xs_wait", path=err)
    _wait(lambda: h.xl("network_list", dom="d1")[0]["backend_state"] in ("5", "6"),
          what="d1's backend closing")
    # d2's vif is untouched and still carries frames
    assert h.xl("network_list", dom="d2")[0]["backend_state"] == "4"
    d2("net_send", dev="eth0", made=[[_hex(MAC1), _hex(MAC2), 5, 100]])
    _wait(lambda: h.xl("network_list", dom="d2")[0]["rx_packets"] >= 1, what="d2's frame")
    assert h.alive()


# A netback restart and the frontends' reconnection: test_netif_persistent.py
# (the same host, the same steps, and the grant accounting on top).


def test_destroying_a_domain_removes_its_vif(net_host):
    h, d1, d2 = net_host
    h.xl("destroy", dom="d1")
    _wait(lambda: [name for depth, name, _ in h.xl("xs_ls", path="/local/domain/0/backend/vif")
                   if depth == 0] == [str(d2.domid)], what="the backend directory to go")
    assert [r["devid"] for r in h.xl("network_list", dom="d2")] == [0]


def test_a_burst_larger_than_the_rings_arrives_whole(net_host):
    # 30 GSO frames of 64 KB: 17 slots each, twice what either ring holds, so both
    # the frontend's queue and netback's wait for rx buffers are exercised (and all
    # of it fits netback's rx queue, so nothing may be dropped however slow d2 is).
    h, d1, d2 = net_host
    d1("net_blast", dev="eth0", peer=_hex(MAC2), count=30, size=65000, gso=1448)
    got = _wait(lambda: (r := d2("net_rate", dev="eth0"))["n"] >= 30 and r, what="the burst")
    assert (got["n"], got["bytes"]) == (30, 30 * 65000)
    rows = h.xl("network_list", dom="d2")
    assert rows[0]["tx_dropped"] == 0 and rows[0]["tx_packets"] == 30


def test_network_attach_and_detach(net_host):
    h, d1, _ = net_host
    nic = {"mac": "00:16:3e:00:00:21", "bridge": "xenbr0"}
    assert h.xl("network_attach", dom="d1", nic=nic) == 1
    _wait(lambda: d1("net_state").get("eth1", {}).get("connected"), what="eth1")
    assert [r["backend_state"] for r in h.xl("network_list", dom="d1")] == ["4", "4"]
    assert h.xl("network_detach", dom="d1", devid="1", timeout_s=20) is True
    assert [r["devid"] for r in h.xl("network_list", dom="d1")] == [0]
    _wait(lambda: "eth1" not in d1("net_state"), what="eth1 to go")


def test_vifs_come_back_with_a_restarted_dom0(net_host):
    from tests.integration.test_dom0_restart import kill_dom0
    h, d1, d2 = net_host
    before = [_hex(MAC2), _hex(MAC1), 12, 100]
    d1("net_send", dev="eth0", made=[before])
    _recv(d2, 1, "a frame before the kill")
    old = kill_dom0(h)
    _wait(lambda: h["Domain-0"]["pid"] != old, what="a new Domain-0")
    for g in (d1, d2):
        _wait(lambda g=g: h.xl("network_list", dom=g.name)[0]["backend_state"] == "4"
              and g("net_state")["eth0"]["connected"], what=f"{g.name} reconnected")
    made = [_hex(MAC2), _hex(MAC1), 13, 300]
    d1("net_send", dev="eth0", made=[made])
    assert _recv(d2, 1, "a frame through the new Domain-0") == [[digest(make_frame(*made)),
                                                                  300, 0]]
    with open(f"{rundir.path(h.name)}/vif{d2.domid}.0.pcap", "rb") as f:
        assert [len(buf) for _ts, buf in dpkt.pcap.Reader(f)] == [100, 300]  # appended
