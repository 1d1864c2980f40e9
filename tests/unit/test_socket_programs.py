"""The network programs of /bin (nc, echod, netfoo, nettput, ping, ifconfig) run
by the real loader and scheduler over loopback: what they print and how they
end. One suite, two stacks (STYLE 10): the stand-in (tests/support/fakestack.py)
and the guest's TCP/IP core (domains/xenolinux/net), on virtual time."""

import importlib
import re

import pytest

from domains.xenolinux.process import exited
from tests.support.fakestack import FakeStack
from tests.support.guestsim import Os as _Os
from tests.support.guestsim import program


def _real_stack():
    try:
        return importlib.import_module("domains.xenolinux.net.stack").NetStack
    except ImportError:
        pytest.skip("no domains.xenolinux.net (the TCP/IP core) in this tree")


@pytest.fixture(params=["fake", "real"])
def Os(request):  # noqa: N802 - stands for the class
    cls = FakeStack if request.param == "fake" else _real_stack()
    return lambda: _Os(stack_class=cls)


def run(os, *procs):
    os.k.run_all()
    return [(p.status, out.out.decode()) for p, out in procs]


def test_nc_server_and_client_copy_both_ways_then_end_on_close(Os):  # noqa: N803
    os = Os()
    srv = program(os, "nc", ["nc", "-l", "5000"], stdin=b"from the server\n")
    cli = program(os, "nc", ["nc", "127.0.0.1", "5000"], stdin=b"hello\nworld\n")
    (s_status, s_out), (c_status, c_out) = run(os, srv, cli)
    assert s_out == "hello\nworld\n" and c_out == "from the server\n"
    assert s_status == c_status == exited(0)


def test_nc_udp_server_takes_one_datagram_with_w(Os):  # noqa: N803
    os = Os()
    srv = program(os, "nc", ["nc", "-u", "-l", "-d", "-W", "1", "5001"])
    cli = program(os, "nc", ["nc", "-u", "127.0.0.1", "5001"], stdin=b"datagram\n")
    assert run(os, srv, cli) == [(exited(0), "datagram\n"), (exited(0), "")]


def test_nc_reports_a_refused_connection_and_bad_usage(Os):  # noqa: N803
    os = Os()
    refused = program(os, "nc", ["nc", "127.0.0.1", "9"])
    usage = program(os, "nc", ["nc", "-x", "1"])
    (r_status, r_out), (u_status, u_out) = run(os, refused, usage)
    assert r_status == exited(1) and "ECONNREFUSED" in r_out
    assert u_status == exited(2) and u_out.startswith("usage: nc")


def test_netfoo_gets_its_buffer_back_from_echod(Os):  # noqa: N803
    os = Os()
    srv = program(os, "echod", ["echod", "-n", "1", "7"])
    cli = program(os, "netfoo", ["netfoo", "127.0.0.1", "7", "100000"])
    (s_status, s_out), (c_status, c_out) = run(os, srv, cli)
    assert c_out == "netfoo: sent 100000 bytes to 127.0.0.1:7, got 100000 back: same\n"
    assert "echod: echoed 100000 bytes" in s_out and s_status == c_status == exited(0)


def test_nettput_both_sides_agree_on_the_crc32(Os):  # noqa: N803
    os = Os()
    srv = program(os, "nettput", ["nettput", "-s", "6000"])
    cli = program(os, "nettput", ["nettput", "127.0.0.1", "6000", "1M"])
    (s_status, s_out), (c_status, c_out) = run(os, srv, cli)
    crc = re.compile(r"(\d+) bytes in [\d.]+ s, [\d.]+ Mbit/s, crc32 ([0-9a-f]{8})")
    assert crc.search(s_out).groups() == crc.search(c_out).groups()
    assert crc.search(c_out)[1] == "1048576"
    assert "server got the same bytes" in c_out and s_status == c_status == exited(0)


def test_ping_loopback_gets_every_reply(Os):  # noqa: N803
    os = Os()
    p = program(os, "ping", ["ping", "-c", "3", "-i", "0", "127.0.0.1"])
    [(status, out)] = run(os, p)
    replies = re.findall(r"64 bytes from 127.0.0.1: icmp_seq=(\d)", out)
    assert status == exited(0) and replies == ["1", "2", "3"]
    assert "3 packets transmitted, 3 received, 0% packet loss" in out


def test_ifconfig_lists_lo(Os):  # noqa: N803
    os = Os()
    [(status, out)] = run(os, program(os, "ifconfig", ["ifconfig"]))
    assert status == exited(0) and out.startswith("lo: flags=<UP,LOOPBACK>")
    assert "inet 127.0.0.1/8" in out
