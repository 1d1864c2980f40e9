"""TCP's sender-side estimators: the retransmission timer (RFC 6298) and congestion
control (RFC 5681 slow start / congestion avoidance, RFC 6582 NewReno recovery).

Model choices: RTO_MIN is Linux's 200 ms, not RFC 6298's 1 s; the clock granularity G is
1 ms; NewReno fast recovery does not inflate the window per duplicate ACK (a
simplification: the receiver keeps out-of-order data, so the partial-ACK retransmits fill
holes quickly). With SACK, tcp.py counts the pipe instead (RFC 6675).
"""

from domains.xenolinux.net.tcpbuf import seq_lt

MS = 1_000_000
RTO_INITIAL_NS = 1000 * MS
RTO_MIN_NS = 200 * MS
RTO_MAX_NS = 60_000 * MS
DUPACK_THRESHOLD = 3


class RtoEstimator:
    def __init__(self) -> None:
        self.srtt: int | None = None
        self.rttvar = 0
        self.rto = RTO_INITIAL_NS

    def sample(self, r: int) -> None:
        """One round-trip measurement in ns (never from a retransmitted segment: Karn)."""
        if self.srtt is None:
            self.srtt, self.rttvar = r, r // 2
        else:
            self.rttvar = (3 * self.rttvar + abs(self.srtt - r)) // 4
            self.srtt = (7 * self.srtt + r) // 8
        self.rto = min(max(self.srtt + max(MS, 4 * self.rttvar), RTO_MIN_NS), RTO_MAX_NS)

    def backoff(self) -> None:
        self.rto = min(self.rto * 2, RTO_MAX_NS)


class Reno:
    """cwnd and ssthresh in bytes; `recover` is set while in fast recovery, or in loss
    recovery (`in_loss`: after a timeout with SACK, the holes are resent in slow start)."""

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = 10 * mss  # RFC 6928 initial window
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.recover: int | None = None
        self.in_loss = False

    def on_ack(self, ack: int, acked: int) -> bool:
        """New data acknowledged; True when a partial ACK asks to resend the next hole."""
        self.dupacks = 0
        if self.recover is not None:
            if seq_lt(ack, self.recover):
                if self.in_loss and self.cwnd < self.ssthresh:
                    self.cwnd += min(acked, self.mss)
                return True
            self.recover = None
            if not self.in_loss:
                self.cwnd = self.ssthresh
            self.in_loss = False
        elif self.cwnd < self.ssthresh:
            self.cwnd += acked
        else:
            self.cwnd += max(1, self.mss * acked // self.cwnd)
        return False

    def on_dupack(self, flight: int, snd_max: int, thresh: int = DUPACK_THRESHOLD) -> bool:
        """A duplicate ACK; True on the one that triggers a fast retransmit (`thresh` is
        lower for RFC 5827 early retransmit)."""
        self.dupacks += 1
        if not thresh <= self.dupacks <= DUPACK_THRESHOLD or self.recover is not None:
            return False
        self.enter_recovery(flight, snd_max)
        return True

    def enter_recovery(self, flight: int, snd_max: int) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd, self.recover, self.in_loss = self.ssthresh, snd_max, False

    def on_timeout(self, flight: int, snd_max: int | None = None) -> None:
        """RTO: cwnd to 1 MSS; with SACK (`snd_max` given) loss recovery up to snd_max."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd, self.recover, self.dupacks = self.mss, snd_max, 0
        self.in_loss = snd_max is not None
