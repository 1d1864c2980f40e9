"""The NIC device on real hosts: the wire, two hosts, faults, restart, TAP.

The NIC device process, Xen, and Domain-0's driver are real; frames enter
and leave Dom0 through the driver's test ops (`nic_send`: a packet socket
on the port; `nic_recv`: what the port received lately). The peer on the
wire is either another host or this test, speaking the wire's own protocol
(devices.wire.WirePort).
"""

import os
import shutil
import subprocess
import sys
import time

import dpkt
import pytest
import zmq

from devices.wire import WirePort
from hypervisor.public.nicdev import LINK_FAULTY, LINK_PARTITIONED
from launcher.devspec import DeviceSpec
from launcher.hostspec import HostSpec
from tests.conftest import xenolab

ETH_TEST = 0x88B5  # IEEE local experimental ethertype: nothing else sends it


def eth(src: bytes, payload: bytes, dst: bytes = b"\xff" * 6) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(dst=dst, src=src, type=ETH_TEST, data=payload))


def ours(frames: list[bytes]) -> list[bytes]:
    return [f for f in frames if dpkt.ethernet.Ethernet(f).type == ETH_TEST]


def nic_host(make_host, wire: str = "", **nic) -> object:
    dev = DeviceSpec(name="nic0", kind="nic", wire=wire, **nic)
    return make_host(HostSpec(name="t", devices=(dev,)))


class Peer:
    """This test as a station on a wire (its loop runs while we wait)."""

    def __init__(self, wire: str) -> None:
        self.ctx = zmq.Context()
        self.port = WirePort(self.ctx, wire)
        self.got: list[bytes] = []

    def turn(self, timeout_s: float = 0.02) -> None:
        self.port.tick(time.monotonic_ns())
        zmq.select(self.port.sockets(), [], [], timeout_s)
        if self.port.hub is not None:
            self.port.hub.on_readable()
        self.got += ours(self.port.recv_all())

    def close(self) -> None:
        self.port.close()
        self.ctx.term()


@pytest.fixture
def peer():
    made: list[Peer] = []

    def make(wire: str) -> Peer:
        made.append(Peer(wire))
        return made[-1]
    yield make
    for p in made:
        p.close()


def wire_name(tag: str) -> str:
    return f"t{os.getpid()}-{tag}-{time.monotonic_ns() % 10**9}"


def until(cond, timeout_s: float = 10.0, step=None):
    """Poll `cond` (running `step` between tries) until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if step is not None:
            step()
        else:
            time.sleep(0.02)
    raise AssertionError("timed out")


def received(h, dev: str = "nic0") -> list[bytes]:
    return ours(h.xl("nic_recv", dev=dev))


def test_a_frame_goes_out_onto_the_wire_and_in_again(make_host, peer):
    wire = wire_name("io")
    p = peer(wire)
    h = nic_host(make_host, wire)
    (info,) = h.xl("nic_list")
    assert info["ready"] and info["features"] & 2 and info["rx_slots"] == 128
    inbound = eth(b"\x02\0\0\0\0\x01", b"to the host" * 20)
    got: list[bytes] = []

    def send_in():
        p.port.send(inbound)
        p.turn(0.05)
        got.extend(received(h))
    until(lambda: got, step=send_in)
    assert got[0] == inbound  # byte for byte through DMA into Dom0's buffer
    outbound = eth(b"\x02\0\0\0\0\x02", b"from the host" * 30)
    h.xl("nic_send", dev="nic0", frame=outbound)
    until(lambda: p.got, step=p.turn)
    assert p.got == [outbound]
    # the tx completion's interrupt may come just after the frame left
    stats = until(lambda: (s := h.xl("nic_list")[0]["statistics"])["irqs"] >= 2 and s)
    assert stats["rx_frames"] >= 1 and stats["tx_frames"] == 1


def test_two_hosts_share_a_wire(make_host):
    wire = wire_name("two")
    h1, h2 = nic_host(make_host, wire), nic_host(make_host, wire)
    frame = eth(b"\x02\0\0\0\0\x11", b"h1 to h2")
    got = until(lambda: h1.xl("nic_send", dev="nic0", frame=frame) and received(h2),
                step=lambda: time.sleep(0.05))
    assert got[0] == frame
    back = eth(b"\x02\0\0\0\0\x12", b"h2 to h1")
    assert until(lambda: h2.xl("nic_send", dev="nic0", frame=back) and received(h1),
                 step=lambda: time.sleep(0.05))[0] == back


def test_a_partition_set_at_run_time_cuts_the_host_off(make_host, peer):
    wire = wire_name("part")
    p = peer(wire)
    h = nic_host(make_host, wire)
    first = eth(b"\x02\0\0\0\0\x21", b"before")
    until(lambda: received(h), step=lambda: (p.port.send(first), p.turn(0.05)))
    wire_set(h, "--partition", "on")
    assert h.xl("nic_list")[0]["link_flags"] & LINK_PARTITIONED
    cut = eth(b"\x02\0\0\0\0\x21", b"during the partition")
    for _ in range(5):
        p.port.send(cut)
        p.turn(0.02)
    h.xl("nic_send", dev="nic0", frame=eth(b"\x02\0\0\0\0\x22", b"out during"))
    wire_set(h, "--partition", "off")
    after = eth(b"\x02\0\0\0\0\x21", b"after")
    got: list[bytes] = []
    until(lambda: after in got,
          step=lambda: (p.port.send(after), p.turn(0.05), got.extend(received(h))))
    assert cut not in got  # the frames sent meanwhile never arrived, nor went out
    assert all(dpkt.ethernet.Ethernet(f).data != b"out during" for f in p.got)


def wire_set(h, *options: str) -> None:
    """`xenolab dev wire`, then wait until the device's link status says it applied it."""
    before = h.xl("nic_list")[0]["link_changes"]
    xenolab("dev", "wire", "nic0", *options, "--host", h.name)
    until(lambda: h.xl("nic_list")[0]["link_changes"] > before)


def test_wire_faults_from_the_host_config(make_host, peer):
    wire = wire_name("dup")
    p = peer(wire)
    h = nic_host(make_host, wire, dup=1.0)
    assert h.xl("nic_list")[0]["link_flags"] == LINK_FAULTY
    frame = eth(b"\x02\0\0\0\0\x31", b"twice")
    until(lambda: p.got, timeout_s=10,
          step=lambda: (h.xl("nic_send", dev="nic0", frame=frame), p.turn(0.1)))
    until(lambda: len(p.got) >= 2, step=p.turn)
    assert p.got[:2] == [frame, frame]  # every frame duplicated


def test_the_driver_resets_when_the_device_is_replaced(make_host, peer):
    wire = wire_name("restart")
    p = peer(wire)
    h = nic_host(make_host, wire)
    xenolab("fault", "kill", "nic0", "--host", h.name)
    until(lambda: h.xl("nic_list")[0]["generation"] == 1 and h.xl("nic_list")[0]["ready"])
    frame = eth(b"\x02\0\0\0\0\x41", b"after the restart")
    until(lambda: p.got, step=lambda: (h.xl("nic_send", dev="nic0", frame=frame), p.turn(0.1)))
    assert p.got[0] == frame
    assert h.xl("nic_list")[0]["statistics"]["resets"] == 1


# ---- TAP inside a network namespace made by the test ----------------------------------

SEND = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(bytes.fromhex(sys.argv[2]))
"""
RECV = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
s.bind((sys.argv[1], 0))
print("ready", flush=True)
s.settimeout(10)
print(s.recv(65536).hex(), flush=True)
"""


@pytest.fixture
def netns():
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun: TAP mode cannot be tested here")
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("TAP test needs root and iproute2 (ip netns)")
    name = f"xl-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=True)


def in_ns(ns: str, code: str, *args: str, **kw):
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, text=True, **kw)


def test_tap_in_a_netns_both_ways(make_host, netns):
    tap = f"xlt{os.getpid() % 100000}"
    h = nic_host(make_host, tap=tap, tap_netns=netns)
    links = subprocess.run(["ip", "-n", netns, "link", "show", tap], capture_output=True,
                           text=True)
    assert links.returncode == 0 and "UP" in links.stdout
    assert subprocess.run(["ip", "link", "show", tap], capture_output=True).returncode != 0
    inbound = eth(b"\x02\0\0\0\0\x51", b"from the netns" * 5)

    def send_in():
        subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SEND, tap,
                        inbound.hex()], check=True, timeout=10)
    assert until(lambda: received(h), step=send_in)[0] == inbound
    rx = in_ns(netns, RECV, tap)
    try:
        assert rx.stdout.readline().strip() == "ready"
        outbound = eth(b"\x02\0\0\0\0\x52", b"to the netns" * 5)
        h.xl("nic_send", dev="nic0", frame=outbound)
        assert bytes.fromhex(rx.stdout.readline().strip()) == outbound
    finally:
        rx.kill()
        rx.wait()
        rx.stdout.close()
    h.down()
    # closing the device's fd deleted the TAP
    gone = subprocess.run(["ip", "-n", netns, "link", "show", tap], capture_output=True)
    assert gone.returncode != 0
