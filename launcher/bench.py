"""`xenolab bench evtchn`: the event-channel round trip between two DomUs,
beside a raw ZeroMQ round trip measured in the same run.

What is measured:
- rtt: guest evb-ping notifies evb-echo, whose upcall handler notifies back
  (ping -> Xen -> echo -> Xen -> ping: 4 ZeroMQ hops). The ping guest times
  each round trip itself and publishes its summary in xenstore.
- baseline: a DEALER in this process and a ROUTER echo in a plain child
  process (2 hops), sending a frame the size of the EVTCHNOP_send hypercall,
  as many times.
- floor: the same frame through a plain relay process and back by a plain
  peer (launcher.zmq_peers): the 4 hops of the event channel's path with
  nothing done on them, so rtt / floor is the model's own cost.
The ratio of the p50s is reported against a target; it is never enforced.

Rules:
1. A host named by --host or $XENOLAB_HOST that is running is used as it
   is; otherwise a private host (no DomUs of its own) is booted and always
   torn down.
2. The bench domains are always destroyed, whatever fails.
3. Progress goes to stderr, so `--json` leaves one JSON object on stdout.
"""

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq
from rich.console import Console
from rich.table import Table

from domains.xenolinux.evtchn_bench import WARMUP, summarize
from hypervisor.public import envelope
from hypervisor.public.event_channel import EvtchnOp
from hypervisor.public.xen import Hypercall
from launcher import rundir, zmq_peers
from launcher.client import ToolstackClient
from launcher.host import Host
from launcher.hostspec import DomainSpec, default_host
from launcher.rundir import HostError

KERNEL = "domains.xenolinux.evtchn_bench"
ECHO, PING = "evb-echo", "evb-ping"
HOPS = 4
TARGET_RATIO_P50 = 2.5
WAIT_CHUNK_MS = 20_000  # the toolstack caps one long-poll at 30 s
Xl = Callable[..., Any]


def say(msg: str) -> None:
    print(f"*** {msg}", file=sys.stderr, flush=True)


def run_bench(args, host: str) -> int:
    if args.bench == "blk":
        from launcher.bench_blk import run_blk  # it imports this module
        return run_blk(args, host)
    if args.bench != "evtchn":
        raise HostError(f"unknown benchmark {args.bench!r}")
    if args.count < 1:
        raise HostError("--count must be at least 1")
    named = getattr(args, "host", None) or os.environ.get("XENOLAB_HOST")
    if named and rundir.running(host):
        say(f"Using running host '{host}'")
        with ToolstackClient(host) as client:
            result = bench_evtchn(client.call, args.count)
    else:
        if named:
            say(f"No running host '{host}': booting a private one")
        spec = default_host().with_domains()
        with Host(spec, f"bench-{os.getpid()}", progress=say) as h:
            result = bench_evtchn(h.xl, args.count)
            host = h.name
    result["host"] = host
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


def bench_evtchn(xl: Xl, count: int) -> dict[str, Any]:
    """Both measurements, as the --json object."""
    rtt = measure_evtchn(xl, count)
    say(f"Raw ZeroMQ round trip between two processes: {WARMUP} + {count}")
    base = measure_zmq(count)
    say(f"Floor: the same {HOPS} hops through a plain relay process: {WARMUP} + {count}")
    floor = measure_chain(count)
    return {
        "bench": "evtchn",
        "count": rtt["count"],
        "baseline_count": base["count"],
        "hops": HOPS,
        "rtt_ns": rtt,
        "baseline_zmq_rtt_ns": base,
        "ratio_p50": round(rtt["p50"] / base["p50"], 3),
        "ratio_p99": round(rtt["p99"] / base["p99"], 3),
        "target_ratio_p50": TARGET_RATIO_P50,
        "floor_chain_rtt_ns": floor,
        "floor_ratio_p50": round(floor["p50"] / base["p50"], 3),
        "ratio_p50_to_floor": round(rtt["p50"] / floor["p50"], 3),
    }


# ---- the event-channel round trip ------------------------------------------------


def measure_evtchn(xl: Xl, count: int) -> dict[str, int]:
    taken = {d["name"] for d in xl("list")} & {ECHO, PING}
    if taken:
        raise HostError(
            f"domain {sorted(taken)[0]} already exists (another bench running? "
            f"'xenolab xl destroy' it)"
        )
    domids: list[int] = []
    try:
        for name, cmdline in ((ECHO, "role=echo"), (PING, f"role=ping count={count}")):
            spec = DomainSpec(name, memory_mib=32, kernel=KERNEL, cmdline=cmdline)
            domids.append(xl("create", spec=spec.to_wire(), timeout_s=30))
        say(f"Created {ECHO} (id {domids[0]}) and {PING} (id {domids[1]}); waiting for boot")
        if not xl("wait_booted", doms=[ECHO, PING], timeout_ms=20_000, timeout_s=25):
            raise HostError(f"{ECHO} and {PING} did not boot in 20 s")
        return _ping_pong(xl, *domids, count)
    finally:
        for domid in domids:
            try:
                xl("destroy", dom=domid)
            except HostError as exc:
                say(f"destroying domain {domid}: {exc}")


def _ping_pong(xl: Xl, echo: int, ping: int, count: int) -> dict[str, int]:
    def data(domid: int, key: str) -> str:
        return f"/local/domain/{domid}/data/{key}"

    xl("xs_write", path=data(echo, "peer"), value=str(ping))
    port = xl("xs_wait", path=data(echo, "port"), timeout_ms=10_000, timeout_s=15)
    xl("xs_write", path=data(ping, "peer"), value=str(echo))
    say(f"{PING} binds port {port} of {ECHO}: {WARMUP} + {count} round trips")
    xl("xs_write", path=data(ping, "peer-port"), value=port)
    raw = _wait_long(xl, data(ping, "result"), budget_s=30 + count / 500)
    try:
        return json.loads(raw)
    except ValueError:
        raise HostError(f"{PING} wrote a bad result: {raw[:80]!r}") from None


def _wait_long(xl: Xl, path: str, budget_s: float) -> str:
    """xs_wait beyond one long-poll's cap."""
    deadline = time.monotonic() + budget_s
    while True:
        try:
            return xl(
                "xs_wait", path=path, timeout_ms=WAIT_CHUNK_MS, timeout_s=WAIT_CHUNK_MS / 1000 + 5
            )
        except HostError as exc:
            if time.monotonic() > deadline:
                raise HostError(f"no {path} after {budget_s:.0f} s: {exc}") from None


# ---- the baseline: a raw ZeroMQ round trip -----------------------------------------


def measure_zmq(count: int) -> dict[str, int]:
    """Round trips to a plain echo process (launcher.zmq_peers), same payload."""
    return _plain_round_trips(count, "echo", [["echo", str(WARMUP + count)]])


def measure_chain(count: int) -> dict[str, int]:
    """Round trips through launcher.zmq_peers: this process -> relay -> peer ->
    relay -> here, the event channel's four hops with no Xen work on them."""
    return _plain_round_trips(count, "relay chain", [["relay"], ["peer"]], zmq_peers.FRONT,
                              stop=True)


def _plain_round_trips(count: int, what: str, roles: list[list[str]],
                       routing_id: bytes | None = None, stop: bool = False) -> dict[str, int]:
    """Start the zmq_peers processes (the first one binds and says "ready"),
    time WARMUP + count round trips of an EVTCHNOP_send-sized frame, send
    QUIT if `stop` (an echo exits by itself), and make sure every child is gone."""
    tag = "-".join(role[0] for role in roles)
    endpoint = f"ipc://@xenolab-bench-{tag}-{os.getpid()}"
    payload = envelope.encode_request(1, Hypercall.event_channel_op, EvtchnOp.send, {"port": 1})
    argv = [sys.executable, "-m", "launcher.zmq_peers"]
    children = [subprocess.Popen([*argv, role[0], endpoint, *role[1:]], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE if i == 0 else None)
                for i, role in enumerate(roles)]
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    first = children[0]
    try:
        if not select.select([first.stdout], [], [], 10)[0] or not first.stdout.readline():
            raise HostError(f"the ZeroMQ {what} did not start (exit {first.poll()})")
        sock.connect(endpoint)
        samples = _round_trips(sock, payload, WARMUP + count)
        if stop:
            sock.send(zmq_peers.QUIT)  # the relay passes it on to the peer
    except zmq.Again:
        raise HostError(f"the ZeroMQ {what} stopped answering") from None
    finally:
        for child in children:  # the socket stays open while QUIT travels
            _reap(child)
        sock.close(0)
        ctx.term()
        first.stdout.close()
    return histogram_summary(samples[WARMUP:])


def _reap(child: subprocess.Popen) -> None:
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _round_trips(sock: zmq.Socket, payload: bytes, n: int) -> list[int]:
    samples = []
    clock = time.monotonic_ns
    for _ in range(n):
        t0 = clock()
        sock.send(payload)
        sock.recv()
        samples.append(clock() - t0)
    return samples


def histogram_summary(samples: list[int]) -> dict[str, int]:
    """The guest's summary fields, from an HDR histogram when hdrh is there."""
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        return summarize(samples)
    h = HdrHistogram(1, 60 * 10**9, 3)
    for v in samples:
        h.record_value(max(v, 1))
    return {
        "count": len(samples),
        "p50": h.get_value_at_percentile(50),
        "p90": h.get_value_at_percentile(90),
        "p99": h.get_value_at_percentile(99),
        "max": h.get_max_value(),
        "mean": int(h.get_mean_value()),
    }


# ---- report --------------------------------------------------------------------


def report(r: dict[str, Any]) -> None:
    table = Table(title=f"Event-channel round trip on host '{r['host']}' (µs)")
    table.add_column("round trip")
    table.add_column("count", justify="right")
    for key in ("p50", "p90", "p99", "max", "mean"):
        table.add_column(key, justify="right")
    for label, s in (
        (f"evtchn, {r['hops']} hops", r["rtt_ns"]),
        ("raw ZeroMQ, 2 hops", r["baseline_zmq_rtt_ns"]),
        (f"ZeroMQ relay chain, {r['hops']} hops (floor)", r["floor_chain_rtt_ns"]),
    ):
        table.add_row(
            label,
            str(s["count"]),
            *(f"{s[k] / 1000:.1f}" for k in ("p50", "p90", "p99", "max", "mean")),
        )
    console = Console()
    console.print(table)
    met = "met" if r["ratio_p50"] <= r["target_ratio_p50"] else "not met"
    console.print(
        f"ratio p50 {r['ratio_p50']:.2f}x, p99 {r['ratio_p99']:.2f}x "
        f"(target p50 ≤ {r['target_ratio_p50']}x: {met}); the {r['hops']}-hop floor alone is "
        f"{r['floor_ratio_p50']:.2f}x, the event channel {r['ratio_p50_to_floor']:.2f}x the floor"
    )
