"""Frames the stack builds parse with dpkt and their checksums hold; ip= parsing."""

import struct

import dpkt
import pytest

from domains.kernel import gso
from domains.xenolinux.net import SOCK_DGRAM, SOCK_ICMP, SOCK_STREAM
from domains.xenolinux.net.config import from_cmdline, parse_ip_param
from tests.unit.net_fakes import Pair


def verify(frame: bytes) -> dpkt.ethernet.Ethernet:
    """Parse with dpkt and check every checksum with dpkt's own in_cksum."""
    e = dpkt.ethernet.Ethernet(frame)
    if e.type == dpkt.ethernet.ETH_TYPE_ARP:
        assert isinstance(e.data, dpkt.arp.ARP)
        return e
    ip = e.data
    assert isinstance(ip, dpkt.ip.IP) and ip.df and ip.ttl == 64
    raw = frame[14 : 14 + ip.len]
    assert dpkt.dpkt.in_cksum(raw[: ip.hl * 4]) == 0
    l4 = raw[ip.hl * 4 :]
    if ip.p in (6, 17):
        pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, ip.p, len(l4))
        assert dpkt.dpkt.in_cksum(pseudo + l4) == 0
    else:
        assert dpkt.dpkt.in_cksum(l4) == 0
    return e


def test_all_frames_of_a_session_parse_and_checksum():
    p = Pair(gso_ok=True)
    srv = p.b.socket(SOCK_STREAM)
    srv.bind(("0.0.0.0", 7))
    srv.listen(1)
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 7))
    p.run_until(lambda: c.connected)
    assert c.send(b"q" * 100_000) == 100_000
    u = p.a.socket(SOCK_DGRAM)
    u.sendto(b"hello", ("10.0.0.12", 9))  # closed port: b answers ICMP port unreachable
    ping = p.a.socket(SOCK_ICMP)
    ping.sendto(b"\x00\x01abc", ("10.0.0.12", 0))
    p.run_until(lambda: ping.readable())
    c.close()
    p.run_until(lambda: not p.link.queue and p.a.next_deadline_ns() is None, 10_000)
    kinds = set()
    for frame, gso_size in p.deva.sent + p.devb.sent:
        e = verify(frame)
        if e.type == dpkt.ethernet.ETH_TYPE_ARP:
            kinds.add("arp")
            continue
        kinds.add(type(e.data.data).__name__)
        if gso_size:
            assert isinstance(e.data.data, dpkt.tcp.TCP) and len(e.data.data.data) > gso_size
            assert gso_size == 1460
    assert kinds == {"arp", "TCP", "UDP", "ICMP"}
    assert any(g for _f, g in p.deva.sent)  # TSO frames were used


def test_syn_carries_mss_and_window_scale():
    p = Pair(gso_ok=False)
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 1))
    p.run_until(lambda: c.error)
    syn = next(verify(f).data.data for f, _ in p.deva.sent if f[12:14] == b"\x08\x00")
    opts = dict(dpkt.tcp.parse_opts(syn.opts))
    assert syn.flags == dpkt.tcp.TH_SYN
    assert struct.unpack("!H", opts[dpkt.tcp.TCP_OPT_MSS])[0] == 1460
    assert dpkt.tcp.TCP_OPT_WSCALE in opts


def test_ip_param():
    cfg = parse_ip_param("10.0.0.11::10.0.0.1:255.255.255.0:d1:eth0:off")
    assert cfg == ("10.0.0.11", 24, "10.0.0.1", "eth0", "d1")
    assert from_cmdline("console=hvc0 ip=10.1.2.3:::255.255.0.0::eth1:off quiet") == (
        "10.1.2.3",
        16,
        None,
        "eth1",
        "",
    )
    assert parse_ip_param("192.168.1.5")[1] == 24  # classful default
    assert parse_ip_param("dhcp") is None
    assert from_cmdline("root=/dev/xvda") is None
    with pytest.raises(OSError):
        parse_ip_param("10.0.0.11::10.0.0.1:255.0.255.0:d1:eth0:off")
    with pytest.raises(OSError):
        parse_ip_param("10.0.0::10.0.0.1:255.255.255.0:d1:eth0:off")


def test_handcrafted_peer_without_options():
    """A SYN without MSS or window scale (crafted with dpkt): the SYN-ACK offers no scaling,
    and data is then sent in segments of the RFC 9293 default MSS, 536."""
    p = Pair(gso_ok=True)
    srv = p.b.socket(SOCK_STREAM)
    srv.bind(("0.0.0.0", 80))
    srv.listen(1)
    ping = p.a.socket(SOCK_ICMP)  # let b learn a's MAC
    ping.sendto(b"\0\0", ("10.0.0.12", 0))
    p.run_until(ping.readable)
    syn = dpkt.tcp.TCP(sport=4000, dport=80, seq=1000, flags=dpkt.tcp.TH_SYN, win=8192)
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x0b", dst=b"\x0a\x00\x00\x0c", p=6, ttl=64, data=syn)
    eth = dpkt.ethernet.Ethernet(src=p.deva.mac, dst=p.devb.mac, type=0x0800, data=ip)
    before = len(p.devb.sent)
    p.devb.receiver(bytes(eth), 0)
    p.b.flush()
    synack = verify(p.devb.sent[before][0]).data.data
    assert synack.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK and synack.ack == 1001
    opts = dict(dpkt.tcp.parse_opts(synack.opts))
    assert dpkt.tcp.TCP_OPT_WSCALE not in opts and dpkt.tcp.TCP_OPT_MSS in opts
    ack = dpkt.tcp.TCP(
        sport=4000, dport=80, seq=1001, ack=synack.seq + 1, flags=dpkt.tcp.TH_ACK, win=8192
    )
    ip.data, ip.len, ip.sum = ack, 0, 0
    eth.data = ip
    p.devb.receiver(bytes(eth), 0)
    p.b.flush()
    s = srv.accept()
    assert s is not None and s.send(b"z" * 3000) == 3000
    p.b.flush()
    (frame, gso_size), *_ = p.devb.sent[before + 1 :]
    assert gso_size == 536 and len(verify(frame).data.data.data) == 3000  # one TSO frame
    pieces = gso.segment(frame, gso_size)
    assert [len(verify(f).data.data.data) for f in pieces] == [536] * 5 + [320]
