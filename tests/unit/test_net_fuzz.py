"""Malformed or hostile frames are dropped (or answered) without exceptions: truncated,
corrupted, bogus header lengths, and well-formed TCP segments with random fields."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.xenolinux.net import SOCK_DGRAM, SOCK_STREAM, eth, ipv4, tcpseg
from tests.unit.net_fakes import Pair
from tests.unit.test_net_tcp import connect, transfer

A, B = ipv4.aton("10.0.0.11"), ipv4.aton("10.0.0.12")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def session() -> tuple[Pair, list[bytes]]:
    """An established connection plus every frame the two stacks sent to get there."""
    p = Pair(seed=7, gso_ok=True)
    srv, c, s = connect(p)
    transfer(p, c, s, random.Random(1).randbytes(5000))
    u = p.a.socket(SOCK_DGRAM)
    u.sendto(b"dgram", ("10.0.0.12", 9))
    p.run_until(lambda: not p.link.queue)
    return p, [f for f, _ in p.deva.sent + p.devb.sent]


PAIR, FRAMES = session()


def feed(p: Pair, frame: bytes, gso_size: int = 0) -> None:
    for dev in (p.devb, p.deva):
        dev.receiver(frame, gso_size)
    p.flush()
    p.a.on_timer()
    p.b.on_timer()
    p.flush()
    p.link.queue.clear()


@SETTINGS
@given(st.integers(0, len(FRAMES) - 1), st.data())
def test_truncated_and_corrupted_frames(i, data):
    frame = bytearray(FRAMES[i])
    how = data.draw(st.sampled_from(["truncate", "flip", "ihl", "doff", "iplen", "pad"]))
    if how == "truncate":
        frame = frame[: data.draw(st.integers(0, len(frame)))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            frame[data.draw(st.integers(0, len(frame) - 1))] ^= data.draw(st.integers(1, 255))
    elif how == "ihl" and len(frame) > 14:
        frame[14] = (frame[14] & 0xF0) | data.draw(st.integers(0, 15))
    elif how == "doff" and len(frame) > 46:
        frame[46] = data.draw(st.integers(0, 255))
    elif how == "iplen" and len(frame) > 17:
        frame[16:18] = data.draw(st.integers(0, 65535)).to_bytes(2, "big")
    else:
        frame += data.draw(st.binary(max_size=64))
    kind = data.draw(st.sampled_from([bytes, bytearray, memoryview]))
    feed(PAIR, kind(frame), data.draw(st.sampled_from([0, 1, 1460, 65535])))


@SETTINGS
@given(st.binary(max_size=120), st.sampled_from([0x0800, 0x0806, 0x86DD]))
def test_garbage_payloads(junk, ethertype):
    frame = eth.header(PAIR.devb.mac, PAIR.deva.mac, ethertype) + junk
    feed(PAIR, frame)


SEGMENT = st.tuples(
    st.integers(0, 2**32 - 1),  # seq
    st.integers(0, 2**32 - 1),  # ack
    st.integers(0, 255),  # flags
    st.integers(0, 65535),  # window
    st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]),  # options
    st.binary(max_size=3000),  # data
    st.booleans(),  # near the real sequence numbers
)


@settings(max_examples=200, deadline=None)
@given(st.lists(SEGMENT, min_size=1, max_size=6))
def test_valid_checksum_random_segments_into_live_connection(segs):
    p = Pair(seed=3)
    _srv, c, s = connect(p)
    t = s.tcb
    for seq, ack, flags, wnd, opts, data, near in segs:
        if near:
            seq = (t.rcv_nxt + seq % 5000 - 2500) % 2**32
            ack = (t.snd_una + ack % 5000 - 2500) % 2**32
        hdr = tcpseg.build(A, B, c.local[1], 80, seq, ack, flags, wnd, opts, data)
        pkt = ipv4.header(A, B, 6, len(hdr) + len(data), 1) + hdr + data
        feed(p, eth.header(p.devb.mac, p.deva.mac, eth.ETH_P_IP) + pkt)
    for _ in range(50):  # whatever state it reached, the machine keeps running
        p.step()
    fresh = p.a.socket(SOCK_STREAM)
    fresh.connect(("10.0.0.12", 80))
    p.run_until(lambda: fresh.connected)
