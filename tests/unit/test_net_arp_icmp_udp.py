"""ARP resolution and failure, ping (the stack answers; SOCK_ICMP sockets), UDP."""

import errno

import dpkt
import pytest

from domains.xenolinux.net import SOCK_DGRAM, SOCK_ICMP, SOCK_STREAM, NetStack, arp, ipv4
from tests.unit.net_fakes import Clock, Pair

A_MAC = b"\x00\x16\x3e\x00\x00\x0b"


def arp_frames(dev):
    return [dpkt.ethernet.Ethernet(f).data for f, _ in dev.sent if f[12:14] == b"\x08\x06"]


def test_arp_request_reply_then_cached():
    p = Pair()
    u = p.a.socket(SOCK_DGRAM)
    u.sendto(b"1", ("10.0.0.12", 5000))
    p.run_until(lambda: not p.link.queue and p.devb.sent)
    p.flush()
    req, rep = arp_frames(p.deva)[0], arp_frames(p.devb)[0]
    assert req.op == arp.ARPOP_REQUEST and req.tpa == ipv4.aton("10.0.0.12")
    assert dpkt.ethernet.Ethernet(p.deva.sent[0][0]).dst == b"\xff" * 6
    assert rep.op == arp.ARPOP_REPLY and rep.sha == p.devb.mac and rep.tha == A_MAC
    u.sendto(b"2", ("10.0.0.12", 5000))
    p.flush()
    assert len(arp_frames(p.deva)) == 1  # cached: no second request
    p.clock.t += arp.REACHABLE_NS + 1
    u.sendto(b"3", ("10.0.0.12", 5000))
    p.flush()
    assert len(arp_frames(p.deva)) == 2  # expired: asks again


def test_packets_wait_for_resolution_and_keep_order():
    p = Pair()
    u = p.a.socket(SOCK_DGRAM)
    r = p.b.socket(SOCK_DGRAM)
    r.bind(("0.0.0.0", 5000))
    for i in range(5):
        u.sendto(bytes([i]), ("10.0.0.12", 5000))
    got = []

    def five():
        while (m := r.recvfrom(10)) is not None:
            got.append(m)
        return len(got) == 5

    p.run_until(five)
    assert [m[0] for m in got] == [bytes([i]) for i in range(5)]
    assert got[0][1] == ("10.0.0.11", u.local[1])


def test_arp_gives_up_with_ehostunreach():
    p = Pair()
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.99", 80))
    u = p.a.socket(SOCK_DGRAM)
    u.sendto(b"x", ("10.0.0.98", 80))
    p.run_until(lambda: c.error and u.error)
    assert c.error == errno.EHOSTUNREACH and not c.connected
    reqs = [a for a in arp_frames(p.deva) if a.tpa == ipv4.aton("10.0.0.99")]
    assert len(reqs) == arp.MAX_REQUESTS
    with pytest.raises(OSError) as e:
        u.recvfrom(10)
    assert e.value.errno == errno.EHOSTUNREACH
    u.sendto(b"y", ("10.0.0.12", 80))  # the error was reported once


def test_default_route_and_unreachable_network():
    p = Pair()
    u = p.a.socket(SOCK_DGRAM)
    u.sendto(b"x", ("192.168.7.7", 53))
    p.flush()
    req = arp_frames(p.deva)[-1]
    assert req.tpa == ipv4.aton("10.0.0.1")  # off-link: resolve the gateway
    s = NetStack(Clock())
    with pytest.raises(OSError) as e:
        s.socket(SOCK_DGRAM).sendto(b"x", ("10.0.0.1", 1))
    assert e.value.errno == errno.ENETUNREACH


def test_ping_between_stacks_and_to_self():
    p = Pair()
    ping = p.a.socket(SOCK_ICMP)
    for dst in ("10.0.0.12", "127.0.0.1", "10.0.0.11"):
        ping.sendto(b"\x00\x07payload", (dst, 0))
        p.run_until(ping.readable)
        assert ping.recvfrom(100) == (b"\x00\x07payload", (dst, 0))
    echo = [dpkt.ethernet.Ethernet(f).data.data for f, _ in p.devb.sent if f[23:24] == b"\x01"]
    assert echo[0].type == dpkt.icmp.ICMP_ECHOREPLY and echo[0].data.id == ping.local[1]


def test_udp_demux_connect_and_port_unreachable():
    p = Pair()
    r1, r2 = p.b.socket(SOCK_DGRAM), p.b.socket(SOCK_DGRAM)
    r1.bind(("10.0.0.12", 6000))
    r2.bind(("0.0.0.0", 6001))
    with pytest.raises(OSError) as e:
        p.b.socket(SOCK_DGRAM).bind(("0.0.0.0", 6000))
    assert e.value.errno == errno.EADDRINUSE
    u = p.a.socket(SOCK_DGRAM)
    u.connect(("10.0.0.12", 6001))
    assert u.send(b"to r2") == 5
    u.sendto(b"to r1", ("10.0.0.12", 6000))
    u.sendto(b"nobody", ("10.0.0.12", 6002))
    p.run_until(lambda: r1.readable() and r2.readable())
    assert r1.recv(100) == b"to r1" and r2.recv(2) == b"to"  # datagram truncated
    assert r2.recv(100) is None
    p.run_until(lambda: not p.link.queue)
    assert any(f[23] == 1 and f[34] == 3 for f, _ in p.devb.sent)  # ICMP dest unreachable
    with pytest.raises(OSError) as e:
        u.sendto(b"x" * 1473, ("10.0.0.12", 6000))
    assert e.value.errno == errno.EMSGSIZE


def test_connected_udp_learns_port_unreachable():
    p = Pair()
    u = p.a.socket(SOCK_DGRAM)
    u.connect(("10.0.0.12", 7777))
    u.send(b"anyone?")
    p.run_until(lambda: u.error)
    assert u.error == errno.ECONNREFUSED
    with pytest.raises(OSError):
        u.recv(10)
    unconnected = p.a.socket(SOCK_DGRAM)
    unconnected.sendto(b"x", ("10.0.0.12", 7777))
    p.run_until(lambda: not p.link.queue)
    assert not unconnected.error


def test_udp_over_loopback():
    p = Pair()
    r = p.a.socket(SOCK_DGRAM)
    r.bind(("127.0.0.1", 53))
    s = p.a.socket(SOCK_DGRAM)
    s.sendto(b"x" * 30000, ("127.0.0.1", 53))
    p.flush()
    assert r.recvfrom(65536) == (b"x" * 30000, ("127.0.0.1", s.local[1]))
    assert not p.deva.sent
