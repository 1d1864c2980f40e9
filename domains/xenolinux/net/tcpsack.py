"""The SACK sender's scoreboard (RFC 2018, RFC 6675) as a pure object.

Blocks are the peer's SACKed ranges above SND.UNA, kept merged and sorted, as absolute
sequence numbers. A hole (un-SACKed bytes below the highest SACKed byte) is lost once
more than `thresh` bytes above it are SACKed (RFC 6675 IsLost: more than (DupThresh-1)
SMSS; fewer with RFC 5827 early retransmit), or, after a timeout, every un-SACKed byte is.
Retransmissions are logged in the order sent; one still missing `reo_ns` after it left
while later ACKs arrive was lost again (RACK's idea, RFC 8985, with one timer per log).
"""

from collections import deque

from domains.xenolinux.net.tcpbuf import MOD, seq_diff

MAX_BLOCKS = 256  # Linux keeps per-skb state; this model keeps ranges, so it bounds them


class Scoreboard:
    def __init__(self) -> None:
        self.blocks: list[tuple[int, int]] = []  # offsets from `una`, merged, ascending
        self.una = 0
        self.sacked = 0
        self.high_rxt = 0  # offset: lost bytes below it were retransmitted (HighRxt)
        self.log: deque[tuple[int, int, int]] = deque()  # (seq, end, sent_ns) retransmits
        self.rxt_bytes = 0
        self.relost: list[tuple[int, int]] = []  # retransmissions lost again: send first
        self.all_lost = False  # after a timeout

    def __bool__(self) -> bool:
        return bool(self.blocks) or self.all_lost or bool(self.log)

    def reset(self, una: int) -> None:
        self.__init__()
        self.una = una

    def timed_out(self) -> None:
        """RTO: every un-SACKed byte is lost, no retransmission is in flight any more."""
        self.all_lost, self.high_rxt = True, 0
        self.log.clear()
        self.rxt_bytes, self.relost = 0, []

    def recovered(self) -> None:
        """Recovery is over (SND.UNA passed its recovery point)."""
        self.all_lost, self.high_rxt, self.relost = False, 0, []

    def advance(self, una: int) -> None:
        """SND.UNA moved: shift the offsets and forget what is now acknowledged."""
        d = seq_diff(una, self.una)
        if d <= 0:
            return
        self.una = una
        self.high_rxt = max(0, self.high_rxt - d)
        if self.blocks:
            out = [(max(a - d, 0), b - d) for a, b in self.blocks if b > d]
            self.blocks = out
            self.sacked = sum(b - a for a, b in out)

    def add(self, sacks, flight: int) -> bool:
        """Take an ACK's SACK blocks; True when one told something new."""
        new = False
        una = self.una
        for left, right in sacks:
            a, b = seq_diff(left, una), seq_diff(right, una)
            if a < 0:
                a = 0  # D-SACK or stale: only the part above SND.UNA counts
            if not a < b <= flight:
                continue
            new |= self._insert(a, b)
        return new

    def _insert(self, a: int, b: int) -> bool:
        if any(x <= a and b <= y for x, y in self.blocks) or len(self.blocks) >= MAX_BLOCKS:
            return False  # nothing new, or a peer SACKing crumbs to make every ACK costly
        out: list[tuple[int, int]] = []
        for x, y in sorted(self.blocks + [(a, b)]):
            if out and x <= out[-1][1]:
                if y > out[-1][1]:
                    out[-1] = (out[-1][0], y)
            else:
                out.append((x, y))
        self.blocks = out
        self.sacked = sum(y - x for x, y in out)
        return True

    def holes(self, flight: int) -> list[tuple[int, int]]:
        """Un-SACKed ranges below the highest SACK (below `flight` after a timeout)."""
        out, prev = [], 0
        for a, b in self.blocks:
            if a > prev:
                out.append((prev, a))
            prev = b
        if self.all_lost and prev < flight:
            out.append((prev, flight))
        return out

    def lost(self, flight: int, thresh: int) -> list[tuple[int, int]]:
        """The lost holes, ascending: SACKed bytes above each exceed `thresh`."""
        holes = self.holes(flight)
        if self.all_lost:
            return holes
        above, out, i = 0, [], len(self.blocks)
        for h in reversed(holes):  # each hole sits right below block i-1
            while i and self.blocks[i - 1][0] >= h[1]:
                i -= 1
                above += self.blocks[i][1] - self.blocks[i][0]
            if above >= thresh:
                out.append(h)
        out.reverse()
        return out

    def is_sacked(self, a: int, b: int) -> bool:
        return any(x <= a and b <= y for x, y in self.blocks)

    def pipe(self, flight: int, lost: list[tuple[int, int]]) -> int:
        """RFC 6675 pipe: bytes in flight, not SACKed, not lost, plus retransmissions."""
        return flight - self.sacked - sum(b - a for a, b in lost) + self.rxt_bytes

    def next_hole(self, lost: list[tuple[int, int]], mss: int) -> tuple[int, int] | None:
        """NextSeg rule 1: a retransmission lost again, else the first lost bytes above
        HighRxt, at most one MSS."""
        while self.relost:
            a, b = self.relost.pop(0)
            a, b = seq_diff(a, self.una), seq_diff(b, self.una)
            if b > 0 and not self.is_sacked(max(a, 0), b):
                return max(a, 0), b
        for a, b in lost:
            if b > self.high_rxt:
                a = max(a, self.high_rxt)
                return a, min(b, a + mss)
        return None

    def retransmitted(self, a: int, b: int, now: int) -> None:
        self.high_rxt = max(self.high_rxt, b)
        self.log.append(((self.una + a) % MOD, (self.una + b) % MOD, now))
        self.rxt_bytes += b - a

    def check_log(self, now: int, reo_ns: int) -> None:
        """Drop delivered retransmissions from the log; move late ones to `relost`."""
        log = self.log
        while log:
            seq, end, sent = log[0]
            a, b = seq_diff(seq, self.una), seq_diff(end, self.una)
            if b <= 0 or self.is_sacked(max(a, 0), b):
                pass
            elif sent + reo_ns <= now:
                self.relost.append((seq, end))
            else:
                return
            log.popleft()
            self.rxt_bytes -= seq_diff(end, seq)
