"""Two guest stacks wired back to back through an in-memory Ethernet link.

FakeNetDevice follows the NetDevice contract (domains/xenolinux/netdev.py); the Link moves
frames between two of them with an injected clock, and can drop, duplicate and reorder
frames with a seeded rng. Tests drive everything with `Pair.run_until(cond)`: deliver
frames, else jump the clock to the next timer; no sleeping, no threads.
With `delay_ns` (one-way latency) and `rate_bps` (serialisation) the link is a timed path:
frames arrive in order of their arrival time, a reordered frame is held back by up to
`reorder_ns` more, and the clock jumps to the next arrival or timer.
"""

import heapq
import random

from domains.kernel import gso
from domains.xenolinux.net import NetStack


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000_000

    def __call__(self) -> int:
        return self.t


class FakeNetDevice:
    def __init__(self, name: str, mac: bytes, link: "Link", gso_ok: bool = True) -> None:
        self.name, self.mac, self.mtu, self.gso = name, mac, 1500, gso_ok
        self.receiver = None
        self.link = link
        self.sent: list[tuple[bytes, int]] = []  # every frame, for inspection

    def transmit(self, frames: list[tuple[bytes, int]]) -> None:
        self.sent.extend(frames)
        self.link.carry(self, frames)


class Link:
    """A wire between two devices; `loss`, `dup` and `reorder` are per-frame probabilities."""

    def __init__(
        self,
        rng: random.Random | None = None,
        loss=0.0,
        dup=0.0,
        reorder=0.0,
        cut_gso=False,
        delay_ns=0,
        rate_bps=0,
        reorder_ns=2_000_000,
        clock=None,
    ) -> None:
        self.rng = rng or random.Random(1)
        self.loss, self.dup, self.reorder, self.cut_gso = loss, dup, reorder, cut_gso
        self.delay_ns, self.rate_bps, self.reorder_ns = delay_ns, rate_bps, reorder_ns
        self.clock = clock
        self.timed_n = 0
        self.timed: list[tuple[int, int, FakeNetDevice, bytes, int]] = []  # heap by arrival
        self.busy_until: dict[int, int] = {}  # per direction: when the wire is free
        self.ends: list[FakeNetDevice] = []
        self.queue: list[tuple[FakeNetDevice, bytes, int]] = []
        self.down = False
        self.dropped = self.duplicated = 0
        self.carried = 0  # frames offered so far
        self.drop_frames: set[int] = set()  # indices (in self.carried) to drop

    def carry(self, src: FakeNetDevice, frames) -> None:
        dst = next(d for d in self.ends if d is not src)
        for frame, gso_size in frames:
            pieces = gso.segment(frame, gso_size) if self.cut_gso else [frame]
            for p in pieces:
                self._one(dst, p, 0 if self.cut_gso else gso_size)

    def _one(self, dst, frame, gso_size) -> None:
        self.carried += 1
        if self.down or self.carried - 1 in self.drop_frames or self.rng.random() < self.loss:
            self.dropped += 1
            return
        n = 2 if self.rng.random() < self.dup else 1
        self.duplicated += n - 1
        if self.clock is not None:
            return self._timed(dst, frame, gso_size, n)
        for _ in range(n):
            if self.queue and self.rng.random() < self.reorder:
                self.queue.insert(self.rng.randrange(len(self.queue)), (dst, frame, gso_size))
            else:
                self.queue.append((dst, frame, gso_size))

    def _timed(self, dst, frame, gso_size, n) -> None:
        now = self.clock()
        start = max(now, self.busy_until.get(id(dst), 0))
        done = start + (len(frame) * 8 * 1_000_000_000 // self.rate_bps if self.rate_bps else 0)
        self.busy_until[id(dst)] = done
        for _ in range(n):
            at = done + self.delay_ns
            if self.rng.random() < self.reorder:
                at += self.rng.randrange(1, self.reorder_ns)
            self.timed_n += 1
            heapq.heappush(self.timed, (at, self.timed_n, dst, frame, gso_size))

    def due(self, now: int) -> list[tuple["FakeNetDevice", bytes, int]]:
        out = []
        while self.timed and self.timed[0][0] <= now:
            _at, _n, dst, frame, gso_size = heapq.heappop(self.timed)
            out.append((dst, frame, gso_size))
        return out


class Pair:
    """Stacks a (10.0.0.11) and b (10.0.0.12) on 10.0.0.0/24, each with lo too."""

    def __init__(self, seed: int = 1, gso_ok: bool = True, **link_kw) -> None:
        self.clock = Clock()
        timed = link_kw.get("delay_ns") or link_kw.get("rate_bps")
        self.link = Link(random.Random(seed), clock=self.clock if timed else None, **link_kw)
        self.a = NetStack(self.clock, random.Random(seed + 1))
        self.b = NetStack(self.clock, random.Random(seed + 2))
        self.deva = FakeNetDevice("eth0", b"\x00\x16\x3e\x00\x00\x0b", self.link, gso_ok)
        self.devb = FakeNetDevice("eth0", b"\x00\x16\x3e\x00\x00\x0c", self.link, gso_ok)
        self.link.ends = [self.deva, self.devb]
        for st, dev, ip in ((self.a, self.deva, "10.0.0.11"), (self.b, self.devb, "10.0.0.12")):
            st.add_interface("lo", None, "127.0.0.1", 8)
            st.add_interface("eth0", dev, ip, 24)
            st.set_default_route("10.0.0.1")

    def flush(self) -> None:
        self.a.flush()
        self.b.flush()

    def step(self) -> bool:
        """Deliver one batch of frames, else fire the next timer; False when idle."""
        busy = any(st._dirty or st._lo for st in (self.a, self.b))  # the application's
        self.flush()
        if busy:
            return True
        if self.link.clock is not None:
            batch = self.link.due(self.clock.t)
        else:
            batch, self.link.queue = self.link.queue, []
        if batch:
            for dev, frame, gso_size in batch:
                dev.receiver(frame, gso_size)
            self.flush()
            return True
        ds = [d for d in (self.a.next_deadline_ns(), self.b.next_deadline_ns()) if d is not None]
        if self.link.timed:
            ds.append(self.link.timed[0][0])
        if not ds:
            return False
        self.clock.t = max(self.clock.t, min(ds))
        self.a.on_timer()
        self.b.on_timer()
        self.flush()
        return True

    def run_until(self, cond, max_steps: int = 100_000) -> None:
        """Step until cond() (which may itself feed the stacks, like an application);
        fails after max_steps or when three steps in a row find nothing to do."""
        idle = 0
        for _ in range(max_steps):
            if cond():
                return
            idle = 0 if self.step() else idle + 1
            if idle == 3:
                break
        assert cond(), "condition not reached"


def tcp_transfer(p: "Pair", size: int, max_steps: int):
    """a connects to b:80 and sends `size` random bytes, which must arrive
    whole and in order; returns a's socket (its TCB has the counters)."""
    import os

    from domains.xenolinux.net import SOCK_STREAM
    chunk = 1 << 20
    srv = p.b.socket(SOCK_STREAM)
    srv.bind(("0.0.0.0", 80))
    srv.listen(1)
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 80))
    p.run_until(srv.readable)
    s = srv.accept()
    data = os.urandom(size)
    sent, got = 0, bytearray()

    def done() -> bool:
        nonlocal sent
        if sent < len(data):
            sent += c.send(data[sent : sent + chunk])
        while r := s.recv(chunk):
            got.extend(r)
        return len(got) == len(data)

    p.run_until(done, max_steps)
    assert got == data
    return c
