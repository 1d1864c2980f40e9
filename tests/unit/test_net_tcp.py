"""TCP between two stacks on an in-memory link: handshake, transfers, close, reset,
retransmission, flow control, loss/duplication/reordering, loopback."""

import errno
import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.xenolinux.net import SOCK_ICMP, SOCK_STREAM, tcp
from tests.unit.net_fakes import Pair


def connect(p: Pair, port: int = 80, backlog: int = 5, dst: str = "10.0.0.12"):
    srv = p.b.socket(SOCK_STREAM) if dst != "127.0.0.1" else p.a.socket(SOCK_STREAM)
    srv.bind(("0.0.0.0", port))
    srv.listen(backlog)
    c = p.a.socket(SOCK_STREAM)
    c.connect((dst, port))
    got = []

    def accepted():
        if not got and (s := srv.accept()) is not None:
            got.append(s)
        return bool(got)

    p.run_until(accepted)
    p.run_until(lambda: c.connected)
    return srv, c, got[0]


def transfer(p: Pair, src, dst, data: bytes, expect: int | None = None) -> bytes:
    """Push data through src while draining dst until `expect` (default: all of data)
    bytes arrived; returns what dst read."""
    expect = len(data) if expect is None else expect
    sent, got = 0, bytearray()

    def done():
        nonlocal sent
        if sent < len(data):
            sent += src.send(data[sent : sent + 65536])
        while (r := dst.recv(1 << 20)) is not None and r:
            got.extend(r)
        return len(got) >= expect

    p.run_until(done, 200_000)
    return bytes(got)


def test_handshake_and_names():
    p = Pair()
    srv, c, s = connect(p)
    assert c.tcb.state == s.tcb.state == tcp.ESTABLISHED
    assert c.tcb.snd_wscale == s.tcb.rcv_wscale == 2  # 256 KiB windows need scaling
    s.send(b"hello")
    p.run_until(c.readable)
    assert c.tcb.snd_wnd > 65535  # scaled, once a non-SYN segment carried it
    assert c.peername() == ("10.0.0.12", 80) and s.sockname() == ("10.0.0.12", 80)
    assert s.peername() == ("10.0.0.11", c.sockname()[1])
    assert c.recv(10) == b"hello"
    assert c.writable() and not c.readable() and c.recv(10) is None
    assert srv.accept() is None


@pytest.mark.parametrize("gso_ok,cut", [(False, False), (True, False), (True, True)])
def test_one_mib_both_ways(gso_ok, cut):
    p = Pair(gso_ok=gso_ok, cut_gso=cut)
    _srv, c, s = connect(p)
    up, down = random.Random(3).randbytes(1 << 20), random.Random(4).randbytes(1 << 20)
    assert hashlib.sha256(transfer(p, c, s, up)).digest() == hashlib.sha256(up).digest()
    assert transfer(p, s, c, down) == down


def test_events_fire_on_data_and_connection():
    p = Pair()
    srv = p.b.socket(SOCK_STREAM)
    srv.bind(("10.0.0.12", 80))
    srv.listen(1)
    seen = []
    srv.on_event = lambda: seen.append("srv")
    c = p.a.socket(SOCK_STREAM)
    c.on_event = lambda: seen.append("c")
    c.connect(("10.0.0.12", 80))
    p.run_until(lambda: "srv" in seen and "c" in seen)
    s = srv.accept()
    s.on_event = lambda: seen.append("s")
    c.send(b"hi")
    p.run_until(lambda: "s" in seen)
    assert s.readable() and s.recv(10) == b"hi"


def test_half_close_both_ways_and_time_wait():
    p = Pair()
    _srv, c, s = connect(p)
    c.send(b"request")
    c.shutdown_write()
    p.run_until(lambda: s.readable() and s.tcb.eof)
    assert s.recv(100) == b"request" and s.recv(100) == b""
    p.run_until(lambda: c.tcb.state == tcp.FIN_WAIT_2)
    assert s.tcb.state == tcp.CLOSE_WAIT
    s.send(b"response")  # the other half still works
    s.close()
    p.run_until(lambda: c.tcb.eof)
    assert c.recv(100) == b"response" and c.recv(100) == b""
    p.run_until(lambda: c.tcb.state == tcp.TIME_WAIT and s.tcb.state == tcp.CLOSED)
    entered = p.clock.t
    c.close()
    p.run_until(lambda: c.tcb.state == tcp.CLOSED)
    assert p.clock.t - entered >= tcp.TIME_WAIT_NS
    assert not p.a.tcbs and not p.b.tcbs and p.a.next_deadline_ns() is None


def test_simultaneous_close():
    p = Pair()
    _srv, c, s = connect(p)
    c.close()
    s.close()
    p.run_until(lambda: not p.a.tcbs and not p.b.tcbs)


def test_rst_to_closed_port_refuses():
    p = Pair()
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 81))
    p.run_until(lambda: c.error)
    assert c.error == errno.ECONNREFUSED and not c.connected
    with pytest.raises(OSError) as e:
        c.recv(1)
    assert e.value.errno == errno.ECONNREFUSED


def test_close_with_unread_data_resets_peer():
    p = Pair()
    _srv, c, s = connect(p)
    c.send(b"unread")
    p.run_until(lambda: s.readable())
    s.close()
    p.run_until(lambda: c.error)
    assert c.error == errno.ECONNRESET
    with pytest.raises(OSError):
        c.send(b"x")
    with pytest.raises(OSError):
        c.send(b"x")  # EPIPE after the reset was reported
    assert not p.a.tcbs and not p.b.tcbs


def test_rto_retransmits_with_backoff_then_recovers():
    p = Pair()
    _srv, c, s = connect(p)
    p.link.down = True
    c.send(b"x" * 5000)
    rtos = []
    for n in range(4):
        p.run_until(lambda n=n: c.tcb.retries > n)
        rtos.append(c.tcb.rto)
    assert rtos == sorted(rtos) and rtos[-1] == 8 * rtos[0]
    p.link.down = False
    got = bytearray()
    p.run_until(lambda: got.extend(s.recv(10_000) or b"") or len(got) == 5000)
    assert c.tcb.retries == 0


def test_fast_retransmit_repairs_a_single_loss_without_timeout():
    p = Pair(gso_ok=False)
    _srv, c, s = connect(p)
    p.link.drop_frames = {p.link.carried + 20}
    data = random.Random(7).randbytes(300_000)
    assert transfer(p, c, s, data) == data
    assert p.link.dropped == 1
    assert c.tcb.fast_retransmits == 1 and c.tcb.timeouts == 0


@pytest.mark.parametrize("lost", range(11))
def test_any_single_lost_frame_of_a_whole_session_is_repaired(lost):
    """Drop the n-th frame of ARP + handshake + exchange + both FINs: all still completes."""
    p = Pair(gso_ok=False)
    p.link.drop_frames = {lost}
    srv, c, s = connect(p)
    c.send(b"ping")
    p.run_until(lambda: s.readable())
    assert s.recv(10) == b"ping"
    s.send(b"pong")
    s.close()
    p.run_until(lambda: c.tcb.eof)
    assert c.recv(10) == b"pong" and c.recv(10) == b""
    c.close()
    p.run_until(lambda: not p.a.tcbs and not p.b.tcbs)
    assert p.link.dropped == 1


def test_device_without_tso_gets_software_segments():
    p = Pair(gso_ok=True)
    _srv, c, s = connect(p)
    p.deva.gso = False  # e.g. the backend reconnected without feature-gso-tcpv4
    data = random.Random(8).randbytes(200_000)
    assert transfer(p, c, s, data) == data
    late = p.deva.sent[-20:]
    assert all(g == 0 and len(f) <= 1514 for f, g in late)


def test_connect_times_out():
    p = Pair()
    p.link.down = True
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 80))
    p.run_until(lambda: c.error)
    assert c.error in (errno.ETIMEDOUT, errno.EHOSTUNREACH)


def test_dead_peer_times_out_established():
    p = Pair()
    _srv, c, _s = connect(p)
    p.link.down = True
    c.send(b"x")
    p.run_until(lambda: c.error)
    assert c.error == errno.ETIMEDOUT


def test_zero_window_then_reader_catches_up():
    p = Pair()
    _srv, c, s = connect(p)
    data = random.Random(5).randbytes(900_000)
    sent = 0
    for _ in range(200):
        sent += c.send(data[sent:])
        p.step()
    assert sent < len(data) and c.send(b"more") == 0 and not c.writable()
    assert s.tcb.rcvbuf.window() == 0 and c.tcb.snd_wnd == 0
    for _ in range(5):  # a long stall: the sender probes the zero window now and then
        p.step()
    assert c.tcb.persist_at is not None
    got = s.recv(1 << 20)
    assert got + transfer(p, c, s, data[sent:], len(data) - len(got)) == data


def test_backlog_limits_half_open_then_syn_retry_connects():
    p = Pair()
    srv = p.b.socket(SOCK_STREAM)
    srv.bind(("0.0.0.0", 80))
    srv.listen(1)
    c1, c2 = p.a.socket(SOCK_STREAM), p.a.socket(SOCK_STREAM)
    c1.connect(("10.0.0.12", 80))
    p.run_until(lambda: c1.connected)
    c2.connect(("10.0.0.12", 80))
    p.run_until(lambda: not p.link.queue)
    assert c2.tcb.state == tcp.SYN_SENT and len(srv.accept_queue) == 1
    assert srv.accept() is not None
    p.run_until(srv.readable)  # the retransmitted SYN gets in
    assert srv.accept() is not None and c2.connected


def test_listener_close_resets_unaccepted():
    p = Pair()
    srv = p.b.socket(SOCK_STREAM)
    srv.bind(("0.0.0.0", 80))
    srv.listen(4)
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 80))
    p.run_until(lambda: srv.readable())
    srv.close()
    p.run_until(lambda: c.error)
    assert c.error == errno.ECONNRESET
    again = p.b.socket(SOCK_STREAM)
    again.bind(("0.0.0.0", 80))  # the port is free again


def test_loopback_tcp():
    p = Pair()
    _srv, c, s = connect(p, dst="127.0.0.1")
    data = random.Random(6).randbytes(1 << 20)
    assert transfer(p, c, s, data) == data
    assert not p.deva.sent


@settings(max_examples=8, deadline=None, derandomize=True)
@given(st.integers(0, 10_000))
def test_lossy_link_delivers_every_byte_in_order(seed):
    p = Pair(seed=seed, gso_ok=False)
    ping = p.a.socket(SOCK_ICMP)  # resolve ARP first: losing 3 requests in a row is an
    ping.sendto(b"\0\0", ("10.0.0.12", 0))  # EHOSTUNREACH, not what this test is about
    p.run_until(ping.readable)
    p.link.loss = p.link.dup = p.link.reorder = 0.05
    _srv, c, s = connect(p)
    up = random.Random(seed).randbytes(200_000)
    down = random.Random(seed + 1).randbytes(50_000)
    assert transfer(p, c, s, up) == up
    assert transfer(p, s, c, down) == down
    assert c.tcb.fast_retransmits + c.tcb.timeouts > 0
    c.close()
    p.run_until(lambda: s.tcb.eof)
    assert s.recv(10) == b""
    s.close()
    p.run_until(lambda: not p.a.tcbs and not p.b.tcbs)
    assert p.link.dropped and p.link.duplicated
