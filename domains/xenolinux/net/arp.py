"""ARP (RFC 826) for Ethernet/IPv4, and a neighbour table per interface.

Rules:
1. Entries expire after REACHABLE_NS (model choice: 60 s; Linux revalidates after ~30 s).
2. A packet to an unresolved address waits in the table (at most MAX_QUEUE per address);
   a request goes out at once and every RETRY_NS after, MAX_REQUESTS in all; then the
   waiting packets are dropped and their owners told (the stack reports EHOSTUNREACH).
3. Any ARP packet for one of our addresses teaches us its sender (RFC 826's merge).
"""

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

ARPOP_REQUEST, ARPOP_REPLY = 1, 2
REACHABLE_NS = 60_000_000_000
RETRY_NS = 1_000_000_000
MAX_REQUESTS = 3
MAX_QUEUE = 64
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # 28 bytes


class ArpPacket(NamedTuple):
    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes


def build(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return _ARP.pack(1, 0x0800, 6, 4, op, sha, spa, tha, tpa)


def parse(data: bytes) -> ArpPacket | None:
    if len(data) < _ARP.size:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4) or op not in (1, 2):
        return None
    return ArpPacket(op, sha, spa, tha, tpa)


@dataclass
class _Pending:
    queue: list = field(default_factory=list)  # (ip packet, owner)
    requests: int = 0
    next_ns: int = 0


class ArpTable:
    def __init__(self) -> None:
        self.entries: dict[bytes, tuple[bytes, int]] = {}  # ip -> (mac, expires_ns)
        self.pending: dict[bytes, _Pending] = {}

    def lookup(self, ip: bytes, now: int) -> bytes | None:
        e = self.entries.get(ip)
        if e is None:
            return None
        if e[1] <= now:
            del self.entries[ip]
            return None
        return e[0]

    def learn(self, ip: bytes, mac: bytes, now: int) -> list:
        """Record ip -> mac; returns the packets that were waiting for it."""
        self.entries[ip] = (mac, now + REACHABLE_NS)
        p = self.pending.pop(ip, None)
        return p.queue if p else []

    def enqueue(self, ip: bytes, packet, owner, now: int) -> bool:
        """Park a packet until ip resolves; True when a request must go out now."""
        p = self.pending.get(ip)
        new = p is None
        if new:
            p = self.pending[ip] = _Pending(requests=1, next_ns=now + RETRY_NS)
        if len(p.queue) < MAX_QUEUE:
            p.queue.append((packet, owner))
        return new

    def deadline(self) -> int | None:
        return min((p.next_ns for p in self.pending.values()), default=None)

    def expire(self, now: int) -> tuple[list[bytes], list]:
        """(addresses to ask again, owners of packets dropped because nobody answered)."""
        again, failed = [], []
        for ip, p in list(self.pending.items()):
            if p.next_ns > now:
                continue
            if p.requests >= MAX_REQUESTS:
                del self.pending[ip]
                failed.extend(owner for _pkt, owner in p.queue if owner is not None)
            else:
                p.requests += 1
                p.next_ns = now + RETRY_NS
                again.append(ip)
        return again, failed
