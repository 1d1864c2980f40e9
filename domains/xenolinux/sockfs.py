"""Sockets as files: Linux's sockfs over the guest TCP/IP stack (contract §4).

Rules:
1. A socket is an OpenFile whose device is a SocketFile; read/write on it are
   recv/send, close (its last reference) closes the stack's Sock.
2. Blocking is the kernel's: an operation the Sock says would block (None, 0)
   sleeps on the socket's wait queue, which the Sock's on_event wakes (data, a
   connection, send space, an error). The caller then retries; so EAGAIN never
   reaches a blocking call. Sleeps are interruptible (a signal gives EINTR).
3. A Sock's errors are OSError(errno) and reach the program as -errno; a
   pending asynchronous error (sock.error: ECONNREFUSED, ETIMEDOUT, ...) ends
   the sleep and is returned.
4. A datagram socket's connect() only records the default destination (as in
   Linux, nothing goes on the wire); send/recv then use it.
"""

import errno
import ipaddress

from domains.xenolinux import abi
from domains.xenolinux.task import WaitQueue
from domains.xenolinux.vfs import CharDevice

KINDS = (abi.SOCK_STREAM, abi.SOCK_DGRAM, abi.SOCK_ICMP)


def check_addr(addr) -> tuple[str, int]:
    """A sockaddr_in from a program: ("a.b.c.d", port), or EINVAL."""
    if not isinstance(addr, (tuple, list)) or len(addr) != 2:
        raise OSError(errno.EINVAL, "bad address")
    ip, port = addr
    if not isinstance(ip, str) or not isinstance(port, int) or isinstance(port, bool) \
            or not 0 <= port <= 0xFFFF:
        raise OSError(errno.EINVAL, "bad address")
    try:
        return str(ipaddress.IPv4Address(ip)), port
    except ValueError:
        raise OSError(errno.EINVAL, f"bad IPv4 address {ip!r}") from None


class SocketFile(CharDevice):
    name = "socket"

    def __init__(self, net, sock, kind: int) -> None:
        self.net, self.sock, self.kind = net, sock, kind
        self.wq = WaitQueue()
        self.peer: tuple[str, int] | None = None  # a datagram socket's connect()
        self.closed = False
        sock.on_event = self._event

    def _event(self) -> None:
        self.wq.wake_all()

    def _error(self) -> None:
        err = getattr(self.sock, "error", 0)
        if err:
            raise OSError(err, "socket error")

    def _call(self, fn, *args):
        return self.net.call(fn, *args)

    def _try(self, would_block, fn, *args):
        """A non-blocking Sock call; `would_block` if it says so (by value, as the
        contract has it, or as EAGAIN), so EAGAIN never reaches a blocking caller."""
        try:
            return self._call(fn, *args)
        except BlockingIOError:
            return would_block

    # ---- poll ---------------------------------------------------------------

    def poll(self) -> int:
        mask = 0
        if self.sock.readable():
            mask |= abi.POLLIN
        if self.sock.writable():
            mask |= abi.POLLOUT
        if getattr(self.sock, "error", 0):
            mask |= abi.POLLERR
        return mask

    # ---- operations (generators: they may sleep) --------------------------------

    def bind(self, addr) -> None:
        self._call(self.sock.bind, check_addr(addr))

    def listen(self, backlog: int) -> None:
        if self.kind != abi.SOCK_STREAM:
            raise OSError(errno.EOPNOTSUPP, "listen on a datagram socket")
        self._call(self.sock.listen, backlog)

    def accept(self):
        if self.kind != abi.SOCK_STREAM:
            raise OSError(errno.EOPNOTSUPP, "accept on a datagram socket")
        while True:
            new = self._try(None, self.sock.accept)
            if new is not None:
                return SocketFile(self.net, new, self.kind)
            yield self.wq.wait()

    def connect(self, addr):
        addr = check_addr(addr)
        if self.kind != abi.SOCK_STREAM:
            self.peer = addr
            return 0
        self._try(None, self.sock.connect, addr)  # EINPROGRESS, if said, is no error
        while not self.sock.connected:
            self._error()
            yield self.wq.wait()
        return 0

    def send(self, data: bytes):
        if self.kind != abi.SOCK_STREAM:
            if self.peer is None:
                raise OSError(errno.EDESTADDRREQ, "not connected")
            return (yield from self.sendto(data, self.peer))
        total = 0
        while total < len(data):
            n = self._try(0, self.sock.send, data[total:])
            if n:
                total += n
                continue
            self._error()
            try:
                yield self.wq.wait()
            except OSError:
                if total:  # interrupted after a part went: that part is the result
                    return total
                raise
        return total

    def recv(self, n: int):
        while True:
            if self.kind == abi.SOCK_STREAM:
                data = self._try(None, self.sock.recv, n)
            else:
                got = self._try(None, self.sock.recvfrom, n)
                data = None if got is None else got[0]
            if data is not None:
                return data
            self._error()
            yield self.wq.wait()

    def sendto(self, data: bytes, addr):
        if self.kind == abi.SOCK_STREAM:
            return (yield from self.send(data))
        addr = check_addr(addr)
        while True:
            n = self._try(0, self.sock.sendto, data, addr)
            if n:
                return n
            self._error()
            yield self.wq.wait()

    def recvfrom(self, n: int):
        if self.kind == abi.SOCK_STREAM:
            return (yield from self.recv(n)), self.peer
        while True:
            got = self._try(None, self.sock.recvfrom, n)
            if got is not None:
                return got
            self._error()
            yield self.wq.wait()

    def shutdown(self, how: int) -> None:
        """shutdown(2): SHUT_WR (or RDWR) sends FIN after the queued data; the
        model keeps reading (SHUT_RD is accepted and changes nothing)."""
        if how in (abi.SHUT_WR, abi.SHUT_RDWR) and self.kind == abi.SOCK_STREAM:
            self._call(self.sock.shutdown_write)

    def address(self, peer: bool) -> tuple[str, int]:
        """getsockname/getpeername; a datagram socket's peer is its connect()."""
        if peer and self.kind != abi.SOCK_STREAM:
            if self.peer is None:
                raise OSError(errno.ENOTCONN, "not connected")
            return self.peer
        return self.sock.peername() if peer else self.sock.sockname()

    # ---- the file interface (read/write/close) ----------------------------------

    def read(self, n: int):
        return (yield from self.recv(n))

    def write(self, data: bytes):
        return (yield from self.send(data))

    def release(self) -> None:
        """The last descriptor went: close the Sock (a FIN, for TCP)."""
        if not self.closed:
            self.closed = True
            self._call(self.sock.close)
            self.wq.wake_all()
