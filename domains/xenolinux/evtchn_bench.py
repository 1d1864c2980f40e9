"""A XenoLinux kernel for `xenolab bench evtchn`: event-channel ping-pong.

Roles, from the start_info cmdline (`role=echo` or `role=ping count=N`):
- echo: waits for `data/peer` (the ping's domid, written by Dom0), allocates
  an unbound port that only the peer may bind, publishes it in `data/port`,
  and from the upcall handler notifies back on every event.
- ping: waits for `data/peer` and `data/peer-port`, binds them, then runs
  WARMUP + N round trips from its upcall handler: notify, the echo's event
  arrives, record the time, notify again. It publishes `data/result` as
  compact JSON {"count", "p50", "p90", "p99", "max", "mean"} (ns) and idles.

Rules:
1. Everything runs in the kernel's event loop: the waits are xenstore
   watches (fired once on registration, so no initial read is needed), the
   round trips are event-channel handlers. Nothing spins.
2. One notification is in flight at a time, so sends never coalesce and
   every event the ping sees is the echo's answer to its last send.
3. `data/` is guest-owned: Dom0 writes the peer there, the guest its port
   and its result.
"""

import json
import math
import time

from domains.xenolinux.kernel import Guest, boot

WARMUP = 200
DEFAULT_COUNT = 10_000


def parse_cmdline(cmdline: str) -> dict[str, str]:
    """`key=value` words; words without '=' are ignored."""
    return dict(w.split("=", 1) for w in cmdline.split() if "=" in w)


def percentile(ordered: list[int], pct: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = math.ceil(len(ordered) * pct / 100)
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def summarize(samples: list[int]) -> dict[str, int]:
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
        "mean": sum(ordered) // len(ordered),
    }


class Echo:
    """Answers every event on its port with one notification back."""

    def __init__(self, g: Guest) -> None:
        self.g, self.port = g, 0
        g.xs.watch("data/peer", "bench-peer", lambda *_: self.on_peer())

    def on_peer(self) -> None:
        peer = self.g.xs.try_read("data/peer", "")
        if self.port or not peer:
            return
        ev = self.g.kernel.evtchn
        self.port = ev.alloc_unbound(int(peer))
        ev.on(self.port, ev.notify)
        self.g.xs.write("data/port", str(self.port))
        self.g.printk(f"evtchn-bench: echo for domain {peer} on port {self.port}")


class Ping:
    """Drives WARMUP + count round trips from its event handler."""

    def __init__(self, g: Guest, count: int) -> None:
        self.g, self.count, self.port = g, count, 0
        self.samples: list[int] = []
        self.sent_ns = 0
        g.xs.watch("data", "bench-data", lambda *_: self.on_peer())  # peer and peer-port

    def on_peer(self) -> None:
        xs = self.g.xs
        peer, remote = xs.try_read("data/peer", ""), xs.try_read("data/peer-port", "")
        if self.port or not peer or not remote:
            return
        ev = self.g.kernel.evtchn
        self.port = ev.bind_interdomain(int(peer), int(remote))
        ev.clear(self.port)  # a fresh interdomain port starts pending: not an answer
        ev.on(self.port, self.on_event)
        self.g.printk(
            f"evtchn-bench: ping to domain {peer} port {remote} via port {self.port}: "
            f"{WARMUP} + {self.count} round trips"
        )
        self.send()

    def send(self) -> None:
        self.sent_ns = time.monotonic_ns()
        self.g.kernel.evtchn.notify(self.port)

    def on_event(self, _port: int) -> None:
        if not self.sent_ns:
            return
        self.samples.append(time.monotonic_ns() - self.sent_ns)
        if len(self.samples) < WARMUP + self.count:
            self.send()
        else:
            self.sent_ns = 0
            self.g.kernel.call_soon(self.finish)

    def finish(self) -> None:
        result = summarize(self.samples[WARMUP:])
        self.g.xs.write("data/result", json.dumps(result, separators=(",", ":")))
        self.g.printk(f"evtchn-bench: {result}")


def main(kernel) -> None:
    g = boot(kernel)
    args = parse_cmdline(g.si.cmdline)
    role = args.get("role")
    if role == "echo":
        Echo(g)
    elif role == "ping":
        Ping(g, max(1, int(args.get("count", DEFAULT_COUNT))))
    else:
        g.printk(f"evtchn-bench: no role=echo|ping in cmdline {g.si.cmdline!r}; idle")
    kernel.run()
