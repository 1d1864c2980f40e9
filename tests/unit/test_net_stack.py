"""NetStack's contract with the kernel glue: timers, on_change, one transmit per device
per flush, and the socket errors the system calls pass on."""

import errno

import pytest

from domains.xenolinux.net import SOCK_DGRAM, SOCK_ICMP, SOCK_STREAM
from tests.unit.net_fakes import Pair


def test_deadlines_and_on_change():
    p = Pair()
    changes = []
    p.a.on_change = lambda: changes.append(p.a.next_deadline_ns())
    assert p.a.next_deadline_ns() is None
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 80))  # nobody listens: RST
    p.a.flush()
    assert changes and changes[-1] is not None  # ARP retry timer
    p.run_until(lambda: c.error)
    assert changes[-1] is None and p.a.next_deadline_ns() is None


def test_timer_fires_only_when_due():
    p = Pair()
    srv = p.b.socket(SOCK_STREAM)
    srv.bind(("0.0.0.0", 80))
    srv.listen(1)
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 80))
    p.run_until(lambda: c.connected)
    p.link.down = True
    c.send(b"x")
    p.flush()
    c.tcb.probe_at = None  # the tail loss probe's timer is not the subject here
    due = p.a.next_deadline_ns()
    assert due == p.clock.t + c.tcb.rto
    p.clock.t = due - 1
    p.a.on_timer()
    assert c.tcb.timeouts == 0
    p.clock.t = due
    p.a.on_timer()
    assert c.tcb.timeouts == 1


def test_one_transmit_batch_per_device_per_flush():
    p = Pair()
    calls = []
    real = p.deva.transmit
    p.deva.transmit = lambda frames: (calls.append(len(frames)), real(frames))
    u = p.a.socket(SOCK_DGRAM)
    for i in range(5):
        u.sendto(bytes([i]), ("10.0.0.255", 9))  # broadcast: no ARP needed
    assert calls == []  # nothing leaves before flush
    p.a.flush()
    p.a.flush()
    assert calls == [5]
    assert p.devb.receiver is not None and p.deva.receiver is not None


def test_socket_errors():
    p = Pair()
    with pytest.raises(OSError) as e:
        p.a.socket(9)
    assert e.value.errno == errno.EPROTONOSUPPORT
    s = p.a.socket(SOCK_STREAM)
    for call, err in (
        (lambda: s.bind(("10.9.9.9", 1)), errno.EADDRNOTAVAIL),
        (lambda: s.bind(("10.0.0", 1)), errno.EINVAL),
        (lambda: s.send(b"x"), errno.ENOTCONN),
        (lambda: s.recv(1), errno.ENOTCONN),
        (lambda: s.accept(), errno.EINVAL),
        (lambda: p.a.socket(SOCK_DGRAM).listen(1), errno.EOPNOTSUPP),
        (lambda: p.a.socket(SOCK_DGRAM).send(b"x"), errno.EDESTADDRREQ),
        (lambda: p.a.socket(SOCK_ICMP).sendto(b"x", ("99.0.0.1", 0)), None),
    ):
        if err is None:
            call()  # via the default route: queued for ARP
            continue
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == err
    s.connect(("10.0.0.12", 80))
    with pytest.raises(OSError) as e:
        s.connect(("10.0.0.12", 80))
    assert e.value.errno == errno.EALREADY
    assert s.send(b"x") == 0 and not s.writable()  # still connecting: would block
    s.close()
    with pytest.raises(OSError) as e:
        s.recv(1)
    assert e.value.errno == errno.EBADF
