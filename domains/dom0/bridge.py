"""Dom0's software bridge: a learning Ethernet switch whose ports are vifs and NICs.

Rules (contract section 3; Linux's ``br_forward``/``br_fdb``):

1. A frame that comes in on a port teaches the bridge that its source MAC
   lives behind that port (not for multicast sources). Entries age out
   after ``AGEING_TIME_S`` without traffic (Linux's default 300 s).
2. A unicast frame to a learnt MAC goes to that port only; any other frame
   (broadcast, multicast, unknown unicast) floods to every port. A frame
   never goes back out of the port it came in on.
3. A GSO frame (``gso_size`` > 0: one TCPv4 super-frame standing for
   several segments) goes whole to ports with ``gso`` True and is cut with
   ``domains.kernel.gso.segment`` for the others, like Linux's
   ``validate_xmit_skb`` before a device without TSO.
4. The bridge owns no I/O: ports queue what ``deliver`` hands them, and
   the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hypervisor.public import trace as T

AGEING_TIME_S = 300.0
MAX_FDB = 4096  # a guest spoofing source MACs cannot grow the table without bound
_segment: Callable[[bytes, int], list[bytes]] | None = None


class BridgePort(Protocol):
    name: str  # "vif1.0", "eth0" (the physical NIC's driver), ...
    gso: bool  # the port can take TSO frames whole

    def deliver(self, frame: bytes, gso_size: int) -> None: ...


@dataclass(frozen=True, slots=True)
class BridgeStatistics:
    ports: tuple[str, ...]
    macs: int
    forwarded: int
    flooded: int
    segmented: int  # GSO frames cut for a port without gso


def segment(frame: bytes, gso_size: int) -> list[bytes]:
    """domains.kernel.gso.segment, imported on first use."""
    global _segment
    if _segment is None:
        from domains.kernel.gso import segment as seg

        _segment = seg
    return _segment(frame, gso_size)


class Bridge:
    """A learning switch such as ``xenbr0``."""

    def __init__(self, name: str, now: Callable[[], float] = time.monotonic) -> None:
        self.name, self.now = name, now
        self.ports: list = []
        self.fdb: dict[bytes, tuple[object, float]] = {}  # MAC -> (port, last seen)
        self._n = {"forwarded": 0, "flooded": 0, "segmented": 0}

    def add_port(self, port) -> None:
        if port not in self.ports:
            self.ports.append(port)

    def remove_port(self, port) -> None:
        """Detach ``port`` and forget every MAC learnt on it."""
        if port in self.ports:
            self.ports.remove(port)
        self.fdb = {mac: e for mac, e in self.fdb.items() if e[0] is not port}

    def input(self, port, frame: bytes, gso_size: int = 0) -> None:
        """A frame arrived on ``port``: learn, then forward or flood."""
        if len(frame) < 14:
            return
        now = self.now()
        src, dst = frame[6:12], frame[0:6]
        if not src[0] & 1:
            self._learn(src, port, now)
        entry = None if dst[0] & 1 else self.fdb.get(dst)
        if entry is not None and now - entry[1] > AGEING_TIME_S:
            del self.fdb[dst]
            entry = None
        if entry is not None:
            out = entry[0]
            if out is not port:
                self._n["forwarded"] += 1
                if T.on:
                    T.stamp(T.BRIDGE_FORWARD, 0, len(frame), 0,
                            f"{self.name} forwards {port.name}>{out.name}")
                self._send(out, frame, gso_size)
            return
        self._n["flooded"] += 1
        if T.on:
            T.stamp(T.BRIDGE_FORWARD, 0, len(frame), 0, f"{self.name} floods from {port.name}")
        for out in list(self.ports):
            if out is not port:
                self._send(out, frame, gso_size)

    def _learn(self, src: bytes, port, now: float) -> None:
        if src not in self.fdb and len(self.fdb) >= MAX_FDB and not self.age():
            return  # full of live entries: flood to this MAC instead
        self.fdb[src] = (port, now)

    def _send(self, port, frame: bytes, gso_size: int) -> None:
        if gso_size and not port.gso:
            self._n["segmented"] += 1
            for seg in segment(frame, gso_size):
                port.deliver(seg, 0)
            return
        port.deliver(frame, gso_size)

    def age(self) -> int:
        """Drop entries older than the ageing time; returns how many went."""
        now = self.now()
        old = [mac for mac, (_p, seen) in self.fdb.items() if now - seen > AGEING_TIME_S]
        for mac in old:
            del self.fdb[mac]
        return len(old)

    def port_of(self, mac: bytes):
        """The port ``mac`` was learnt on (None when unknown or aged out)."""
        entry = self.fdb.get(mac)
        if entry is None or self.now() - entry[1] > AGEING_TIME_S:
            return None
        return entry[0]

    def statistics(self) -> BridgeStatistics:
        return BridgeStatistics(tuple(p.name for p in self.ports), len(self.fdb),
                                **self._n)
