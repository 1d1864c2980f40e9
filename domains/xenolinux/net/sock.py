"""Sock: the socket object the guest's system calls drive (contract §4 of net-contracts).

Rules:
1. Never blocks: a call that would block returns None (recv, recvfrom, accept) or 0 (send);
   `readable()`/`writable()` and `on_event` tell the caller when to try again.
2. Errors raise OSError(errno.X); a connection's asynchronous error (ECONNREFUSED,
   ECONNRESET, ETIMEDOUT, EHOSTUNREACH) stays in `error` and is raised once by the next
   recv/send, after which the socket reads as EOF (as Linux's sock_error()).
3. Addresses are ("a.b.c.d", port). Binding is as if SO_REUSEADDR were always set: only
   another bound or listening socket on the same port and address conflicts.
4. SOCK_ICMP (Linux's ping socket): the local port is the echo identifier;
   sendto(payload, (ip, 0)) sends an echo request whose sequence number is payload[0:2]
   and whose data is payload[2:]; recvfrom gives back the reply in the same shape.
"""

import errno
from collections import deque
from collections.abc import Callable

from domains.xenolinux.net import icmp, ipv4, udp
from domains.xenolinux.net.ipv4 import IPPROTO_ICMP, IPPROTO_UDP

SOCK_STREAM, SOCK_DGRAM, SOCK_ICMP = 1, 2, 3
DGRAM_RCVBUF = 256 * 1024  # bytes of datagrams queued before new ones are dropped
ANY = b"\x00\x00\x00\x00"
_CONNECTED = (
    "ESTABLISHED",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "CLOSE_WAIT",
    "CLOSING",
    "LAST_ACK",
    "TIME_WAIT",
)


class Sock:
    def __init__(self, stack, kind: int) -> None:
        self.stack, self.kind = stack, kind
        self.local: tuple[bytes, int] | None = None
        self.remote: tuple[bytes, int] | None = None
        self.tcb = None
        self.listening = False
        self.backlog = 0
        self.accept_queue: deque[Sock] = deque()
        self.pending: set = set()  # half-open children of a listener
        self.rxq: deque[tuple[bytes, tuple[str, int]]] = deque()
        self.rx_bytes = 0
        self.closed = False
        self._error = 0
        self.on_event: Callable[[], None] | None = None

    # ---- state -----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        if self.kind != SOCK_STREAM:
            return self.remote is not None
        return self.tcb is not None and self.tcb.state in _CONNECTED

    @property
    def error(self) -> int:
        return self._error or (self.tcb.error if self.tcb is not None else 0)

    def _take_error(self) -> int:
        err = self.error
        self._error = 0
        if self.tcb is not None:
            self.tcb.error = 0
        return err

    def readable(self) -> bool:
        if self.listening:
            return bool(self.accept_queue)
        if self.kind != SOCK_STREAM:
            return bool(self.rxq) or bool(self._error)
        t = self.tcb
        return t is not None and (
            len(t.rcvbuf) > 0 or t.eof or bool(t.error) or t.state == "CLOSED"
        )

    def writable(self) -> bool:
        if self.kind != SOCK_STREAM:
            return True
        t = self.tcb
        if t is None or t.state in ("SYN_SENT", "SYN_RCVD"):
            return False
        if t.state in ("ESTABLISHED", "CLOSE_WAIT"):
            return t.sndbuf.space() > 0
        return True  # closed or shut down: send reports the error at once

    def sockname(self) -> tuple[str, int]:
        ip, port = self.local or (ANY, 0)
        return ipv4.ntoa(ip), port

    def peername(self) -> tuple[str, int]:
        if self.remote is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return ipv4.ntoa(self.remote[0]), self.remote[1]

    # ---- set-up --------------------------------------------------------------------
    def bind(self, addr: tuple[str, int]) -> None:
        self._check_open()
        if self.local is not None:
            raise OSError(errno.EINVAL, "socket is already bound")
        ip, port = _addr(addr)
        if ip != ANY and not self.stack.is_local(ip):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        if port == 0:
            port = self.stack.ephemeral_port(self.kind)
        for s in self.stack.bound.get((self.kind, port), ()):
            if ANY in (s.local[0], ip) or s.local[0] == ip:
                raise OSError(errno.EADDRINUSE, "Address already in use")
        self._register(ip, port)

    def _register(self, ip: bytes, port: int) -> None:
        self.local = (ip, port)
        self.stack.bound.setdefault((self.kind, port), []).append(self)

    def _autobind(self) -> None:
        if self.local is None:
            self._register(ANY, self.stack.ephemeral_port(self.kind))

    def listen(self, backlog: int) -> None:
        self._check_open()
        if self.kind != SOCK_STREAM:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        if self.tcb is not None:
            raise OSError(errno.EINVAL, "socket is connected")
        self._autobind()
        self.listening, self.backlog = True, max(1, backlog)

    def accept(self) -> "Sock | None":
        self._check_open()
        if not self.listening:
            raise OSError(errno.EINVAL, "socket is not listening")
        if not self.accept_queue:
            return None
        child = self.accept_queue.popleft()
        child.tcb.parent = None
        return child  # may already be reset by the peer: its recv reports it

    def connect(self, addr: tuple[str, int]) -> None:
        """TCP: start the handshake (watch `connected`/`error`). UDP: set the peer."""
        self._check_open()
        dst, port = _addr(addr)
        if self.kind != SOCK_STREAM:
            self.stack.source_for(dst)
            self._autobind()
            self.remote = (dst, port)
            return
        if self.listening:
            raise OSError(errno.EINVAL, "socket is listening")
        if self.tcb is not None:
            if self.tcb.state == "SYN_SENT":
                raise OSError(errno.EALREADY, "Operation already in progress")
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        src = self.stack.source_for(dst)[0]
        if self.local is not None and self.local[0] != ANY:
            src = self.local[0]
        lport = self.local[1] if self.local else self.stack.ephemeral_port(SOCK_STREAM)
        if (src, lport, dst, port) in self.stack.tcbs:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        self.local, self.remote = (src, lport), (dst, port)
        self.tcb = self.stack.new_tcb(self.local, self.remote)
        self.tcb.sock = self
        self.tcb.open_active()

    # ---- data ----------------------------------------------------------------------
    def send(self, data: bytes) -> int:
        self._check_open()
        if self.kind != SOCK_STREAM:
            if self.remote is None:
                raise OSError(errno.EDESTADDRREQ, "Destination address required")
            return self._sendto(data, self.remote)
        t = self.tcb
        if self.error:
            raise OSError(self._take_error(), "connection failed")
        if t is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        if t.state in ("SYN_SENT", "SYN_RCVD"):
            return 0
        if t.state not in ("ESTABLISHED", "CLOSE_WAIT"):
            raise OSError(errno.EPIPE, "Broken pipe")
        return t.send(data)

    def recv(self, n: int) -> bytes | None:
        self._check_open()
        if self.kind != SOCK_STREAM:
            r = self.recvfrom(n)
            return None if r is None else r[0]
        t = self.tcb
        if t is None or self.listening:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        if len(t.rcvbuf) and n > 0:
            return t.recv(n)
        if self.error:
            raise OSError(self._take_error(), "connection failed")
        if t.eof or t.state == "CLOSED" or n <= 0:
            return b""
        return None

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        self._check_open()
        if self.kind == SOCK_STREAM:
            return self.send(data)
        return self._sendto(data, _addr(addr))

    def recvfrom(self, n: int) -> tuple[bytes, tuple[str, int]] | None:
        self._check_open()
        if self.kind == SOCK_STREAM:
            data = self.recv(n)
            return None if data is None else (data, self.peername())
        if self._error:
            raise OSError(self._take_error(), "destination unreachable")
        if not self.rxq:
            return None
        data, addr = self.rxq.popleft()
        self.rx_bytes -= len(data)
        return data[:n], addr  # the rest of a datagram is discarded, as UDP does

    def _sendto(self, data: bytes, addr: tuple[bytes, int]) -> int:
        dst, port = addr
        if self._error:
            raise OSError(self._take_error(), "destination unreachable")
        src, mtu, _gso = self.stack.source_for(dst)
        self._autobind()
        if self.local[0] != ANY:
            src = self.local[0]
        if self.kind == SOCK_ICMP:
            seq = int.from_bytes(data[:2].ljust(2, b"\0"), "big")
            proto, l4 = IPPROTO_ICMP, icmp.build(icmp.ICMP_ECHO, 0, self.local[1], seq, data[2:])
        else:
            if not 0 < port < 65536:
                raise OSError(errno.EINVAL, "bad port")
            proto, l4 = IPPROTO_UDP, udp.build(src, dst, self.local[1], port, data)
        if 20 + len(l4) > min(mtu, 65535):
            raise OSError(errno.EMSGSIZE, "Message too long")
        err = self.stack.ip_output(src, dst, proto, l4, b"", self)
        if err:
            raise OSError(err, "cannot send")
        return len(data)

    # ---- teardown --------------------------------------------------------------------
    def shutdown_write(self) -> None:
        """shutdown(SHUT_WR): send FIN after the queued data; reading goes on."""
        if self.tcb is not None:
            self.tcb.shutdown_write()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.on_event = None
        if self.local is not None:
            peers = self.stack.bound.get((self.kind, self.local[1]), [])
            if self in peers:
                peers.remove(self)
                if not peers:
                    del self.stack.bound[(self.kind, self.local[1])]
        if self.listening:
            for child in list(self.pending) + [s.tcb for s in self.accept_queue]:
                child.parent = None
                child.sock = None
                child.abort()
            self.pending.clear()
            self.accept_queue.clear()
        elif self.tcb is not None:
            self.tcb.close()

    # ---- called by the stack ---------------------------------------------------------
    def _event(self) -> None:
        if self.on_event is not None:
            self.on_event()

    def accepts(self, dst: bytes, src: bytes, sport: int) -> bool:
        """Whether a datagram dst <- (src, sport) is for this (bound, maybe connected) socket."""
        if self.local[0] not in (ANY, dst) and dst[3] != 255:
            return False
        return self.remote is None or self.remote == (src, sport)

    def _deliver(self, data: bytes, src: bytes, sport: int) -> None:
        if self.rx_bytes + len(data) > DGRAM_RCVBUF:
            return  # receive queue full: UDP drops
        self.rxq.append((data, (ipv4.ntoa(src), sport)))
        self.rx_bytes += len(data)
        self._event()

    def unreachable(self, err: int) -> None:
        """A datagram we sent could not reach its next hop (ARP gave up)."""
        self._error = err
        self._event()

    def _syn(self, key: tuple, seg) -> None:
        """A SYN for this listener: a half-open child, unless the backlog is full."""
        if len(self.pending) + len(self.accept_queue) >= self.backlog:
            return  # dropped; the peer's SYN retransmission retries
        local, remote = key[:2], key[2:]
        child = Sock(self.stack, SOCK_STREAM)
        child.local, child.remote = local, remote
        try:
            child.tcb = self.stack.new_tcb(local, remote)
        except OSError:
            return  # no route back to the peer
        child.tcb.sock, child.tcb.parent = child, self
        self.pending.add(child.tcb)
        child.tcb.open_passive(seg)

    def _child_established(self, tcb) -> None:
        self.pending.discard(tcb)
        self.accept_queue.append(tcb.sock)
        self._event()

    def _child_gone(self, tcb) -> None:
        if tcb in self.pending:
            self.pending.discard(tcb)
        # an accepted-queue child that died stays queued: accept() returns it, recv reports

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")


def _addr(addr) -> tuple[bytes, int]:
    try:
        ip, port = addr
    except (TypeError, ValueError):
        raise OSError(errno.EINVAL, f"bad address {addr!r}") from None
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise OSError(errno.EINVAL, f"bad port {port!r}")
    return ipv4.aton(ip), port
