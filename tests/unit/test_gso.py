"""gso.segment: pieces parse with dpkt, checksums hold, seq is contiguous, flags placed right."""

import os

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.kernel import gso

MAC1, MAC2 = b"\x00\x16\x3e\x00\x00\x01", b"\x00\x16\x3e\x00\x00\x02"


def tcp_frame(payload: bytes, flags: int, seq: int = 1000, opts: bytes = b"") -> bytes:
    tcp = dpkt.tcp.TCP(sport=1234, dport=80, seq=seq, ack=7, flags=flags, win=500, opts=opts)
    tcp.off = 5 + len(opts) // 4
    tcp.data = payload
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x0b", dst=b"\x0a\x00\x00\x0c", p=6, id=40, ttl=64)
    ip.df = 1
    ip.data = tcp
    eth = dpkt.ethernet.Ethernet(src=MAC1, dst=MAC2, type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    return bytes(eth)


def checksums_ok(frame: bytes) -> dpkt.ethernet.Ethernet:
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    raw_ip = frame[14 : 14 + ip.len]
    assert gso.checksum(raw_ip[: ip.hl * 4]) == 0
    ph = gso.pseudo_header(ip.src, ip.dst, 6, ip.len - ip.hl * 4)
    assert gso.checksum(ph, raw_ip[ip.hl * 4 :]) == 0
    return eth


def test_checksum_matches_dpkt():
    for n in (0, 1, 2, 3, 99, 1460, 65535):
        data = os.urandom(n)
        assert gso.checksum(data) == dpkt.dpkt.in_cksum(data)
    assert gso.checksum(b"\x00" * 10) == 0xFFFF


def test_segment_splits_with_flags_and_checksums():
    payload = os.urandom(10_000)
    flags = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH | dpkt.tcp.TH_FIN | dpkt.tcp.TH_CWR
    opts = b"\x01\x01\x08\x0a" + b"\x00" * 8  # NOP NOP timestamp: options are copied
    frame = tcp_frame(payload, flags, seq=0xFFFFF000, opts=opts)
    pieces = gso.segment(frame, 1448)
    assert len(pieces) == 7
    data, seq = b"", 0xFFFFF000
    for i, piece in enumerate(pieces):
        eth = checksums_ok(piece)
        ip, tcp = eth.data, eth.data.data
        assert ip.id == 40 + i and ip.df
        assert tcp.seq == seq and tcp.opts == opts
        assert len(tcp.data) <= 1448
        assert bool(tcp.flags & dpkt.tcp.TH_CWR) == (i == 0)
        last = i == len(pieces) - 1
        assert bool(tcp.flags & dpkt.tcp.TH_FIN) == last
        assert bool(tcp.flags & dpkt.tcp.TH_PUSH) == last
        assert tcp.flags & dpkt.tcp.TH_ACK
        data += tcp.data
        seq = (seq + len(tcp.data)) & 0xFFFFFFFF
    assert data == payload


def test_leaves_other_frames_alone():
    small = tcp_frame(b"x" * 100, dpkt.tcp.TH_ACK)
    assert gso.segment(small, 1460) == [small]
    assert gso.segment(small, 0) == [small]
    big = tcp_frame(b"x" * 3000, dpkt.tcp.TH_ACK)
    assert gso.segment(big, 0) == [big]
    udp = dpkt.udp.UDP(sport=1, dport=2, data=b"y" * 3000)
    ip = dpkt.ip.IP(src=b"\x01\x02\x03\x04", dst=b"\x01\x02\x03\x05", p=17, data=udp)
    uframe = bytes(dpkt.ethernet.Ethernet(src=MAC1, dst=MAC2, type=0x0800, data=ip))
    assert gso.segment(uframe, 1460) == [uframe]
    arp = MAC2 + MAC1 + b"\x08\x06" + b"\x00" * 28
    assert gso.segment(arp, 1460) == [arp]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=-5, max_value=100))
def test_garbage_never_raises(junk, size):
    frame = tcp_frame(b"z" * 300, dpkt.tcp.TH_ACK)
    for f in (junk, frame[:14] + junk, frame[: len(junk)] + junk, frame[:40] + junk):
        for piece in gso.segment(f, size):
            assert isinstance(piece, bytes)
