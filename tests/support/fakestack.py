"""A loopback-only stand-in for the guest TCP/IP core (contract §4 of issue 6).

Test support only, never product code: it lets the socket system calls and the guest
programs be developed and tested before the real `domains.xenolinux.net` lands. It keeps
the contract's shape and its asynchrony: a socket call only queues work, and the work
(delivery, handshake, FIN, refusal) happens in flush(), as frames would leave and come
back through lo. Any address that is not 127.x.y.y or a local interface address gets no
answer: a TCP connect to it times out through a stack timer (next_deadline_ns/on_timer),
which exercises the caller's timer wiring.
"""

import errno
import itertools
from collections import deque

SOCK_STREAM, SOCK_DGRAM, SOCK_ICMP = 1, 2, 3
SNDBUF = RCVBUF = 64 * 1024
CONNECT_TIMEOUT_NS = 200_000_000


class FakeStack:
    def __init__(self, now_ns, rng=None) -> None:
        self.now_ns = now_ns
        self.bound: dict[tuple[int, int], FakeSock] = {}
        self.work: deque = deque()
        self.timers: list[tuple[int, object]] = []
        self.ifaces: dict[str, tuple] = {}
        self.gateway: str | None = None
        self.on_change = None
        self.flushes = 0
        self._ephemeral = itertools.count(49152)

    def add_interface(self, name, dev, ip, prefix) -> None:
        self.ifaces[name] = (dev, ip, prefix)
        if dev is not None:
            dev.receiver = lambda frame, gso: None  # loopback only: frames are ignored

    def set_default_route(self, gateway) -> None:
        self.gateway = gateway

    def next_deadline_ns(self):
        return min((t for t, _ in self.timers), default=None)

    def on_timer(self) -> None:
        now = self.now_ns()
        due = [fn for t, fn in self.timers if t <= now]
        self.timers = [(t, fn) for t, fn in self.timers if t > now]
        for fn in due:
            fn()

    def flush(self) -> None:
        self.flushes += 1
        while self.work:
            self.work.popleft()()

    def socket(self, kind):
        if kind not in (SOCK_STREAM, SOCK_DGRAM, SOCK_ICMP):
            raise OSError(errno.EINVAL, "bad socket kind")
        return FakeSock(self, kind)

    # ---- helpers for FakeSock ----------------------------------------------

    def is_local(self, ip: str) -> bool:
        return ip.startswith("127.") or any(i[1] == ip for i in self.ifaces.values())

    def port(self) -> int:
        return next(self._ephemeral)

    def add_timer(self, delay_ns, fn) -> None:
        self.timers.append((self.now_ns() + delay_ns, fn))
        if self.on_change is not None:
            self.on_change()


class FakeSock:
    def __init__(self, stack: FakeStack, kind: int) -> None:
        self.stack, self.kind = stack, kind
        self.local: tuple | None = None
        self.peer_sock: FakeSock | None = None
        self.connected, self.error = False, 0
        self.listening, self.backlog = False, deque()
        self.rx = bytearray()
        self.tx = bytearray()  # queued, not yet moved to the peer (by flush)
        self.dgrams: deque = deque()
        self.fin_in = self.fin_out = self.closed = False
        self.on_event = None

    def _event(self) -> None:
        if self.on_event is not None:
            self.on_event()

    def _autobind(self) -> None:
        if self.local is None:
            self.bind(("127.0.0.1", 0))  # loopback is all the fake has

    def bind(self, addr) -> None:
        ip, port = addr
        if self.local is not None:
            raise OSError(errno.EINVAL, "already bound")
        port = port or self.stack.port()
        key = (self.kind, port)
        if key in self.stack.bound:
            raise OSError(errno.EADDRINUSE, "address in use")
        self.stack.bound[key] = self
        self.local = (ip, port)

    def listen(self, backlog) -> None:
        self._autobind()
        self.listening = True

    def accept(self):
        if not self.listening:
            raise OSError(errno.EINVAL, "not listening")
        return self.backlog.popleft() if self.backlog else None

    def connect(self, addr) -> None:
        if self.kind != SOCK_STREAM:
            raise OSError(errno.EOPNOTSUPP, "stream only in the fake")
        if self.connected:
            raise OSError(errno.EISCONN, "connected")
        self._autobind()
        self.stack.work.append(lambda: self._handshake(addr))

    def _handshake(self, addr) -> None:
        ip, port = addr
        if not self.stack.is_local(ip):
            self.stack.add_timer(CONNECT_TIMEOUT_NS, lambda: self._fail(errno.ETIMEDOUT))
            return
        lst = self.stack.bound.get((SOCK_STREAM, port))
        if lst is None or not lst.listening:
            self._fail(errno.ECONNREFUSED)
            return
        child = FakeSock(self.stack, SOCK_STREAM)
        child.local, child.connected, child.peer_sock = (ip, port), True, self
        self.peer_sock, self.connected = child, True
        lst.backlog.append(child)
        lst._event()
        self._event()

    def _fail(self, err) -> None:
        if not self.connected:
            self.error = err
            self._event()

    def send(self, data: bytes) -> int:
        if self.error:
            raise OSError(self.error, "socket error")
        if not self.connected:
            raise OSError(errno.ENOTCONN, "not connected")
        if self.fin_out or self.peer_sock is None or self.peer_sock.closed:
            raise OSError(errno.EPIPE, "broken pipe")
        n = min(len(data), SNDBUF - len(self.tx))
        if n:
            self.tx += data[:n]
            self.stack.work.append(self._push)
        return n

    def _push(self) -> None:
        peer = self.peer_sock
        if peer is None or peer.closed:
            self.tx.clear()
            return
        n = min(len(self.tx), RCVBUF - len(peer.rx))
        if n:
            peer.rx += self.tx[:n]
            del self.tx[:n]
            peer._event()
            self._event()  # send buffer space
        if not self.tx and self.fin_out and not peer.fin_in:
            peer.fin_in = True
            peer._event()

    def recv(self, n: int):
        if self.rx:
            data = bytes(self.rx[:n])
            del self.rx[:n]
            if self.peer_sock is not None:
                self.stack.work.append(self.peer_sock._push)  # a window update
            return data
        if self.fin_in:
            return b""
        if self.error:
            raise OSError(self.error, "socket error")
        if not self.connected:
            raise OSError(errno.ENOTCONN, "not connected")
        return None

    def sendto(self, data: bytes, addr) -> int:
        if self.kind == SOCK_STREAM:
            return self.send(data)
        self._autobind()
        src = ("127.0.0.1", self.local[1] if self.kind == SOCK_DGRAM else 0)
        self.stack.work.append(lambda: self._datagram(bytes(data), addr, src))
        return len(data)

    def _datagram(self, data, addr, src) -> None:
        ip, port = addr
        if not self.stack.is_local(ip):
            return
        if self.kind == SOCK_ICMP:  # the echo reply comes back to us
            self.dgrams.append((data, (ip, 0)))
            self._event()
            return
        dst = self.stack.bound.get((SOCK_DGRAM, port))
        if dst is not None and not dst.closed:
            dst.dgrams.append((data, src))
            dst._event()

    def recvfrom(self, n: int):
        if self.kind == SOCK_STREAM:
            data = self.recv(n)
            return None if data is None else (data, None)
        if self.dgrams:
            data, src = self.dgrams.popleft()
            return data[:n], src
        return None

    def shutdown_write(self) -> None:
        self.fin_out = True
        self.stack.work.append(self._push)

    def sockname(self):
        return self.local or ("0.0.0.0", 0)

    def peername(self):
        if self.peer_sock is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self.peer_sock.sockname()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.local is not None and self.stack.bound.get((self.kind, self.local[1])) is self:
            del self.stack.bound[(self.kind, self.local[1])]
        if self.kind == SOCK_STREAM and self.connected:
            self.fin_out = True
            self.stack.work.append(self._push)

    def readable(self) -> bool:
        return bool(self.rx or self.fin_in or self.error or self.backlog or self.dgrams)

    def writable(self) -> bool:
        if self.kind != SOCK_STREAM:
            return True
        return self.connected and len(self.tx) < SNDBUF or bool(self.error)
