"""TCP's byte buffers. Sequence numbers are mod 2**32; helpers compare them (RFC 793 3.3).

SendBuffer holds bytes from SND.UNA on (sent but unacknowledged, then unsent).
RecvBuffer holds in-order bytes not yet read, plus out-of-order segments keyed by seq,
delivered as soon as the gap before them fills; duplicates are trimmed away.
bytearray deletes at the front in O(1) (CPython moves ob_start), so draining is cheap.
"""

MOD = 1 << 32


def seq_lt(a: int, b: int) -> bool:
    return 0 < (b - a) % MOD < 0x80000000


def seq_le(a: int, b: int) -> bool:
    return a == b or seq_lt(a, b)


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed distance."""
    d = (a - b) % MOD
    return d - MOD if d >= 0x80000000 else d


class SendBuffer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data = bytearray()

    def __len__(self) -> int:
        return len(self.data)

    def space(self) -> int:
        return self.capacity - len(self.data)

    def write(self, data: bytes) -> int:
        n = min(len(data), self.space())
        self.data += data[:n] if n < len(data) else data
        return n

    def peek(self, offset: int, n: int) -> bytes:
        return bytes(self.data[offset : offset + n])

    def drop(self, n: int) -> None:
        del self.data[:n]


class RecvBuffer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data = bytearray()
        self.ooo: dict[int, bytes] = {}  # seq -> bytes beyond RCV.NXT
        self.ooo_bytes = 0
        self.last_ooo = 0  # seq of the latest out-of-order segment (SACK's first block)

    def __len__(self) -> int:
        return len(self.data)

    def window(self) -> int:
        """Free space: what the receiver may advertise (out-of-order data rides in it)."""
        return max(0, self.capacity - len(self.data))

    def read(self, n: int) -> bytes:
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    def insert(self, rcv_nxt: int, seq: int, data: bytes) -> int:
        """Take a segment already trimmed to the window (seq >= rcv_nxt); returns the new
        RCV.NXT after appending whatever became contiguous."""
        if seq != rcv_nxt:
            self.last_ooo = seq
            old = self.ooo.get(seq)
            if old is None or len(old) < len(data):
                self.ooo_bytes += len(data) - (len(old) if old else 0)
                self.ooo[seq] = data
            return rcv_nxt
        self.data += data
        rcv_nxt = (rcv_nxt + len(data)) % MOD
        while self.ooo:
            rcv_nxt, progressed = self._pull(rcv_nxt)
            if not progressed:
                break
        return rcv_nxt

    def _pull(self, rcv_nxt: int) -> tuple[int, bool]:
        progressed = False
        for seq in list(self.ooo):
            if seq_lt(rcv_nxt, seq):
                continue
            data = self.ooo.pop(seq)
            self.ooo_bytes -= len(data)
            skip = seq_diff(rcv_nxt, seq)
            if skip < len(data):
                self.data += data[skip:]
                rcv_nxt = (rcv_nxt + len(data) - skip) % MOD
                progressed = True
        return rcv_nxt, progressed

    def sack_blocks(self, rcv_nxt: int, limit: int) -> list[tuple[int, int]]:
        """RFC 2018 blocks for the out-of-order queue: merged ranges, the one holding the
        latest segment first, then the others from the highest down (the most recent)."""
        spans = sorted((seq_diff(s, rcv_nxt), len(d)) for s, d in self.ooo.items())
        merged: list[list[int]] = []
        for off, n in spans:
            if merged and off <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], off + n)
            else:
                merged.append([off, off + n])
        last = seq_diff(self.last_ooo, rcv_nxt)
        first = [b for b in merged if b[0] <= last < b[1]]
        rest = [b for b in reversed(merged) if not b[0] <= last < b[1]]
        return [((rcv_nxt + a) % MOD, (rcv_nxt + b) % MOD) for a, b in (first + rest)[:limit]]
