"""The socket system calls over the scheduler, with the loopback stand-in of the
TCP/IP core (tests/support/fakestack.py): blocking, wake-ups, errors, poll,
descriptors and the stack's flush/timer wiring (domains.xenolinux.net_glue)."""

import errno

from domains.xenolinux import abi
from domains.xenolinux.net_glue import NetGlue
from domains.xenolinux.process import exited
from tests.support.fakestack import CONNECT_TIMEOUT_NS
from tests.support.guestsim import Clock, FakeKernel, Os

LO = "127.0.0.1"


def S(name, *args):  # noqa: N802 - a raw system call, as a program yields it
    return abi.Syscall(name, args)


def server(port, log, reply=b"pong"):
    def prog(c):
        fd = yield S("socket", abi.SOCK_STREAM)
        log.append(("bind", (yield S("bind", fd, (LO, port)))))
        yield S("listen", fd, 4)
        conn = yield S("accept", fd)
        log.append(("accepted", conn))
        log.append(("peer", (yield S("getpeername", conn))[0]))
        data = yield from c.recv_bytes(conn, 100)
        log.append(("got", data))
        log.append(("sent", (yield from c.send_bytes(conn, reply))))
        yield S("close", conn)
        yield S("close", fd)
    return prog


def client(port, log, msg=b"ping"):
    def prog(c):
        fd = yield S("socket", abi.SOCK_STREAM)
        log.append(("connect", (yield S("connect", fd, (LO, port)))))
        yield from c.send_bytes(fd, msg)
        while True:
            data = yield from c.recv_bytes(fd, 100)
            log.append(("reply", data))
            if not data:
                break
        yield S("close", fd)
    return prog


def test_tcp_over_loopback_blocks_in_accept_and_recv_and_wakes():
    os, slog, clog = Os(), [], []
    srv = os.spawn(server(7, slog))
    os.k.run()
    assert srv.state.value == "S" and slog == [("bind", 0)]  # asleep in accept
    cli = os.spawn(client(7, clog))
    os.k.run()
    assert slog == [("bind", 0), ("accepted", 1), ("peer", LO), ("got", b"ping"),
                    ("sent", 4)]
    assert clog == [("connect", 0), ("reply", b"pong"), ("reply", b"")]
    assert srv.status == exited(0) and cli.status == exited(0)
    assert os.stack.flushes > 0 and not os.stack.work  # every entry was flushed


def test_connect_refused_and_address_in_use_are_errnos():
    os, out = Os(), []

    def prog(c):
        a = yield S("socket", abi.SOCK_STREAM)
        out.append((yield S("connect", a, (LO, 9))))
        b = yield S("socket", abi.SOCK_STREAM)
        c2 = yield S("socket", abi.SOCK_STREAM)
        out.append((yield S("bind", b, (LO, 80))))
        out.append((yield S("bind", c2, (LO, 80))))
        out.append((yield S("recv", b, 0x1000, 10)))
        out.append((yield S("send", 50, 0x1000, 1)))
        out.append((yield S("socket", 7)))
        out.append((yield S("connect", a, ("not an ip", 1))))
    os.spawn(prog)
    os.k.run()
    assert out == [-errno.ECONNREFUSED, 0, -errno.EADDRINUSE, -errno.ENOTCONN,
                   -errno.EBADF, -errno.EINVAL, -errno.EINVAL]


def test_a_stack_timer_is_armed_on_the_kernel_and_ends_a_connect_with_etimedout():
    os, out = Os(), []

    def prog(c):
        fd = yield S("socket", abi.SOCK_STREAM)
        out.append((yield S("connect", fd, ("10.9.9.9", 80))))
    p = os.spawn(prog)
    os.k.run()
    assert p.state.value == "S" and [t.deadline for t in os.k.live_timers()] == \
        [os.clock.ns + CONNECT_TIMEOUT_NS]
    os.k.advance(CONNECT_TIMEOUT_NS)
    assert out == [-errno.ETIMEDOUT] and p.status == exited(0)


def test_send_blocks_when_the_buffers_are_full_and_resumes_as_the_peer_reads():
    os, got, sent = Os(), [], []
    big = bytes(range(256)) * 1024  # 256 KiB: more than send + receive buffers

    def srv(c):
        fd = yield S("socket", abi.SOCK_STREAM)
        yield S("bind", fd, (LO, 5000))
        yield S("listen", fd, 1)
        conn = yield S("accept", fd)
        yield S("sleep", 0)  # let the sender fill the buffers first
        while True:
            data = yield from c.recv_bytes(conn, 65536)
            if not data:
                break
            got.append(data)

    def cli(c):
        fd = yield S("socket", abi.SOCK_STREAM)
        yield S("connect", fd, (LO, 5000))
        buf = yield from c.malloc(len(big))
        c.store(buf, big)
        sent.append((yield S("send", fd, buf, len(big))))
        yield S("close", fd)

    os.sched.handlers["sleep"] = (lambda o, p, s: 0, False)
    os.spawn(srv)
    os.spawn(cli)
    os.k.run()
    assert sent == [len(big)] and b"".join(got) == big


def test_udp_datagrams_keep_their_boundaries_and_sender():
    os, out = Os(), []

    def prog(c):
        r = yield S("socket", abi.SOCK_DGRAM)
        yield S("bind", r, (LO, 53))
        s = yield S("socket", abi.SOCK_DGRAM)
        yield from c.sendto_bytes(s, b"one", (LO, 53))
        yield S("connect", s, (LO, 53))
        yield from c.send_bytes(s, b"two")
        out.append((yield from c.recvfrom_bytes(r, 100)))
        out.append((yield from c.recv_bytes(r, 100)))
    os.spawn(prog)
    os.k.run()
    assert out[0][0] == b"one" and out[0][1][0] == LO and out[1] == b"two"


def test_read_and_write_work_on_a_connected_socket_and_close_sends_fin():
    def cli(c):
        fd = yield S("socket", abi.SOCK_STREAM)
        yield S("connect", fd, (LO, 7))
        yield from c.write_bytes(fd, b"via write")
        log.append((yield from c.read_bytes(fd, 100)))
        log.append((yield from c.read_bytes(fd, 100)))
    os, log = Os(), []
    os.spawn(server(7, log, reply=b"hello"))
    os.spawn(cli)
    os.k.run()
    assert ("got", b"via write") in log and log[-2:] == [b"hello", b""]


def test_poll_waits_for_the_first_ready_socket_or_the_timeout():
    os, out = Os(), []

    def prog(c):
        a = yield S("socket", abi.SOCK_DGRAM)
        yield S("bind", a, (LO, 1000))
        b = yield S("socket", abi.SOCK_DGRAM)
        yield S("bind", b, (LO, 1001))
        out.append((yield S("poll", [(a, abi.POLLIN), (b, abi.POLLIN)], 500)))
        out.append((yield S("poll", [(a, abi.POLLIN), (b, abi.POLLIN)], -1)))
        out.append((yield S("poll", [(a, abi.POLLIN), (b, abi.POLLIN)], 0)))

    def sender(c):
        s = yield S("socket", abi.SOCK_DGRAM)
        yield from c.sendto_bytes(s, b"x", (LO, 1001))

    p = os.spawn(prog)
    os.k.run()
    assert p.state.value == "S" and out == []
    os.k.advance(2_000_000_000)  # well past the 500 ms timeout
    assert out == [[]]
    os.spawn(sender)
    os.k.run()
    assert out[1] == [(1, abi.POLLIN)]  # only what was asked for (and errors)
    assert out[2] == [(1, abi.POLLIN)] and p.status == exited(0)
    assert not os.k.live_timers()


def test_a_signal_interrupts_a_blocked_accept_and_exit_closes_the_socket():
    os = Os()

    def prog(c):
        fd = yield S("socket", abi.SOCK_STREAM)
        yield S("bind", fd, (LO, 22))
        yield S("listen", fd, 1)
        yield S("accept", fd)
    p = os.spawn(prog)
    os.k.run()
    assert (abi.SOCK_STREAM, 22) in os.stack.bound
    os.sched.signal(p, 15)
    os.k.run()
    assert p.status & 0x7F == 15
    assert (abi.SOCK_STREAM, 22) not in os.stack.bound  # the last fd closed the Sock


def test_sockets_are_refused_without_a_stack(monkeypatch):
    import domains.xenolinux.net_glue as net_glue

    def missing():
        raise ImportError("no domains.xenolinux.net")
    monkeypatch.setattr(net_glue, "_default_stack", missing)
    glue = NetGlue(FakeKernel(Clock()), lambda m: None, None)
    assert glue.stack is None
    try:
        glue.socket(abi.SOCK_STREAM)
    except OSError as err:
        assert err.errno == errno.EAFNOSUPPORT
    else:
        raise AssertionError("socket() without a stack")
