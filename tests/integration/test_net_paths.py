"""Network paths beyond one bridge, on real hosts (issue 6 §7): two hosts on one
NIC wire (ping, a 10 MiB TCP transfer through 5% loss, duplication and
reordering, the pcap read by tcpdump), and a real client in a network namespace
fetching a page from a guest's httpd through TAP.

Each host is the examples' lab-a / lab-b description (a1 10.0.0.21, b1
10.0.0.22 on 10.0.0.0/24, each host's NIC a port of its xenbr0), on a wire
named for this test run so that no other host on the machine shares it.
"""

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from launcher import rundir
from launcher.guestshell import GuestShell
from launcher.host import Host
from launcher.hostspec import load_host_toml
from tests.conftest import assert_no_leaks, print_logs, shm_entries, xenolab

pytestmark = pytest.mark.timeout(120)
pytest.importorskip("domains.xenolinux.net.stack")

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples/hosts"
TPUT = re.compile(r"(\d+) bytes in [\d.]+ s, [\d.]+ Mbit/s, crc32 ([0-9a-f]{8})")
# The 10 MiB through 5% loss, duplication and reordering: about 20 s here with
# SACK recovery (Reno halving cwnd at every loss is the limit at this path's RTT).
FAULTED_SIZE = "10M"
SHELL_S = 150  # how long a command in a guest may take


def example(file: str, name: str, **nic) -> Host:
    """The example host `file` under a unique name, its NIC changed by `nic`."""
    spec = load_host_toml(EXAMPLES / file)
    devices = tuple(dataclasses.replace(d, **nic) if d.kind == "nic" else d
                    for d in spec.devices)
    return Host(dataclasses.replace(spec, devices=devices), name=name)


class Hosts:
    """Hosts started for a module, torn down and leak-checked at its end."""

    def __init__(self) -> None:
        self.started: list[tuple[Host, set[str]]] = []
        self.failed = False

    def start(self, h: Host) -> Host:
        self.started.append((h, shm_entries()))
        return h.start()

    def down(self) -> None:
        for h, shm in reversed(self.started):
            h.down()
            if self.failed:
                print_logs(h)
            assert_no_leaks(h.name, shm)


@pytest.fixture(scope="module")
def hosts():
    made = Hosts()
    try:
        yield made
    finally:
        made.down()


@pytest.fixture(autouse=True)
def _note_failure(request, hosts):
    yield
    rep = getattr(request.node, "rep_call", None)
    hosts.failed |= rep is not None and rep.failed


def tput_line(out: str) -> tuple[str, str]:
    m = TPUT.search(out)
    assert m, out
    return m.groups()


# ---- two hosts on one wire ---------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(hosts):
    from tests.integration.test_sockets import Shell
    wire = f"t{os.getpid()}-lab"
    a = hosts.start(example("lab-a.toml", f"la{os.getpid()}", wire=wire))
    b = hosts.start(example("lab-b.toml", f"lb{os.getpid()}", wire=wire))
    return a, b, Shell(GuestShell(a, "a1", SHELL_S)), Shell(GuestShell(b, "b1", SHELL_S))


def wire_faults(h: Host, *options: str) -> None:
    """`xenolab dev wire nic0 ...`, then wait until the device says it applied it."""
    from tests.integration.test_nic import until
    before = h.xl("nic_list")[0]["link_changes"]
    xenolab("dev", "wire", "nic0", *options, "--host", h.name)
    until(lambda: h.xl("nic_list")[0]["link_changes"] > before)


def test_two_hosts_ping_over_their_wire(lab):
    a, b, a1, b1 = lab
    out = a1.run("ping -c 3 -i 0.05 10.0.0.22")
    assert "3 packets transmitted, 3 received" in out, out
    out = b1.run("ping -c 1 10.0.0.21")
    assert "1 packets transmitted, 1 received" in out, out
    # and the frames did cross the NICs, not some shortcut
    for h in (a, b):
        stats = h.xl("nic_list")[0]["statistics"]
        assert stats["rx_frames"] >= 4 and stats["tx_frames"] >= 4, stats



def retransmissions(pcap: pathlib.Path, dport: int) -> int:
    """Data segments to `dport` in a pcap that resend bytes already sent."""
    import dpkt
    highest, again = None, 0
    with open(pcap, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            seg = ip.data
            if seg.dport != dport or not seg.data:
                continue
            if highest is not None and (seg.seq - highest) % 2**32 >= 2**31:
                again += 1
            end = (seg.seq + len(seg.data)) % 2**32
            if highest is None or (end - highest) % 2**32 < 2**31:
                highest = end
    return again


@pytest.mark.timeout(240)
def test_tcp_through_loss_duplication_and_reordering_arrives_in_order(lab):
    a, b, a1, b1 = lab
    # both directions of a's link: the data and the ACKs each meet every fault
    wire_faults(a, "--drop", "0.05", "--dup", "0.05", "--reorder", "0.05")
    try:
        pid = b1.background("nettput -s 6001 > /tmp/tput")
        client = a1.run(f"nettput 10.0.0.22 6001 {FAULTED_SIZE}")
        assert b1.finished(pid, timeout=SHELL_S) == "exit 0"
    finally:
        wire_faults(a, "--clear")
    assert "server got the same bytes" in client, client
    sent = tput_line(client)
    assert int(sent[0]) == int(FAULTED_SIZE[:-1]) << 20
    assert tput_line(b1.run("cat /tmp/tput")) == sent  # every byte, in order
    # the faults did bite: a1 had to send some bytes again
    vif = pathlib.Path(rundir.path(a.name), f"vif{a['a1']['domid']}.0.pcap")
    assert retransmissions(vif, 6001) > 0


def test_the_vif_pcap_reads_with_tcpdump(lab):
    a, b, a1, b1 = lab
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (.ci/run installs it)")
    assert "1 received" in a1.run("ping -c 1 10.0.0.22")
    pid = b1.background("nettput -s 6002 > /dev/null")
    assert "same bytes" in a1.run("nettput 10.0.0.22 6002 64K")
    assert b1.finished(pid) == "exit 0"
    domid = a["a1"]["domid"]
    pcap = pathlib.Path(rundir.path(a.name), f"vif{domid}.0.pcap")
    out = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert "ethernet" in out.stderr.lower() or "EN10MB" in out.stderr, out.stderr
    lines = out.stdout.splitlines()
    assert any(re.search(r"IP 10\.0\.0\.21 > 10\.0\.0\.22: ICMP echo request", x)
               for x in lines), lines[:20]
    assert any(re.search(r"IP 10\.0\.0\.22 > 10\.0\.0\.21: ICMP echo reply", x)
               for x in lines), lines[:20]
    assert any(re.search(r"ARP, Request who-has 10\.0\.0\.22 tell 10\.0\.0\.21", x)
               for x in lines), lines[:20]
    # the TCP transfer's handshake, as tcpdump decodes it
    assert any(re.search(r"IP 10\.0\.0\.21\.\d+ > 10\.0\.0\.22\.6002: Flags \[S\]", x)
               for x in lines), lines[:20]
    assert any(re.search(r"IP 10\.0\.0\.22\.6002 > 10\.0\.0\.21\.\d+: Flags \[S\.\]", x)
               for x in lines), lines[:20]


# ---- a real client in a network namespace, through TAP ---------------------------------

@pytest.fixture
def netns():
    """A network namespace made for this test, always deleted after it."""
    if os.geteuid() != 0:
        pytest.skip("TAP in a network namespace needs root")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun: TAP mode cannot be tested here")
    missing = [cmd for cmd in ("ip", "curl") if shutil.which(cmd) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    name = f"xl-t{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=30)


def test_curl_in_a_netns_fetches_the_guests_page_through_tap(netns, make_host):
    from launcher.devspec import DeviceSpec
    from launcher.hostspec import default_host
    from tests.integration.test_sockets import Shell
    tap = f"xlt{os.getpid() % 100000}"
    spec = default_host()
    nic = DeviceSpec(name="nic0", kind="nic", tap=tap, tap_netns=netns)
    h = make_host(dataclasses.replace(spec, domains=spec.domains[:1], devices=(nic,)))
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.0.0.1/24", "dev", tap], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", tap, "up"], check=True)
    d1 = Shell(GuestShell(h, "d1"))
    pid = d1.background("httpd -n 1 > /tmp/httpd.log")
    if shutil.which("ping"):  # iputils is optional here; curl is the point
        ping = in_ns(netns, "ping", "-c", "1", "-W", "5", "10.0.0.11")
        assert ping.returncode == 0 and "1 received" in ping.stdout, ping.stdout + ping.stderr
    page = in_ns(netns, "curl", "-s", "--max-time", "10", "http://10.0.0.11/")
    assert page.returncode == 0, page.stderr
    assert page.stdout == (ROOT / "domains/xenolinux/rootfs/www/index.html").read_text()
    assert d1.finished(pid) == "exit 0"
    assert '10.0.0.1 "GET / HTTP/1.1" 200' in d1.run("cat /tmp/httpd.log")
    # and the guest reaches its gateway: the namespace's end of the TAP
    assert "1 received" in d1.run("ping -c 1 gateway")
