"""SACK (RFC 2018/6675), limited transmit (RFC 3042), early retransmit (RFC 5827) and the
tail loss probe (RFC 8985 7): option layouts (cross-checked with dpkt), the receiver's
blocks, the sender's scoreboard, and a Tcb driven segment by segment."""

import random

import dpkt
import pytest

from domains.xenolinux.net import SOCK_STREAM, tcp
from domains.xenolinux.net.tcpbuf import MOD, RecvBuffer
from domains.xenolinux.net.tcpsack import Scoreboard
from domains.xenolinux.net.tcpseg import ACK, SYN, Segment, build, parse, sack_option, syn_options
from tests.unit.net_fakes import Pair
from tests.unit.test_net_tcp import connect, transfer

A, B = bytes([10, 0, 0, 11]), bytes([10, 0, 0, 12])
MSS = 1000


# ---- options ------------------------------------------------------------------------
def test_syn_options_layout_matches_linux_and_dpkt():
    opts = syn_options(1460, 7, True)
    assert len(opts) % 4 == 0
    parsed = dict(dpkt.tcp.parse_opts(opts))
    assert parsed[dpkt.tcp.TCP_OPT_MSS] == (1460).to_bytes(2, "big")
    assert dpkt.tcp.TCP_OPT_SACKOK in parsed and parsed[dpkt.tcp.TCP_OPT_WSCALE] == b"\x07"
    seg = parse(A, B, build(A, B, 1, 2, 3, 0, SYN, 100, opts, b""))
    assert seg.sack_ok and seg.mss == 1460 and seg.wscale == 7
    assert not parse(A, B, build(A, B, 1, 2, 3, 0, SYN, 100, syn_options(1460, 7), b"")).sack_ok


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_sack_blocks_round_trip_through_dpkt(n):
    blocks = [((MOD - 3000 + i * 2000) % MOD, (MOD - 2000 + i * 2000) % MOD) for i in range(n)]
    opts = sack_option(blocks)
    kept = min(n, 4)
    assert len(opts) == 4 + 8 * kept and len(opts) % 4 == 0
    frame = dpkt.tcp.TCP(build(A, B, 1, 2, 3, 4, ACK, 100, opts, b"") + b"")
    (raw,) = [v for k, v in dpkt.tcp.parse_opts(frame.opts) if k == dpkt.tcp.TCP_OPT_SACK]
    dp = [
        (int.from_bytes(raw[i : i + 4], "big"), int.from_bytes(raw[i + 4 : i + 8], "big"))
        for i in range(0, len(raw), 8)
    ]
    assert dp == blocks[:kept]
    assert parse(A, B, build(A, B, 1, 2, 3, 4, ACK, 100, opts, b"")).sacks == tuple(dp)


def test_malformed_sack_option_is_ignored():
    opts = bytes((1, 1, 5, 7)) + b"\0" * 4  # length not 2 + 8n
    assert parse(A, B, build(A, B, 1, 2, 3, 4, ACK, 100, opts, b"")).sacks == ()


# ---- the receiver's blocks ----------------------------------------------------------
@pytest.mark.parametrize("base", [0, MOD - 2500])
def test_receiver_blocks_merge_latest_first_and_wrap(base):
    rb = RecvBuffer(1 << 20)
    seq = lambda off: (base + off) % MOD  # noqa: E731
    for off in (1000, 2000, 5000, 8000, 9000, 12000, 15000):
        rb.insert(base, seq(off), b"x" * 1000)
    rb.insert(base, seq(5000), b"x" * 1000)  # a duplicate: the latest again
    blocks = rb.sack_blocks(base, 4)
    assert blocks[0] == (seq(5000), seq(6000))
    assert blocks[1:] == [
        (seq(15000), seq(16000)),
        (seq(12000), seq(13000)),
        (seq(8000), seq(10000)),
    ]
    assert rb.sack_blocks(base, 8)[-1] == (seq(1000), seq(3000))


# ---- the scoreboard -----------------------------------------------------------------
def test_scoreboard_merges_trims_and_finds_lost_holes():
    sb = Scoreboard()
    sb.reset(MOD - 1500)  # SND.UNA just below the wrap
    una = sb.una
    blk = lambda a, b: ((una + a) % MOD, (una + b) % MOD)  # noqa: E731
    assert sb.add([blk(1000, 2000), blk(3000, 4000)], 10_000)
    assert not sb.add([blk(1000, 2000)], 10_000)  # nothing new
    assert not sb.add([blk(9000, 11_000), blk(-500, 0)], 10_000)  # beyond SND.MAX, stale
    assert sb.add([blk(2000, 3000), blk(5000, 8000)], 10_000)
    assert sb.blocks == [(1000, 4000), (5000, 8000)] and sb.sacked == 6000
    assert sb.holes(10_000) == [(0, 1000), (4000, 5000)]
    assert sb.lost(10_000, 2 * MSS + 1) == [(0, 1000), (4000, 5000)]
    assert sb.lost(10_000, 3000 + 1) == [(0, 1000)]  # 3000 above the second hole
    sb.advance((una + 1000) % MOD)
    assert sb.blocks == [(0, 3000), (4000, 7000)]
    sb.timed_out()
    assert sb.lost(9000, 1 << 30) == [(3000, 4000), (7000, 9000)]  # all un-SACKed


def test_scoreboard_bounds_a_peer_sacking_crumbs():
    sb = Scoreboard()
    sb.reset(0)
    for i in range(1000):
        sb.add([(2 * i + 1, 2 * i + 2)], 1 << 20)
    assert len(sb.blocks) == 256 and sb.sacked == 256


def test_scoreboard_pipe_next_hole_and_lost_retransmissions():
    sb = Scoreboard()
    sb.reset(0)
    sb.add([(1000, 2000), (3000, 8000)], 10_000)
    lost = sb.lost(10_000, 2 * MSS + 1)
    assert lost == [(0, 1000), (2000, 3000)]
    assert sb.pipe(10_000, lost) == 10_000 - 6000 - 2000  # the un-SACKed tail
    assert sb.next_hole(lost, MSS) == (0, 1000)
    sb.retransmitted(0, 1000, now=100)
    assert sb.next_hole(lost, MSS) == (2000, 3000)
    sb.retransmitted(2000, 3000, now=110)
    assert sb.next_hole(lost, MSS) is None and sb.pipe(10_000, lost) == 4000
    sb.add([(2000, 3000)], 10_000)  # the second retransmission arrived...
    sb.check_log(now=150, reo_ns=40)  # ...and the first is overdue: lost again
    assert sb.relost == [(0, 1000)] and sb.rxt_bytes == 0
    assert sb.next_hole(sb.lost(10_000, 2 * MSS + 1), MSS) == (0, 1000)


# ---- a Tcb driven by hand -----------------------------------------------------------
class Io:
    def __init__(self):
        self.t = 10**9
        self.out: list[tuple[int, int, bytes, bytes]] = []  # (seq, flags, opts, data)
        self.dirty = False

    def now(self):
        return self.t

    def tcp_xmit(self, tcb, seq, ack, flags, wnd, opts, data):
        self.out.append((seq, flags, opts, data))

    def tcp_dirty(self, tcb):
        self.dirty = True

    def tcp_closed(self, tcb):
        pass


ISS, IRS = MOD - 3 * MSS, 5000  # data crosses the 2**32 wrap


def established(sack=True, gso=False, peer_sack=True):
    io = Io()
    t = tcp.Tcb(io, (A, 1), (B, 2), MSS, gso, ISS, 1 << 18)
    t.offer_sack = sack
    t.open_active()
    t.output()
    assert bool(dpkt.tcp.TCP_OPT_SACKOK in dict(dpkt.tcp.parse_opts(io.out[0][2]))) == sack
    io.t += 10 * tcp.MS
    t.input(Segment(2, 1, IRS, (ISS + 1) % MOD, SYN | ACK, 65535, MSS, 4, b"", peer_sack))
    t.output()
    assert t.state == tcp.ESTABLISHED and t.sack == (sack and peer_sack)
    ack(t, io, 0)  # a scaled window: later ACKs are duplicates
    io.out.clear()
    return t, io


def ack(t, io, off, sacks=(), dt=1):
    """The peer's ACK for `off` data bytes with SACK blocks as data offsets."""
    base = (ISS + 1) % MOD
    io.t += dt * tcp.MS
    blocks = tuple(((base + a) % MOD, (base + b) % MOD) for a, b in sacks)
    n = len(io.out)
    t.input(Segment(2, 1, IRS + 1, (base + off) % MOD, ACK, 65535, 0, -1, b"", False, blocks))
    t.output()
    return [(((s - base) % MOD), len(d)) for s, _f, _o, d in io.out[n:] if d]


def sent(io):
    base = (ISS + 1) % MOD
    return [(((s - base) % MOD), len(d)) for s, _f, _o, d in io.out if d]


def test_sack_recovery_retransmits_every_hole_at_mss_size():
    t, io = established(gso=True)
    t.send(bytes(20 * MSS))
    t.output()
    assert sent(io) == [(0, 10 * MSS)]  # one TSO segment: the initial window
    # segments 0, 2 and 4 lost: the SACKs say so
    out = ack(t, io, 0, [(MSS, 2 * MSS)])
    out += ack(t, io, 0, [(3 * MSS, 4 * MSS), (MSS, 2 * MSS)])
    out += ack(t, io, 0, [(5 * MSS, 7 * MSS), (3 * MSS, 4 * MSS), (MSS, 2 * MSS)])
    out += ack(t, io, 0, [(5 * MSS, 10 * MSS), (3 * MSS, 4 * MSS), (MSS, 2 * MSS)])
    rexmits = [o for o in out if o[0] < 10 * MSS]
    assert rexmits == [(0, MSS), (2 * MSS, MSS), (4 * MSS, MSS)]
    assert t.fast_retransmits == 1 and t.cc.recover is not None
    ack(t, io, max(o + n for o, n in sent(io)))  # all holes filled
    assert t.cc.recover is None and t.sb.blocks == [] and t.timeouts == 0


def test_limited_transmit_then_fast_retransmit_without_sack():
    t, io = established(sack=False)
    assert not t.sack
    t.send(bytes(20 * MSS))
    t.output()
    assert len(sent(io)) == 10
    assert ack(t, io, 0) == [(10 * MSS, MSS)]  # first duplicate ACK: one new segment
    assert ack(t, io, 0) == [(11 * MSS, MSS)]  # second: another
    assert ack(t, io, 0) == [(0, MSS)]  # third: fast retransmit
    assert ack(t, io, 0) == []
    assert not any(o for s, f, o, d in io.out)  # no options without SACK


def test_early_retransmit_with_few_segments_out():
    for sack in (False, True):
        t, io = established(sack=sack)
        t.send(bytes(3 * MSS))
        t.output()
        assert len(sent(io)) == 3
        first = ack(t, io, 0, [(MSS, 2 * MSS)])
        out = first + ack(t, io, 0, [(MSS, 3 * MSS)])
        assert out == [(0, MSS)], sack  # after two duplicate ACKs, not three


def test_tail_loss_probe_resends_the_last_segment():
    t, io = established()
    t.send(bytes(4 * MSS))
    t.output()
    io.out.clear()
    assert t.probe_at is not None and t.probe_at < t.rto_at
    io.t = t.deadline()
    t.on_timer(io.t)
    assert sent(io) == [(3 * MSS, MSS)] and t.probes == 1 and t.timeouts == 0
    assert t.probe_at is None  # one probe, then the RTO
    assert ack(t, io, 4 * MSS) == []


def test_timeout_with_sack_resends_only_the_unsacked_bytes():
    t, io = established()
    t.send(bytes(6 * MSS))
    t.output()
    ack(t, io, 0, [(MSS, 2 * MSS), (4 * MSS, 5 * MSS)])
    io.out.clear()
    t.probe_at = None
    io.t = t.rto_at
    t.on_timer(io.t)
    t.output()
    assert t.timeouts == 1 and sent(io) == [(0, MSS)]  # cwnd is 1 MSS
    out = ack(t, io, MSS, [(4 * MSS, 5 * MSS)])
    assert out == [(2 * MSS, MSS), (3 * MSS, MSS)]  # slow start: 2, skipping the SACKed
    out = ack(t, io, 4 * MSS, [(4 * MSS, 5 * MSS)])
    assert out == [(5 * MSS, MSS)]


# ---- two stacks ---------------------------------------------------------------------
def tcp_frames(frames) -> list:
    ips = [dpkt.ethernet.Ethernet(f).data for f, _g in frames]
    return [
        ip.data for ip in ips if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP)
    ]


def test_sack_negotiated_and_fallback_to_newreno():
    p = Pair(gso_ok=False)
    _srv, c, s = connect(p)
    assert c.tcb.sack and s.tcb.sack
    p = Pair(gso_ok=False, loss=0.05, seed=5)
    srv = p.b.socket(SOCK_STREAM)
    srv.bind(("0.0.0.0", 80))
    srv.listen(1)
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 80))
    c.tcb.offer_sack = False  # an old peer: its SYN has no SACK-permitted
    p.run_until(srv.readable)
    s = srv.accept()
    assert not c.tcb.sack and not s.tcb.sack
    data = random.Random(1).randbytes(200_000)
    assert transfer(p, c, s, data) == data
    opts = [t.opts for t in tcp_frames(p.devb.sent)]
    assert opts and not any(dpkt.tcp.TCP_OPT_SACK in dict(dpkt.tcp.parse_opts(o)) for o in opts)


def test_lossy_timed_path_recovers_with_sack():
    ms = tcp.MS
    p = Pair(
        seed=2, cut_gso=True, delay_ns=5 * ms, rate_bps=10**8, loss=0.05, dup=0.05, reorder=0.05
    )
    _srv, c, s = connect(p)
    data = random.Random(2).randbytes(300_000)
    assert transfer(p, c, s, data) == data
    assert c.tcb.fast_retransmits > 0 and c.tcb.sack
    acks = tcp_frames(p.devb.sent)
    assert any(dpkt.tcp.TCP_OPT_SACK in dict(dpkt.tcp.parse_opts(a.opts)) for a in acks)


def test_both_ways_and_close_through_faults_with_sack():
    ms = tcp.MS
    p = Pair(seed=7, cut_gso=True, delay_ns=2 * ms, rate_bps=10**8, loss=0.1, dup=0.05, reorder=0.1)
    _srv, c, s = connect(p)
    up, down = random.Random(8).randbytes(150_000), random.Random(9).randbytes(150_000)
    got = {c: bytearray(), s: bytearray()}
    left = {c: up, s: down}

    def done():
        for sock in (c, s):
            if left[sock]:
                left[sock] = left[sock][sock.send(left[sock][:65536]) :]
            while r := sock.recv(1 << 20):
                got[sock].extend(r)
        return len(got[s]) == len(up) and len(got[c]) == len(down)

    p.run_until(done, 200_000)
    assert got[s] == up and got[c] == down
    c.close()
    s.close()
    p.run_until(lambda: not p.a.tcbs and not p.b.tcbs, 200_000)
