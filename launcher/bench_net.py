"""`xenolab bench net`: the network split driver, measured between two DomUs.

What is measured (one run, one private default host, programs run from the
guests' shells on their consoles, like a user would):
- ping: d1 pings d2 (`ping -c N -i 0 > FILE`), one echo at a time; each
  reply's round trip as the guest's ping writes it (CLOCK_MONOTONIC, us),
  into a file so that no console traffic runs beside the echoes:
  socket -> TCP/IP -> netfront -> ring -> event channel -> Xen -> netback
  -> bridge -> netback -> d2's netfront -> d2's stack answers -> and back.
- TCP: d1 sends BYTES to d2's `nettput -s` (same crc32 on both sides).
- UDP: d1's `udpblast` sends 64-byte datagrams for SECONDS; the rate is
  what d2's `udpblast -s` counted (a datagram the path drops is not counted).
- notifications per packet: the event-channel sends of both guests and of
  Domain-0 (Xen's per-domain counter) over the packets both vifs carried in
  the TCP and UDP phases (netback's counters), the way Xen's notification
  suppression and batching are judged.
- baseline: a raw ZeroMQ round trip to an echo process, in the same run.

Rules: a private host, always torn down; progress on stderr so `--json`
leaves one object on stdout; targets are reported, never enforced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from launcher import rundir
from launcher.bench import histogram_summary, measure_zmq, say
from launcher.guestshell import GuestShell
from launcher.host import Host
from launcher.hostspec import default_host
from launcher.rundir import HostError

SERVER_IP = "10.0.0.12"
PING_LOG = "/ping.log"  # in d1's ext2 (see _measure)
TCP_PORT, UDP_PORT = 5001, 5002
TARGETS = {"ping_ratio": 8.0, "tcp_mbit_s": 50.0}
PING_RE = re.compile(r"icmp_seq=\d+ time=([\d.]+) ms")
TCP_RE = re.compile(r"nettput: sent (\d+) bytes in ([\d.]+) s, ([\d.]+) Mbit/s")
SAME_RE = re.compile(r"nettput: server got the same bytes")
UDP_RE = re.compile(r"udpblast: received (\d+) datagrams, \d+ bytes in ([\d.]+) s, (\d+) pps")
UDP_SENT_RE = re.compile(r"udpblast: sent (\d+) datagrams")


def run_net(args, host: str) -> int:
    for key in ("count", "seconds"):
        if getattr(args, key) <= 0:
            raise HostError(f"--{key} must be positive")
    if getattr(args, "host", None) or os.environ.get("XENOLAB_HOST"):
        say("bench net always boots a private host (fresh images: /bin is current)")
    result = bench_net(args.count, _bytes(args.bytes), args.seconds)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


def _bytes(word: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20}.get(word[-1:].upper(), 1)
    digits = word[:-1] if mult > 1 else word
    if not digits.isdigit() or int(digits) <= 0:
        raise HostError(f"--bytes: {word!r} is not a size (e.g. 16M)")
    return int(digits) * mult


def bench_net(count: int, nbytes: int, seconds: float) -> dict[str, Any]:
    name = f"bench-net-{os.getpid()}"
    images = rundir.image_dir(rundir.host_name(name))
    shutil.rmtree(images, ignore_errors=True)  # a stale /bin would lack the programs
    try:
        with Host(default_host(), name, progress=say) as h:
            d1 = GuestShell(h, "d1", timeout=60 + count * 0.05 + nbytes / 1e6)
            d2 = GuestShell(h, "d2", timeout=60)
            result = {"bench": "net", "host": h.name, **_measure(h, d1, d2, count, nbytes,
                                                                  seconds)}
    finally:
        shutil.rmtree(images, ignore_errors=True)
    say(f"baseline: {count} raw ZeroMQ round trips")
    result["baseline_zmq_rtt_ns"] = measure_zmq(count)
    result["ping_ratio"] = round(result["ping_rtt_ns"]["p50"]
                                 / result["baseline_zmq_rtt_ns"]["p50"], 2)
    result["targets"] = {
        "ping_ratio": {"max": TARGETS["ping_ratio"],
                       "met": result["ping_ratio"] <= TARGETS["ping_ratio"]},
        "tcp_mbit_s": {"min": TARGETS["tcp_mbit_s"],
                       "met": result["tcp_mbit_s"] >= TARGETS["tcp_mbit_s"]}}
    return result


def _measure(h, d1, d2, count, nbytes, seconds) -> dict[str, Any]:
    say(f"d1: ping -c {count} {SERVER_IP} (ARP first: one ping)")
    d1.run(f"ping -c 1 {SERVER_IP}")
    # The lines go to a file, read afterwards: on the console each would be
    # a console round trip through Domain-0 during the next echo, and the
    # bench would time its own output (about 0.9 ms a ping here).
    d1.run(f"ping -c {count} -i 0 {SERVER_IP} > {PING_LOG}")
    out = d1.run(f"cat {PING_LOG}")
    d1.run(f"rm {PING_LOG}")
    rtts = [round(float(ms) * 1e6) for ms in PING_RE.findall(out)]
    if len(rtts) < count // 2:
        raise HostError(f"ping: {len(rtts)} of {count} replies: {out[-300:]!r}")
    before = _counters(h)
    say(f"d1 -> d2: TCP, {nbytes} bytes")
    d2.type(f"nettput -s {TCP_PORT} -n 1 &\n")
    d2.wait_for("listening on port")
    out = d1.run(f"nettput {SERVER_IP} {TCP_PORT} {nbytes}")
    tcp = TCP_RE.search(out)
    if tcp is None or not SAME_RE.search(out):
        raise HostError(f"nettput failed: {out[-300:]!r}")
    say(f"d1 -> d2: UDP, 64-byte datagrams for {seconds:g} s")
    d2.type(f"udpblast -s {UDP_PORT} &\n")
    d2.wait_for("udpblast: listening")
    sent = UDP_SENT_RE.search(d1.run(f"udpblast {SERVER_IP} {UDP_PORT} {seconds:g}"))
    udp = UDP_RE.search(d2.wait_for(r"udpblast: received .* pps", regex=True))
    after = _counters(h)
    packets = sum(after["packets"][k] - before["packets"].get(k, 0) for k in after["packets"])
    sends = after["sends"] - before["sends"]
    return {
        "ping_rtt_ns": histogram_summary(rtts),
        "tcp_bytes": int(tcp[1]), "tcp_seconds": float(tcp[2]), "tcp_mbit_s": float(tcp[3]),
        "udp_sent": int(sent[1]) if sent else None,
        "udp_received": int(udp[1]) if udp else 0, "udp_pps": int(udp[3]) if udp else 0,
        "vif_packets": packets, "evtchn_sends": sends,
        "notifications_per_packet": round(sends / packets, 3) if packets else None,
    }


def _counters(h) -> dict[str, Any]:
    """Packets on every vif (netback's counters) and event-channel sends of all domains."""
    packets = {}
    for dom in ("d1", "d2"):
        for vif in h.xl("network_list", dom=dom):
            packets[vif["name"]] = int(vif.get("rx_packets", 0)) + int(vif.get("tx_packets", 0))
    sends = sum(int(d.get("evtchn_sends", 0)) for d in h.xl("list"))
    return {"packets": packets, "sends": sends}


def report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Network d1 <-> d2 on host '{r['host']}'")
    table.add_column("round trip")
    table.add_column("count", justify="right")
    for key in ("p50", "p90", "p99", "max"):
        table.add_column(f"{key} (us)", justify="right")
    for label, key in (("ping d1 -> d2", "ping_rtt_ns"), ("raw ZeroMQ", "baseline_zmq_rtt_ns")):
        s = r[key]
        table.add_row(label, str(s["count"]), *(f"{s[k] / 1e3:.0f}" for k in
                                                ("p50", "p90", "p99", "max")))
    console.print(table)
    console.print(f"  ping p50 = {r['ping_ratio']}x the raw ZeroMQ round trip "
                  f"(target <= {TARGETS['ping_ratio']:g}x: "
                  f"{'met' if r['targets']['ping_ratio']['met'] else 'not met'})")
    console.print(f"  TCP d1 -> d2: {r['tcp_mbit_s']:.1f} Mbit/s ({r['tcp_bytes']} bytes in "
                  f"{r['tcp_seconds']:.2f} s; target >= {TARGETS['tcp_mbit_s']:g}: "
                  f"{'met' if r['targets']['tcp_mbit_s']['met'] else 'not met'})")
    console.print(f"  UDP d1 -> d2: {r['udp_pps']} packets/s received "
                  f"({r['udp_received']} of {r['udp_sent']} sent)")
    console.print(f"  notifications per packet: {r['notifications_per_packet']} "
                  f"({r['evtchn_sends']} event-channel sends, {r['vif_packets']} vif packets)")
