"""Sockets between two XenoLinux guests on the default host: d1 (10.0.0.11) and
d2 (10.0.0.12) on Dom0's bridge xenbr0, each through netfront -> netback. The
same programs as over loopback, now across domains."""

import re

import pytest

from launcher.guestshell import GuestShell
from launcher.hostspec import default_host

pytestmark = pytest.mark.timeout(120)
pytest.importorskip("domains.xenolinux.net.stack")
pytest.importorskip("domains.xenolinux.netfront")


@pytest.fixture(scope="module")
def pair():
    from launcher.host import Host
    from tests.conftest import assert_no_leaks, shm_entries
    from tests.integration.test_sockets import Shell
    shm = shm_entries()
    h = Host(default_host(), name=f"xd{__import__('os').getpid()}").start()
    try:
        yield Shell(GuestShell(h, "d1")), Shell(GuestShell(h, "d2"))
    finally:
        h.down()
        assert_no_leaks(h.name, shm)


def test_ifconfig_shows_eth0_configured_from_ip(pair):
    d1, _ = pair
    out = d1.run("ifconfig")
    assert re.search(r"eth0: flags=<UP[^>]*>  mtu 1500\n\s+inet 10.0.0.11/24\n"
                     r"\s+ether 00:16:3e:00:00:11\n\s+RX packets \d+  bytes \d+\n"
                     r"\s+TX packets \d+  bytes \d+", out), out


def test_ping_across_domains(pair):
    d1, _ = pair
    out = d1.run("ping -c 3 -i 0.05 d2")
    assert "3 packets transmitted, 3 received" in out, out


def test_netfoo_and_nettput_across_domains(pair):
    d1, d2 = pair
    pid = d2.background("echod -n 1 > /tmp/echod")
    assert d1.run("netfoo 10.0.0.12 7 50000").endswith("got 50000 back: same")
    assert d2.finished(pid) == "exit 0"
    pid = d2.background("nettput -s 6000 > /tmp/tput")
    client = d1.run("nettput d2 6000 10M")  # issue 6 §7: 10 MiB, same crc32
    assert d2.finished(pid) == "exit 0"
    line = re.compile(r"(\d+) bytes in [\d.]+ s, [\d.]+ Mbit/s, crc32 ([0-9a-f]{8})")
    sent = line.search(client).groups()
    assert sent[0] == str(10 << 20) and "server got the same bytes" in client, client
    assert line.search(d2.run("cat /tmp/tput")).groups() == sent


def test_httpd_in_d2_serves_d1_and_nc_udp(pair):
    d1, d2 = pair
    pid = d2.background("httpd -n 1 > /tmp/httpd.log")
    assert "It works!" in d1.run("wget -O - http://d2/")
    assert d2.finished(pid) == "exit 0"
    assert '10.0.0.11 "GET / HTTP/1.0" 200' in d2.run("cat /tmp/httpd.log")
    pid = d2.background("nc -u -l -d -W 1 5001 > /tmp/udp")
    d1.run("nc -u 10.0.0.12 5001 < /etc/issue")
    assert d2.finished(pid) == "exit 0"
    assert d2.run("cat /tmp/udp") != ""


def test_connecting_to_a_silent_address_ends_in_an_error(pair):
    d1, _ = pair
    out = d1.run("nc 10.0.0.99 80")
    assert re.search(r"EHOSTUNREACH|ETIMEDOUT", out), out
