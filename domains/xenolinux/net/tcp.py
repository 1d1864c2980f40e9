"""One TCP connection: the state machine of RFC 9293 (793) as a sans-IO object.

Rules:
1. Input comes as parsed segments (`input`), time as `now` arguments and `io.now()`; output
   goes through `io.tcp_xmit` (which only queues). Input does not send by itself: the tcb
   marks itself dirty (`io.tcp_dirty`) and the stack calls `output()` once per flush, so a
   batch of received frames gets one ACK and data written by the application leaves in big
   segments. Exceptions: RSTs, and a duplicate ACK per out-of-order segment.
2. Sender: sends what min(peer window, cwnd - pipe) allows, in segments of up to `seg_max`
   bytes (one MSS, or up to 64 KiB when the interface does TSO: the NIC or backend cuts
   them); retransmissions are one MSS at most. Retransmission timer and congestion window:
   tcpcc.py (RFC 6298 with Karn's rule and backoff). Loss recovery with SACK (RFC 2018,
   negotiated on the SYN): the scoreboard of tcpsack.py, RFC 6675 recovery (every lost
   hole resent while pipe < cwnd), lost retransmissions resent after an SRTT and a quarter
   (RACK's idea), RFC 5827 early retransmit, a tail loss probe (RFC 8985 7) two SRTTs
   after the last ACK; on timeout the un-SACKed bytes are resent in slow start (Linux's
   loss state). Without SACK: NewReno (fast retransmit on the third duplicate ACK,
   partial ACKs), RFC 3042 limited transmit, early retransmit, go-back-N on timeout.
   A zero window is probed every RTO with an old-sequence ACK (tcp_xmit_probe_skb).
3. Receiver: window = free receive buffer (scaled, RFC 7323, when both sides offer it);
   out-of-order segments are kept and delivered in order; ACK at once for out-of-order,
   gap-filling, PSH or FIN segments and every 2 MSS, otherwise after DELACK_NS. With SACK,
   data-less segments carry up to 4 blocks (the latest first); data segments carry none
   (a full one has no room for them).
4. Model choices: TIME_WAIT lasts TIME_WAIT_NS (1 s, not 2 MSL) so tests and restarts are
   quick; an orphaned FIN_WAIT_2 gives up after FIN_WAIT2_NS; no urgent data, no D-SACK,
   no timestamps, no PRR (RFC 6937); closing with unread data resets the connection (as Linux does).
"""

import errno
from typing import Protocol

from domains.xenolinux.net.tcpbuf import MOD, RecvBuffer, SendBuffer, seq_diff, seq_le, seq_lt
from domains.xenolinux.net.tcpcc import DUPACK_THRESHOLD, MS, Reno, RtoEstimator
from domains.xenolinux.net.tcpsack import Scoreboard
from domains.xenolinux.net.tcpseg import (
    ACK,
    FIN,
    MAX_SACK_BLOCKS,
    PSH,
    RST,
    SYN,
    Segment,
    sack_option,
    syn_options,
)

CLOSED, LISTEN, SYN_SENT, SYN_RCVD = "CLOSED", "LISTEN", "SYN_SENT", "SYN_RCVD"
ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2 = "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2"
CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT = "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT"
SYNCED_RECV = (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2)  # states that accept data
CAN_SEND = (ESTABLISHED, CLOSE_WAIT)
PROBE_STATES = (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, LAST_ACK)

DELACK_NS = 40 * MS
TIME_WAIT_NS = 1000 * MS
FIN_WAIT2_NS = 10_000 * MS
SYN_RETRIES = 5
DATA_RETRIES = 10
DEFAULT_MSS = 536  # RFC 9293 3.7.1: when the peer sends no MSS option
MAX_GSO_PAYLOAD = 65535 - 20 - 20  # IP total length limit


class TcpIo(Protocol):
    def now(self) -> int: ...
    def tcp_xmit(
        self, tcb: "Tcb", seq: int, ack: int, flags: int, wnd: int, opts: bytes, data: bytes
    ) -> None: ...
    def tcp_dirty(self, tcb: "Tcb") -> None: ...
    def tcp_closed(self, tcb: "Tcb") -> None: ...


def wscale_for(capacity: int) -> int:
    """Smallest shift that lets `capacity` fit the 16-bit window field."""
    return max(0, (capacity - 1).bit_length() - 16)


class Tcb:
    def __init__(
        self,
        io: TcpIo,
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        mss: int,
        gso: bool,
        iss: int,
        bufsize: int,
    ) -> None:
        self.io = io
        self.local, self.remote = local, remote
        self.state = CLOSED
        self.sock = None  # the Sock to notify; None once the application closed it
        self.parent = None  # listening Sock, until this passive connection is accepted
        self.error = 0
        self.our_mss, self.mss, self.gso = mss, mss, gso
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.snd_wnd, self.snd_wl1, self.snd_wl2 = 0, 0, 0
        self.snd_wscale, self.rcv_wscale = 0, wscale_for(bufsize)
        self.offer_wscale = True
        self.offer_sack = True
        self.sack = False  # both sides said SACK-permitted
        self.sb = Scoreboard()
        self.irs = self.rcv_nxt = self.rcv_adv = 0
        self.sndbuf, self.rcvbuf = SendBuffer(bufsize), RecvBuffer(bufsize)
        self.fin_seq: int | None = None  # our FIN's sequence number, once closing
        self.peer_fin: int | None = None  # the peer's FIN's sequence number, once seen
        self.eof = False
        self.rtt = RtoEstimator()
        self.rtt_seq: int | None = None
        self.rtt_ts = 0
        self.rtt_cum_ok = True
        self.rxt_first = False
        self.pipe_adj = 0  # bytes between SND.UNA and SND.NXT not in the pipe (SACK)
        self.retries = 0
        self.fast_retransmits = self.timeouts = 0  # statistics
        self.cc = Reno(mss)
        self.ack_now = False
        self.io_sent = 0  # segments emitted (to tell whether output sent anything)
        self.unacked = 0  # bytes received since our last ACK
        self.rto_at: int | None = None
        self.delack_at: int | None = None
        self.persist_at: int | None = None
        self.probe_at: int | None = None  # tail loss probe (RFC 8985 7)
        self.probing = False  # a probe is out: no other until an ACK comes
        self.probes = 0  # statistics
        self.close_at: int | None = None  # TIME_WAIT / orphaned FIN_WAIT_2 expiry

    # ---- opening -------------------------------------------------------------------
    def open_active(self) -> None:
        self.state = SYN_SENT
        self.io.tcp_dirty(self)

    def open_passive(self, syn: Segment) -> None:
        """A child of a listener, from the peer's SYN: answer with SYN-ACK at next output."""
        self.state = SYN_RCVD
        self._take_syn(syn)
        self.io.tcp_dirty(self)

    def _take_syn(self, seg: Segment) -> None:
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_adv = (seg.seq + 1) % MOD
        self.mss = min(self.our_mss, seg.mss or DEFAULT_MSS)
        if seg.wscale >= 0 and self.offer_wscale:
            self.snd_wscale = seg.wscale
        else:
            self.rcv_wscale = self.snd_wscale = 0
            self.offer_wscale = False
        self.sack = seg.sack_ok and self.offer_sack
        self.snd_wnd, self.snd_wl1 = seg.wnd, seg.seq
        self.cc = Reno(self.mss)

    @property
    def rto(self) -> int:
        return self.rtt.rto

    @property
    def seg_max(self) -> int:
        return MAX_GSO_PAYLOAD // self.mss * self.mss if self.gso else self.mss

    # ---- application side ------------------------------------------------------------
    def send(self, data: bytes) -> int:
        n = self.sndbuf.write(data)
        if n:
            self.io.tcp_dirty(self)
        return n

    def recv(self, n: int) -> bytes:
        data = self.rcvbuf.read(n)
        if data and self.state in SYNCED_RECV:
            right = (self.rcv_nxt + (self._wnd_field() << self.rcv_wscale)) % MOD
            if seq_diff(right, self.rcv_adv) >= min(2 * self.mss, self.rcvbuf.capacity // 2):
                self.ack_now = True  # window update: the reader made room
                self.io.tcp_dirty(self)
        return data

    def close(self) -> None:
        """The application is done: FIN after the queued data (or RST if data is unread)."""
        self.sock = None
        if self.state in (SYN_SENT, LISTEN):
            self._destroy()
        elif self.state == SYN_RCVD or len(self.rcvbuf):
            self.abort()
        else:
            self.shutdown_write()
            if self.state == FIN_WAIT_2:
                self.close_at = self.io.now() + FIN_WAIT2_NS

    def shutdown_write(self) -> None:
        if self.state in CAN_SEND and self.fin_seq is None:
            self.fin_seq = (self.snd_una + len(self.sndbuf)) % MOD
            self.state = FIN_WAIT_1 if self.state == ESTABLISHED else LAST_ACK
            self.io.tcp_dirty(self)

    def abort(self, err: int = 0) -> None:
        """Reset the connection (RST to the peer unless it never heard of us)."""
        if self.state not in (CLOSED, LISTEN, SYN_SENT, TIME_WAIT):
            self.io.tcp_xmit(self, self.snd_nxt, 0, RST, 0, b"", b"")
        self._fail(err)

    # ---- input ---------------------------------------------------------------------
    def input(self, seg: Segment) -> None:
        if self.state == SYN_SENT:
            return self._in_syn_sent(seg)
        if seg.flags & SYN and self.state == SYN_RCVD and seg.seq == self.irs:
            self.snd_nxt = self.iss  # our SYN-ACK was lost: send it again
            self.io.tcp_dirty(self)
            return
        if not self._acceptable(seg):
            # its ACK field still counts (RFC 9293 3.10.7.4, e.g. while our window is 0)
            if seg.flags & ACK and not seg.flags & (RST | SYN) and self.state != SYN_RCVD:
                self._ack(seg)
                self._fin_acked()
            if not seg.flags & RST and self.state != CLOSED:
                self._ack_soon()
            return
        if seg.flags & RST:
            return self._fail(
                errno.ECONNRESET
                if self.state in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT)
                else 0
            )
        if seg.flags & SYN:
            return self._ack_soon()  # RFC 5961 challenge ACK
        if not seg.flags & ACK:
            return
        if self.state == SYN_RCVD and not self._established_by(seg):
            return
        if not self._ack(seg):
            return
        self._fin_acked()
        if self.state in SYNCED_RECV:
            self._data(seg)
            if self.state == CLOSED:
                return
        if seg.flags & FIN and self.peer_fin is None:
            self.peer_fin = (seg.seq + len(seg.data)) % MOD
        if self.peer_fin is not None and not self.eof and self.rcv_nxt == self.peer_fin:
            self._fin_received()

    def _in_syn_sent(self, seg: Segment) -> None:
        f = seg.flags
        if f & ACK and not (seq_lt(self.iss, seg.ack) and seq_le(seg.ack, self.snd_max)):
            if not f & RST:
                self.io.tcp_xmit(self, seg.ack, 0, RST, 0, b"", b"")
            return
        if f & RST:
            if f & ACK:
                self._fail(errno.ECONNREFUSED)
            return
        if not f & SYN:
            return
        self._take_syn(seg)
        self.ack_now = True
        if f & ACK:
            self.snd_una, self.snd_wl2 = seg.ack, seg.ack
            self.sb.reset(seg.ack)
            self._rtt_sample(seg.ack)
            self._enter(ESTABLISHED)
            self.rto_at, self.retries = None, 0
        else:  # simultaneous open: answer with SYN-ACK
            self.state, self.snd_nxt = SYN_RCVD, self.iss
        self.io.tcp_dirty(self)

    def _established_by(self, seg: Segment) -> bool:
        if not (seq_lt(self.snd_una, seg.ack) and seq_le(seg.ack, self.snd_max)):
            self.io.tcp_xmit(self, seg.ack, 0, RST, 0, b"", b"")
            return False
        self.snd_una = seg.ack
        self._rtt_sample(seg.ack)
        self.sb.reset(seg.ack)
        self.snd_wnd = seg.wnd << self.snd_wscale
        self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
        self.rto_at, self.retries = None, 0
        self._enter(ESTABLISHED)
        if self.parent is not None:
            self.parent._child_established(self)
        return True

    def _acceptable(self, seg: Segment) -> bool:
        seglen = len(seg.data) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
        wnd = max(self.rcvbuf.window(), seq_diff(self.rcv_adv, self.rcv_nxt))
        start = seq_diff(seg.seq, self.rcv_nxt)
        if seglen == 0:
            return start == 0 if wnd == 0 else 0 <= start < max(wnd, 1)
        if wnd == 0:
            return False
        end = start + seglen - 1
        return 0 <= start < wnd or 0 <= end < wnd

    def _ack(self, seg: Segment) -> bool:
        """Process the ACK field; False when the segment must be dropped."""
        ack = seg.ack
        if seq_lt(self.snd_max, ack):
            self._ack_soon()
            return False
        wnd = seg.wnd << self.snd_wscale
        self.probing = False
        if seq_lt(self.snd_una, ack):
            self._new_ack(ack, seg.sacks)
        elif self.sack:
            # any ACK's SACK blocks count (RFC 6675), even one with a new window
            flight = seq_diff(self.snd_max, self.snd_una)
            # RFC 6675's DupAck carries new SACK information: a duplicated ACK, or the
            # ACK for a duplicated segment, is no sign of loss
            new = bool(seg.sacks) and self._take_sacks(seg.sacks, flight)
            if new and self._is_dupack(seg, wnd):
                self.cc.dupacks += 1
            if self.sb.blocks or self.cc.dupacks:
                self._sack_detect(flight)
        elif self._is_dupack(seg, wnd):
            flight = seq_diff(self.snd_max, self.snd_una)
            if self.cc.on_dupack(flight, self.snd_max, self._dupthresh(flight)):
                self.fast_retransmits += 1
                self._retransmit_one()
            else:
                self.io.tcp_dirty(self)  # RFC 3042 limited transmit may send new data
        if seq_lt(self.snd_wl1, seg.seq) or (self.snd_wl1 == seg.seq and seq_le(self.snd_wl2, ack)):
            if wnd > self.snd_wnd:
                self.io.tcp_dirty(self)
            self.snd_wnd, self.snd_wl1, self.snd_wl2 = wnd, seg.seq, ack
            if wnd:
                self.persist_at = None
        return True

    def _is_dupack(self, seg: Segment, wnd: int) -> bool:
        """RFC 5681's duplicate ACK: nothing new, no data, same window, data in flight."""
        return (
            seg.ack == self.snd_una
            and not seg.data
            and not seg.flags & (SYN | FIN)
            and self.snd_nxt != self.snd_una
            and wnd == self.snd_wnd
        )

    def _dupthresh(self, flight: int) -> int:
        """RFC 5827 early retransmit: with fewer than 4 segments out and nothing new to
        send, the other segments' duplicate ACKs are all there will be."""
        oseg = -(-flight // self.mss)
        if oseg >= 4 or self._can_send_new(flight):
            return DUPACK_THRESHOLD
        return max(1, oseg - 1)

    def _can_send_new(self, flight: int) -> bool:
        return len(self.sndbuf) > flight and self.snd_wnd > flight

    def _new_ack(self, ack: int, sacks=()) -> None:
        acked = seq_diff(ack, self.snd_una)
        data_acked = min(acked, len(self.sndbuf))
        self.sndbuf.drop(data_acked)
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        self._rtt_sample(ack)
        self.retries = 0
        partial = self.cc.on_ack(ack, acked)
        if self.sack:
            sb = self.sb
            sb.advance(ack)
            if sacks:
                self._take_sacks(sacks, seq_diff(self.snd_max, ack))
            if not partial and self.cc.recover is None and sb:
                sb.recovered()
            if sb.blocks and self.cc.recover is None:
                self._sack_detect(seq_diff(self.snd_max, ack))
        elif partial:
            self._retransmit_one()  # NewReno partial ACK: the next hole
        now = self.io.now()
        self.rto_at = None if self.snd_nxt == self.snd_una else now + self.rtt.rto
        self.io.tcp_dirty(self)
        if data_acked:
            self._event()

    def _lost_thresh(self, flight: int) -> int:
        """SACKed bytes above a hole that make it lost: more than 2 MSS (RFC 6675), fewer
        for early retransmit (RFC 5827)."""
        return (self._dupthresh(flight) - 1) * self.mss + 1

    def _take_sacks(self, sacks, flight: int) -> bool:
        """Update the scoreboard; True when the blocks told something new."""
        if not self.sb.add(sacks, flight):
            return False
        if self.rtt_seq is not None:
            off = seq_diff(self.rtt_seq, self.snd_una)
            if self.sb.is_sacked(off - 1, off):  # the timed segment arrived: an RTT sample
                self.rtt.sample(self.io.now() - self.rtt_ts)
                self.rtt_seq = None
        return True

    def _sack_detect(self, flight: int) -> None:
        """Enter SACK recovery (RFC 6675 5) on a lost hole or the third duplicate ACK."""
        self.io.tcp_dirty(self)  # limited transmit, or recovery may send
        if self.cc.recover is not None or flight <= 0:
            return
        lost = self.sb.lost(flight, self._lost_thresh(flight))
        if lost or self.cc.dupacks >= DUPACK_THRESHOLD:
            self.cc.enter_recovery(flight, self.snd_max)
            self.sb.high_rxt = 0
            self.fast_retransmits += 1
            self.rxt_first = True  # the first retransmission goes regardless of pipe

    def _sack_output(self) -> None:
        """NextSeg/pipe (RFC 6675): resend lost holes, MSS by MSS, while pipe < cwnd."""
        sb, flight = self.sb, seq_diff(self.snd_max, self.snd_una)
        if flight <= 0:
            return
        now = self.io.now()
        srtt = self.rtt.srtt
        sb.check_log(now, srtt * 5 // 4 + 2 * MS if srtt is not None else self.rtt.rto)
        lost = sb.lost(flight, self._lost_thresh(flight))
        if not lost and self.cc.dupacks >= DUPACK_THRESHOLD and sb.high_rxt == 0:
            lost = [(0, min(self.mss, flight))]  # no SACK information: the first segment
        pipe = sb.pipe(flight, lost)
        while pipe < self.cc.cwnd or self.rxt_first:
            self.rxt_first = False
            hole = sb.next_hole(lost, self.mss)
            if hole is None:
                break
            a, b = hole
            self._retransmit(a, b - a)
            sb.retransmitted(a, b, now)
            pipe += b - a
        self.pipe_adj = flight - pipe

    def _retransmit(self, off: int, n: int) -> None:
        data = self.sndbuf.peek(off, n)
        flags = ACK
        fin = self.fin_seq
        end = (self.snd_una + off + len(data)) % MOD
        if fin is not None and end == fin and seq_lt(fin, self.snd_max):
            flags |= FIN
        if data or flags & FIN:
            # Karn: the timed segment's cumulative ACK may now wait for this one; its SACK
            # still times it (a retransmission of the timed segment itself: RTO only)
            self.rtt_cum_ok = False
            self._emit((self.snd_una + off) % MOD, flags, data)
            if self.rto_at is None:
                self.rto_at = self.io.now() + self.rtt.rto

    def _retransmit_one(self) -> None:
        data = self.sndbuf.peek(0, self.mss)
        flags = ACK
        fin = self.fin_seq
        end = (self.snd_una + len(data)) % MOD
        if fin is not None and end == fin and seq_lt(fin, self.snd_max):
            flags |= FIN
        if data or flags & FIN:
            self.rtt_seq = None  # Karn: no sample from a retransmitted segment
            self._emit(self.snd_una, flags, data)

    def _rtt_sample(self, ack: int) -> None:
        if self.rtt_seq is None or seq_lt(ack, self.rtt_seq):
            return
        if self.rtt_cum_ok:
            self.rtt.sample(self.io.now() - self.rtt_ts)
        self.rtt_seq = None

    def _data(self, seg: Segment) -> None:
        data, seq = seg.data, seg.seq
        if not data:
            return
        if self.sock is None and self.parent is None:
            return self.abort()  # data for a closed socket: Linux resets
        skip = seq_diff(self.rcv_nxt, seq)
        if skip > 0:
            data, seq = data[skip:], self.rcv_nxt
        room = self.rcvbuf.window() - seq_diff(seq, self.rcv_nxt)
        if len(data) > room:
            data = data[: max(room, 0)]
        if not data:
            return self._ack_soon()  # a duplicate
        had_ooo = bool(self.rcvbuf.ooo)
        before = self.rcv_nxt
        self.rcv_nxt = self.rcvbuf.insert(self.rcv_nxt, seq, data)
        if self.rcv_nxt == before:
            # out of order: one duplicate ACK per segment, not one per flush, or the
            # sender never counts three of them (RFC 5681 4.2)
            return self._emit(self.snd_nxt, ACK, b"")
        if had_ooo or seg.flags & PSH:
            self.ack_now = True  # a gap filled, or the end of a write
        self.unacked += seq_diff(self.rcv_nxt, before)
        self.io.tcp_dirty(self)
        if self.rcv_nxt != before:
            self._event()

    def _fin_received(self) -> None:
        self.rcv_nxt = (self.rcv_nxt + 1) % MOD
        self.eof = True
        self.ack_now = True
        self.io.tcp_dirty(self)
        if self.state in (ESTABLISHED, SYN_RCVD):
            self.state = CLOSE_WAIT
        elif self.state == FIN_WAIT_1:
            self.state = CLOSING
        elif self.state == FIN_WAIT_2:
            self._enter(TIME_WAIT)
        self._event()

    def _fin_acked(self) -> None:
        if self.fin_seq is None or not seq_lt(self.fin_seq, self.snd_una):
            return
        if self.state == FIN_WAIT_1:
            self.state = FIN_WAIT_2
            if self.sock is None:
                self.close_at = self.io.now() + FIN_WAIT2_NS
        elif self.state == CLOSING:
            self._enter(TIME_WAIT)
        elif self.state == LAST_ACK:
            self._destroy()

    def _enter(self, state: str) -> None:
        self.state = state
        if state == TIME_WAIT:
            self.rto_at = self.persist_at = self.probe_at = None
            self.close_at = self.io.now() + TIME_WAIT_NS
        self._event()

    def _ack_soon(self) -> None:
        self.ack_now = True
        self.io.tcp_dirty(self)

    # ---- output --------------------------------------------------------------------
    def output(self) -> None:
        """Send what is due: SYN, data and FIN the windows allow, or a pure ACK."""
        st = self.state
        if st in (CLOSED, LISTEN):
            return
        if st in (SYN_SENT, SYN_RCVD):
            if self.snd_nxt == self.iss:
                self._send_syn()
            return
        sent = False
        if st != TIME_WAIT:
            sb = self.sb
            if self.sack and (sb.blocks or sb.log or self.cc.recover is not None):
                n = self.io_sent
                self._sack_output()
                sent = self.io_sent != n
            else:
                self.pipe_adj = 0
            sent = self._send_data() or sent
            self._arm_probe()
        if sent:
            return
        if self.ack_now or self.unacked >= 2 * self.mss:
            self._emit(self.snd_nxt, ACK, b"")
        elif self.unacked and self.delack_at is None:
            self.delack_at = self.io.now() + DELACK_NS

    def _send_syn(self) -> None:
        flags = SYN if self.state == SYN_SENT else SYN | ACK
        ws = self.rcv_wscale if self.offer_wscale else None
        sack = self.offer_sack if self.state == SYN_SENT else self.sack
        self._emit(self.iss, flags, b"", syn_options(self.our_mss, ws, sack))
        self.snd_nxt = (self.iss + 1) % MOD
        if self.snd_max == self.iss:
            self.snd_max = self.snd_nxt
            self.rtt_seq, self.rtt_ts = self.snd_nxt, self.io.now()
            self.rtt_cum_ok = True
        if self.rto_at is None:
            self.rto_at = self.io.now() + self.rtt.rto

    def _send_data(self) -> bool:
        sent = False
        buffered = len(self.sndbuf)
        while True:
            off = seq_diff(self.snd_nxt, self.snd_una)
            avail = buffered - off
            fin_due = self.fin_seq is not None and seq_le(self.snd_nxt, self.fin_seq)
            if avail <= 0 and not fin_due:
                break
            cc = self.cc
            cwnd = cc.cwnd
            if cc.recover is None and cc.dupacks and not self.sack:
                cwnd += min(cc.dupacks, 2) * self.mss  # RFC 3042 limited transmit
            n = min(avail, self.snd_wnd - off, cwnd - off + self.pipe_adj, self.seg_max)
            if avail > 0 and (n <= 0 or (n < avail and n < self.mss and off > 0)):
                break  # window closed, or only a silly small segment fits (RFC 1122 SWS)
            if self.mss < n < avail:
                n -= n % self.mss  # whole MSS pieces: a lost odd piece costs a whole one
            flags = ACK
            if off + n == buffered:
                flags |= (PSH if n else 0) | (FIN if fin_due else 0)
            if n == 0 and not flags & FIN:
                break
            self._emit(self.snd_nxt, flags, self.sndbuf.peek(off, n))
            self._sent(n + (1 if flags & FIN else 0))
            sent = True
        if (
            buffered > seq_diff(self.snd_nxt, self.snd_una)
            and self.snd_wnd == 0
            and self.snd_nxt == self.snd_una
            and self.persist_at is None
        ):
            self.persist_at = self.io.now() + self.rtt.rto
        return sent

    def _sent(self, n: int) -> None:
        now = self.io.now()
        if self.snd_nxt == self.snd_max and self.rtt_seq is None:
            self.rtt_seq, self.rtt_ts = (self.snd_nxt + n) % MOD, now
            self.rtt_cum_ok = True
        self.snd_nxt = (self.snd_nxt + n) % MOD
        if seq_lt(self.snd_max, self.snd_nxt):
            self.snd_max = self.snd_nxt
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto

    def _wnd_field(self) -> int:
        w = self.rcvbuf.window()
        if self.state in (SYN_SENT, SYN_RCVD):
            return min(w, 65535)
        return min(w >> self.rcv_wscale, 65535)

    def _emit(self, seq: int, flags: int, data: bytes, opts: bytes = b"") -> None:
        wnd = self._wnd_field()
        if self.sack and self.rcvbuf.ooo and not data and not flags & SYN:
            # only on data-less segments: a full data segment has no room left for them
            opts = sack_option(self.rcvbuf.sack_blocks(self.rcv_nxt, MAX_SACK_BLOCKS))
        ack = self.rcv_nxt if flags & ACK else 0
        self.io.tcp_xmit(self, seq, ack, flags, wnd, opts, data)
        self.io_sent += 1
        if flags & ACK:
            self.ack_now, self.unacked, self.delack_at = False, 0, None
            if not flags & SYN:
                right = (self.rcv_nxt + (wnd << self.rcv_wscale)) % MOD
                if seq_lt(self.rcv_adv, right):
                    self.rcv_adv = right

    # ---- timers --------------------------------------------------------------------
    def deadline(self) -> int | None:
        timers = (self.rto_at, self.delack_at, self.persist_at, self.close_at, self.probe_at)
        ts = [t for t in timers if t is not None]
        return min(ts) if ts else None

    def on_timer(self, now: int) -> None:
        if self.close_at is not None and self.close_at <= now:
            return self._destroy()
        if self.rto_at is not None and self.rto_at <= now:
            self.rto_at = None
            self._rto_expired()
        if self.probe_at is not None and self.probe_at <= now:
            self.probe_at = None
            self._probe()
        if self.persist_at is not None and self.persist_at <= now:
            self.persist_at = None
            if self.snd_wnd == 0 and self.state not in (CLOSED, TIME_WAIT):
                self._emit((self.snd_una - 1) % MOD, ACK, b"")  # zero-window probe
                self.persist_at = now + self.rtt.rto
        if self.delack_at is not None and self.delack_at <= now:
            self.delack_at = None
            self._ack_soon()

    def _arm_probe(self) -> None:
        """PTO (RFC 8985 7.2): two SRTTs after the last send or ACK, plus the peer's
        delayed ACK when a single segment is out; never later than the RTO."""
        flight = seq_diff(self.snd_max, self.snd_una)
        srtt = self.rtt.srtt
        if flight <= 0 or self.probing or srtt is None or self.state not in PROBE_STATES:
            self.probe_at = None
            return
        pto = max(2 * srtt, 2 * MS) + (DELACK_NS if flight <= self.mss else 0)
        now = self.io.now()
        if self.rto_at is None or now + pto < self.rto_at:
            self.probe_at = now + pto

    def _probe(self) -> None:
        """A tail loss probe: one new MSS if the peer's window allows (cwnd does not
        matter), else the last segment again; its ACK or SACK shows what was lost."""
        flight = seq_diff(self.snd_max, self.snd_una)
        if flight <= 0 or self.snd_nxt != self.snd_max:
            return
        self.probing = True
        self.probes += 1
        unsent = len(self.sndbuf) - flight
        if unsent > 0 and self.snd_wnd - flight >= min(unsent, self.mss):
            n = min(unsent, self.mss)
            flags = ACK | (PSH if n == unsent else 0)
            self._emit(self.snd_nxt, flags, self.sndbuf.peek(flight, n))
            self._sent(n)
        else:
            data_end = min(flight, len(self.sndbuf))
            off = max(0, data_end - self.mss)
            self._retransmit(off, data_end - off)

    def _rto_expired(self) -> None:
        self.retries += 1
        self.timeouts += 1
        limit = SYN_RETRIES if self.state in (SYN_SENT, SYN_RCVD) else DATA_RETRIES
        if self.retries > limit:
            return self.abort(errno.ETIMEDOUT)
        if self.state in (SYN_SENT, SYN_RCVD):
            self.snd_nxt = self.iss
        else:
            flight = seq_diff(self.snd_max, self.snd_una)
            if self.sack:
                # Linux's loss state: resend the un-SACKed bytes in slow start, keeping
                # the scoreboard (this receiver never reneges; one that does is caught by
                # the next timeout, which resends from SND.UNA again)
                self.cc.on_timeout(flight, self.snd_max)
                self.sb.timed_out()
            else:
                self.cc.on_timeout(flight)
                self.snd_nxt = self.snd_una  # go back N; the receiver keeps what it has
        self.rtt_seq = None
        self.rtt.backoff()
        self.io.tcp_dirty(self)

    def unreachable(self, err: int) -> None:
        """ARP gave up on the next hop: fatal while connecting, else the RTO carries on."""
        if self.state == SYN_SENT:
            self._fail(err)

    # ---- the end -------------------------------------------------------------------
    def _fail(self, err: int) -> None:
        if err and self.sock is not None:
            self.error = err
        self._destroy()

    def _destroy(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.rto_at = self.delack_at = self.persist_at = self.close_at = None
        self.probe_at = None
        self.io.tcp_closed(self)
        if self.parent is not None:
            self.parent._child_gone(self)
        self._event()

    def _event(self) -> None:
        if self.sock is not None:
            self.sock._event()
