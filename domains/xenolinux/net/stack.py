"""NetStack: interfaces, routing, demultiplexing, timers and output queues of one guest.

Rules:
1. Sans-IO: frames come in through each device's `receiver` (set here), time only from
   `now_ns()`. Nothing reaches a device until `flush()`, which first runs loopback traffic
   and every TCP connection marked dirty, then calls `dev.transmit(batch)` once per device.
   The caller calls `flush()` after every call into the stack (input, timers, sockets).
2. Routing: our own addresses and 127/8 go through loopback (packets never leave the stack,
   as on Linux, even without an "lo" interface); a subnet of an interface goes direct;
   the rest to the default gateway; otherwise ENETUNREACH.
3. No forwarding: frames not for us (MAC or IP) are dropped, and so is anything malformed
   (counted in `statistics()`); a bad frame never raises.
4. TSO: a TCP segment longer than the MSS leaves as one frame with gso_size = MSS when the
   device has `gso` (the backend or NIC cuts it); received big segments are plain input.
"""

import errno
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from domains.kernel import gso
from domains.xenolinux.net import arp, eth, icmp, ipv4, tcpseg, udp
from domains.xenolinux.net.arp import ArpTable
from domains.xenolinux.net.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from domains.xenolinux.net.sock import SOCK_DGRAM, SOCK_ICMP, SOCK_STREAM, Sock
from domains.xenolinux.net.tcp import TIME_WAIT, Tcb
from domains.xenolinux.net.tcpbuf import seq_lt
from domains.xenolinux.netdev import NetDevice

LO_MTU = 65536  # as Linux's lo
BUFSIZE = 256 * 1024  # TCP send and receive buffers per connection
EPHEMERAL = (32768, 60999)  # Linux's ip_local_port_range
MAX_FLUSH_ROUNDS = 100
ANY = b"\x00\x00\x00\x00"
LIMITED_BROADCAST = b"\xff\xff\xff\xff"


@dataclass(eq=False)
class Iface:
    name: str
    dev: NetDevice | None
    ip: bytes
    prefix: int
    mtu: int
    mac: bytes = b"\x00" * 6
    arp: ArpTable = field(default_factory=ArpTable)
    outq: list = field(default_factory=list)

    def on_link(self, ip: bytes) -> bool:
        m = ipv4.mask(self.prefix)
        return ipv4.to_int(ip) & m == ipv4.to_int(self.ip) & m

    @property
    def broadcast(self) -> bytes:
        m = ipv4.mask(self.prefix)
        return ((ipv4.to_int(self.ip) & m) | (~m & 0xFFFFFFFF)).to_bytes(4, "big")


class NetStack:
    def __init__(self, now_ns: Callable[[], int], rng: random.Random | None = None):
        self.now_ns = now_ns
        self.rng = rng or random.Random()
        self.ifaces: dict[str, Iface] = {}
        self.gateway: bytes | None = None
        self.tcbs: dict[tuple[bytes, int, bytes, int], Tcb] = {}
        self.bound: dict[tuple[int, int], list[Sock]] = {}  # (kind, port) -> sockets
        self.on_change: Callable[[], None] | None = None
        self._dirty: dict[Tcb, None] = {}  # an ordered set
        self._lo: deque[bytes] = deque()
        self._ident = self.rng.randrange(1 << 16)
        self._stats: Counter[str] = Counter()
        self._reported: int | None = None
        self._local: set[bytes] = set()  # our addresses
        self._routes: dict[bytes, tuple[Iface | None, bytes] | None] = {}  # route cache

    # ---- configuration ---------------------------------------------------------------
    def add_interface(self, name: str, dev: NetDevice | None, ip: str, prefix: int) -> None:
        """Add `dev` with ip/prefix; dev None is the loopback (use "lo", 127.0.0.1, 8)."""
        if not 0 <= prefix <= 32:
            raise OSError(errno.EINVAL, f"bad prefix {prefix}")
        if dev is None:
            iface = Iface(name, None, ipv4.aton(ip), prefix, LO_MTU)
        else:
            iface = Iface(name, dev, ipv4.aton(ip), prefix, dev.mtu, mac=dev.mac)
            dev.receiver = lambda frame, gso_size, i=iface: self._eth_input(i, frame)
        self.ifaces[name] = iface
        self._local = {i.ip for i in self.ifaces.values()}
        self._routes.clear()

    def set_default_route(self, gateway: str) -> None:
        self.gateway = ipv4.aton(gateway)
        self._routes.clear()

    def socket(self, kind: int) -> Sock:
        if kind not in (SOCK_STREAM, SOCK_DGRAM, SOCK_ICMP):
            raise OSError(errno.EPROTONOSUPPORT, f"socket kind {kind}")
        return Sock(self, kind)

    def statistics(self) -> dict[str, int]:
        """Counters: frames in/out, drops by reason."""
        return dict(self._stats)

    # ---- timers and flushing ---------------------------------------------------------
    def next_deadline_ns(self) -> int | None:
        if self._lo or self._dirty:
            return self.now_ns()  # leftover work from a flush that hit its round limit
        ds = [d for t in self.tcbs.values() if (d := t.deadline()) is not None]
        ds += [d for i in self.ifaces.values() if (d := i.arp.deadline()) is not None]
        return min(ds) if ds else None

    def on_timer(self) -> None:
        now = self.now_ns()
        for tcb in list(self.tcbs.values()):
            d = tcb.deadline()
            if d is not None and d <= now:
                tcb.on_timer(now)
        for iface in self.ifaces.values():
            again, failed = iface.arp.expire(now)
            for ip in again:
                self._arp_request(iface, ip)
            for owner in failed:
                owner.unreachable(errno.EHOSTUNREACH)

    def flush(self) -> None:
        for _ in range(MAX_FLUSH_ROUNDS):
            while self._lo:
                self._ip_input(self._lo.popleft())
            if not self._dirty:
                break
            dirty, self._dirty = self._dirty, {}
            for tcb in dirty:
                tcb.output()
        for iface in self.ifaces.values():
            if iface.outq and iface.dev is not None:
                batch, iface.outq = iface.outq, []
                self._stats["tx_frames"] += len(batch)
                iface.dev.transmit(batch)
        d = self.next_deadline_ns()
        if d != self._reported:
            self._reported = d
            if self.on_change is not None:
                self.on_change()

    # ---- routing and IP output --------------------------------------------------------
    def is_local(self, ip: bytes) -> bool:
        return ip[0] == 127 or ip in self._local

    def route(self, dst: bytes) -> tuple[Iface | None, bytes] | None:
        """(interface, next hop) for dst; interface None means loopback; None: no route."""
        try:
            return self._routes[dst]
        except KeyError:
            pass
        if len(self._routes) > 1024:
            self._routes.clear()
        r = self._routes[dst] = self._lookup(dst)
        return r

    def _lookup(self, dst: bytes) -> tuple[Iface | None, bytes] | None:
        if self.is_local(dst):
            return None, dst
        for iface in self.ifaces.values():
            if iface.dev is not None and (iface.on_link(dst) or dst == LIMITED_BROADCAST):
                return iface, dst
        if self.gateway is not None:
            for iface in self.ifaces.values():
                if iface.dev is not None and iface.on_link(self.gateway):
                    return iface, self.gateway
        return None

    def source_for(self, dst: bytes) -> tuple[bytes, int, bool]:
        """(source address, MTU, TSO) for traffic to dst; OSError(ENETUNREACH) if none."""
        r = self.route(dst)
        if r is None:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        iface, _hop = r
        if iface is None:
            return (dst if dst[0] != 127 else b"\x7f\x00\x00\x01"), LO_MTU, False
        return iface.ip, iface.mtu, bool(iface.dev.gso)

    def ip_output(
        self,
        src: bytes,
        dst: bytes,
        proto: int,
        l4: bytes,
        data: bytes = b"",
        owner=None,
        gso_size: int = 0,
    ) -> int:
        """Queue one packet; returns 0 or an errno (ENETUNREACH, EMSGSIZE)."""
        r = self.route(dst)
        if r is None:
            self._stats["tx_no_route"] += 1
            return errno.ENETUNREACH
        iface, hop = r
        self._ident = (self._ident + 1) & 0xFFFF
        hdr = ipv4.header(src, dst, proto, len(l4) + len(data), self._ident)
        if iface is None:
            self._lo.append(b"".join((hdr, l4, data)))
            return 0
        if not gso_size and 20 + len(l4) + len(data) > iface.mtu:
            return errno.EMSGSIZE
        if dst == LIMITED_BROADCAST or dst == iface.broadcast:
            mac = eth.BROADCAST
        else:
            mac = iface.arp.lookup(hop, self.now_ns())
        if mac is not None:
            frame = b"".join((eth.header(mac, iface.mac, eth.ETH_P_IP), hdr, l4, data))
            self._queue(iface, frame, gso_size)
        elif iface.arp.enqueue(hop, (b"".join((hdr, l4, data)), gso_size), owner, self.now_ns()):
            self._arp_request(iface, hop)
        return 0

    def _queue(self, iface: Iface, frame: bytes, gso_size: int) -> None:
        if gso_size and not iface.dev.gso:  # the device lost TSO: cut in software
            iface.outq.extend((f, 0) for f in gso.segment(frame, gso_size))
        else:
            iface.outq.append((frame, gso_size))

    # ---- input ---------------------------------------------------------------------
    def _eth_input(self, iface: Iface, frame: bytes) -> None:
        self._stats["rx_frames"] += 1
        if type(frame) is not bytes:  # a driver's bytearray or memoryview: own a copy
            frame = bytes(frame)
        h = eth.parse(frame)
        if h is None or (h[0] != iface.mac and h[0] != eth.BROADCAST):
            self._stats["rx_not_for_us"] += 1
            return
        if h[2] == eth.ETH_P_IP:
            self._ip_input(frame[eth.ETH_HLEN :], iface)
        elif h[2] == eth.ETH_P_ARP:
            self._arp_input(iface, frame[eth.ETH_HLEN :])

    def _ip_input(self, pkt: bytes, iface: Iface | None = None) -> None:
        r = ipv4.parse(pkt)
        if r is None:
            self._stats["rx_bad_ip"] += 1
            return
        hdr, payload = r
        if not (
            self.is_local(hdr.dst)
            or hdr.dst == LIMITED_BROADCAST
            or (iface is not None and hdr.dst == iface.broadcast)
        ):
            self._stats["rx_not_for_us"] += 1
            return
        if hdr.proto == IPPROTO_TCP:
            self._tcp_input(hdr, payload)
        elif hdr.proto == IPPROTO_UDP:
            self._udp_input(hdr, payload, pkt)
        elif hdr.proto == IPPROTO_ICMP:
            self._icmp_input(hdr, payload)

    def _arp_input(self, iface: Iface, data: bytes) -> None:
        p = arp.parse(data)
        if p is None or p.sha[0] & 1 or p.spa == ANY:
            self._stats["rx_bad_arp"] += 1
            return
        now = self.now_ns()
        if p.tpa != iface.ip:
            if p.spa in iface.arp.entries:  # RFC 826: refresh what we already know
                iface.arp.learn(p.spa, p.sha, now)
            return
        for (pkt, gso_size), _owner in iface.arp.learn(p.spa, p.sha, now):
            self._queue(iface, eth.header(p.sha, iface.mac, eth.ETH_P_IP) + pkt, gso_size)
        if p.op == arp.ARPOP_REQUEST:
            reply = arp.build(arp.ARPOP_REPLY, iface.mac, iface.ip, p.sha, p.spa)
            iface.outq.append((eth.header(p.sha, iface.mac, eth.ETH_P_ARP) + reply, 0))

    def _arp_request(self, iface: Iface, ip: bytes) -> None:
        req = arp.build(arp.ARPOP_REQUEST, iface.mac, iface.ip, b"\x00" * 6, ip)
        iface.outq.append((eth.header(eth.BROADCAST, iface.mac, eth.ETH_P_ARP) + req, 0))

    def _icmp_input(self, hdr: ipv4.IpHeader, payload: bytes) -> None:
        m = icmp.parse(payload)
        if m is None:
            self._stats["rx_bad_icmp"] += 1
            return
        if m.type == icmp.ICMP_ECHO and m.code == 0 and self.is_local(hdr.dst):
            # Linux's icmp_echo_ignore_broadcasts=1: broadcast pings get no answer
            src = hdr.dst
            reply = icmp.build(icmp.ICMP_ECHOREPLY, 0, m.ident, m.seq, m.data)
            self.ip_output(src, hdr.src, IPPROTO_ICMP, reply)
        elif m.type == icmp.ICMP_ECHOREPLY:
            for s in self.bound.get((SOCK_ICMP, m.ident), ()):
                s._deliver(m.seq.to_bytes(2, "big") + m.data, hdr.src, 0)
        elif m.type == icmp.ICMP_DEST_UNREACH:
            self._udp_unreachable(m)

    def _udp_unreachable(self, m: icmp.IcmpMessage) -> None:
        """Linux reports ICMP errors to connected UDP sockets only (ECONNREFUSED for a
        closed port); the quoted datagram says which socket sent it."""
        quoted = ipv4.parse_quoted(m.data)
        if quoted is None or quoted[0].proto != IPPROTO_UDP or len(quoted[1]) < 4:
            return
        qhdr, head = quoted
        sport, dport = int.from_bytes(head[0:2], "big"), int.from_bytes(head[2:4], "big")
        err = errno.ECONNREFUSED if m.code == icmp.ICMP_PORT_UNREACH else errno.EHOSTUNREACH
        for s in self.bound.get((SOCK_DGRAM, sport), ()):
            if s.remote == (qhdr.dst, dport):
                s.unreachable(err)

    def _udp_input(self, hdr: ipv4.IpHeader, payload: bytes, pkt: bytes) -> None:
        r = udp.parse(hdr.src, hdr.dst, payload)
        if r is None:
            self._stats["rx_bad_udp"] += 1
            return
        sport, dport, data = r
        for s in self.bound.get((SOCK_DGRAM, dport), ()):
            if s.accepts(hdr.dst, hdr.src, sport):
                s._deliver(data, hdr.src, sport)
                return
        if self.is_local(hdr.dst):  # RFC 1122: port unreachable, never for broadcasts
            self.ip_output(hdr.dst, hdr.src, IPPROTO_ICMP, icmp.port_unreachable(pkt))

    def _tcp_input(self, hdr: ipv4.IpHeader, payload: bytes) -> None:
        seg = tcpseg.parse(hdr.src, hdr.dst, payload)
        if seg is None:
            self._stats["rx_bad_tcp"] += 1
            return
        key = (hdr.dst, seg.dport, hdr.src, seg.sport)
        tcb = self.tcbs.get(key)
        if tcb is not None and tcb.state == TIME_WAIT and _new_syn(seg, tcb):
            tcb._destroy()  # RFC 1122 4.2.2.13: a new connection may reuse TIME_WAIT
            tcb = None
        if tcb is not None:
            tcb.input(seg)
            return
        if seg.flags & tcpseg.SYN and not seg.flags & (tcpseg.ACK | tcpseg.RST):
            for s in self.bound.get((SOCK_STREAM, seg.dport), ()):
                if s.listening and s.local[0] in (ANY, hdr.dst):
                    s._syn(key, seg)
                    return
        if not seg.flags & tcpseg.RST:
            self._tcp_reset(hdr, seg)

    def _tcp_reset(self, hdr: ipv4.IpHeader, seg: tcpseg.Segment) -> None:
        """RFC 9293 3.10.7.1: answer a segment for no connection with RST."""
        if seg.flags & tcpseg.ACK:
            seq, ack, flags = seg.ack, 0, tcpseg.RST
        else:
            n = len(seg.data) + (seg.flags & tcpseg.SYN and 1) + (seg.flags & tcpseg.FIN and 1)
            seq, ack, flags = 0, (seg.seq + n) & 0xFFFFFFFF, tcpseg.RST | tcpseg.ACK
        h = tcpseg.build(hdr.dst, hdr.src, seg.dport, seg.sport, seq, ack, flags, 0, b"", b"")
        self.ip_output(hdr.dst, hdr.src, IPPROTO_TCP, h)

    # ---- the TcpIo of every Tcb, and socket bookkeeping ---------------------------------
    def now(self) -> int:
        return self.now_ns()

    def tcp_xmit(
        self, tcb: Tcb, seq: int, ack: int, flags: int, wnd: int, opts: bytes, data: bytes
    ) -> None:
        (src, sport), (dst, dport) = tcb.local, tcb.remote
        h = tcpseg.build(src, dst, sport, dport, seq, ack, flags, wnd, opts, data)
        gso_size = tcb.mss if len(data) > tcb.mss else 0
        self.ip_output(src, dst, IPPROTO_TCP, h, data, tcb, gso_size)

    def tcp_dirty(self, tcb: Tcb) -> None:
        self._dirty[tcb] = None

    def tcp_closed(self, tcb: Tcb) -> None:
        key = tcb.local + tcb.remote
        if self.tcbs.get(key) is tcb:
            del self.tcbs[key]
        self._dirty.pop(tcb, None)

    def new_tcb(self, local: tuple[bytes, int], remote: tuple[bytes, int]) -> Tcb:
        _src, mtu, gso = self.source_for(remote[0])
        mss = min(mtu, 65535) - 40
        tcb = Tcb(self, local, remote, mss, gso, self.rng.randrange(1 << 32), BUFSIZE)
        self.tcbs[local + remote] = tcb
        return tcb

    def ephemeral_port(self, kind: int) -> int:
        used = {k[1] for k in self.tcbs} if kind == SOCK_STREAM else set()
        lo, hi = EPHEMERAL
        for _ in range(1000):
            port = self.rng.randint(lo, hi)
            if port not in used and not self.bound.get((kind, port)):
                return port
        raise OSError(errno.EADDRINUSE, "no free local port")


def _new_syn(seg: tcpseg.Segment, tcb: Tcb) -> bool:
    f = seg.flags
    return (
        bool(f & tcpseg.SYN) and not f & (tcpseg.ACK | tcpseg.RST) and seq_lt(tcb.rcv_nxt, seg.seq)
    )
