"""Sockets in a XenoLinux guest on a real host, over loopback (127.0.0.1): the
guest's TCP/IP stack under the socket system calls, driven by the /bin network
programs from the shell on the console, as a user would."""

import pathlib
import re
import time

import pytest

from launcher.guestshell import GuestShell
from launcher.hostspec import parse_host_toml

pytestmark = pytest.mark.timeout(120)
# Before the TCP/IP core (domains/xenolinux/net) is merged the guest has no sockets.
pytest.importorskip("domains.xenolinux.net.stack")

ROOTFS = pathlib.Path(__file__).resolve().parents[2] / "domains/xenolinux/rootfs"
HOST = """
[host]
name = "sockets"
[[domain]]
name = "n1"
memory = 32
disk = ["format=raw, vdev=xvda, access=rw, target=n1.img"]
"""


class Shell:
    """GuestShell.run, with the shell's "[pid] Done (...)" job reports kept apart."""

    def __init__(self, sh: GuestShell) -> None:
        self.sh, self.done = sh, {}

    def run(self, command: str) -> str:
        out = self.sh.run(command)
        for pid, how in re.findall(r"^\[(\d+)\] Done \(([^)]*)\)$", out, re.M):
            self.done[pid] = how
        return re.sub(r"\n?^\[\d+\] Done \([^)]*\)$", "", out, flags=re.M).strip("\n")

    def background(self, command: str) -> str:
        """Start `command &`; its pid."""
        return re.search(r"\[(\d+)\]", self.run(f"{command} &")).group(1)

    def finished(self, pid: str, timeout: float = 30.0) -> str:
        """How background `pid` ended (sh reports it before a prompt: poke it)."""
        deadline = time.monotonic() + timeout
        while pid not in self.done:
            assert time.monotonic() < deadline, f"[{pid}] never ended"
            self.run("sleep 0.05")
        return self.done.pop(pid)


@pytest.fixture(scope="module")
def sh():
    from launcher.host import Host
    from tests.conftest import assert_no_leaks, shm_entries
    shm = shm_entries()
    h = Host(parse_host_toml(HOST, "test"), name=f"sk{__import__('os').getpid()}").start()
    try:
        yield Shell(GuestShell(h, "n1"))
    finally:
        h.down()
        assert_no_leaks(h.name, shm)


def test_ping_loopback(sh):
    out = sh.run("ping -c 3 -i 0.05 127.0.0.1")
    assert re.findall(r"64 bytes from 127.0.0.1: icmp_seq=(\d)", out) == ["1", "2", "3"], out
    assert "3 packets transmitted, 3 received, 0% packet loss" in out
    assert "PING localhost (127.0.0.1)" in sh.run("ping -c 1 localhost")


def test_nc_server_receives_what_the_client_reads_from_a_file(sh):
    pid = sh.background("nc -l -d 5000 > /tmp/got")
    assert sh.run("nc 127.0.0.1 5000 < /etc/motd ; echo $?").endswith("0")
    assert sh.finished(pid) == "exit 0"
    assert sh.run("cat /tmp/got") == (ROOTFS / "etc/motd").read_text().strip()


def test_nc_over_udp(sh):
    pid = sh.background("nc -u -l -d -W 1 5001 > /tmp/udp")
    sh.run("nc -u 127.0.0.1 5001 < /etc/issue")
    assert sh.finished(pid) == "exit 0"
    assert sh.run("cat /tmp/udp") == (ROOTFS / "etc/issue").read_text().strip()


def test_a_refused_connection_is_an_error_not_a_hang(sh):
    assert "ECONNREFUSED" in sh.run("nc 127.0.0.1 9")
    assert "ECONNREFUSED" in sh.run("netfoo 127.0.0.1 9")


def test_netfoo_round_trip_through_echod(sh):
    pid = sh.background("echod -n 1 > /tmp/echod")
    assert sh.run("netfoo localhost 7 20000") == \
        "netfoo: sent 20000 bytes to 127.0.0.1:7, got 20000 back: same"
    assert sh.finished(pid) == "exit 0"
    assert "echod: echoed 20000 bytes" in sh.run("cat /tmp/echod")


def test_httpd_serves_files_to_wget(sh):
    pid = sh.background("httpd -n 3 > /tmp/httpd.log")
    page = (ROOTFS / "www/index.html").read_text().strip()
    assert sh.run("wget -O - http://127.0.0.1/") == page
    out = sh.run("cd /tmp ; wget http://localhost:80/index.html ; cat index.html ; cd /")
    assert out.startswith("wget: http://localhost:80/index.html: HTTP/1.0 200 OK,") and page in out
    assert sh.run("wget http://127.0.0.1/nothing.html ; echo $?").endswith("1")
    assert sh.finished(pid) == "exit 0"
    log = sh.run("cat /tmp/httpd.log")
    assert '127.0.0.1 "GET / HTTP/1.0" 200' in log and '"GET /nothing.html HTTP/1.0" 404' in log


def test_nettput_over_loopback_both_ends_agree(sh):
    pid = sh.background("nettput -s 6000 > /tmp/tput")
    client = sh.run("nettput 127.0.0.1 6000 1M")
    assert sh.finished(pid) == "exit 0"
    server = sh.run("cat /tmp/tput")
    line = re.compile(r"(\d+) bytes in [\d.]+ s, [\d.]+ Mbit/s, crc32 ([0-9a-f]{8})")
    assert line.search(client).groups() == line.search(server).groups()
    assert line.search(client)[1] == str(1 << 20) and "server got the same bytes" in client


def test_ifconfig_shows_lo(sh):
    out = sh.run("ifconfig")
    assert out.startswith("lo: flags=<UP,LOOPBACK>") and "inet 127.0.0.1/8" in out


def test_the_trace_marks_where_a_socket_call_blocks_and_resumes(make_host):
    from hypervisor.public import trace as T
    from launcher import trace as C
    h = make_host(parse_host_toml(HOST, "test"), trace=True)
    sh = Shell(GuestShell(h, "n1"))
    pid = sh.background("echod -n 1 > /tmp/echod")
    assert sh.run("netfoo 127.0.0.1").endswith("same")
    assert sh.finished(pid) == "exit 0"
    events = C.load(C.folder(h.name))
    blocked = {(e.a, e.s) for e in events if e.point == T.PROC_BLOCK}
    assert (int(pid), "accept") in blocked and (int(pid), "recv") in blocked
    woken = {e.trace_id for e in events if e.point == T.PROC_WAKE}
    assert {e.trace_id for e in events if e.point == T.PROC_BLOCK and e.s == "accept"} <= woken
