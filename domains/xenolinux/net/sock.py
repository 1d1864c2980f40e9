"""Skeleton (API only; filled in next commit)."""

import errno
from collections.abc import Callable

SOCK_STREAM, SOCK_DGRAM, SOCK_ICMP = 1, 2, 3


class Sock:
    on_event: Callable[[], None] | None = None
    connected: bool = False
    error: int = 0

    def bind(self, addr: tuple[str, int]) -> None: raise OSError(errno.ENOSYS, "todo")
    def listen(self, backlog: int) -> None: raise OSError(errno.ENOSYS, "todo")
    def accept(self) -> "Sock | None": raise OSError(errno.ENOSYS, "todo")
    def connect(self, addr: tuple[str, int]) -> None: raise OSError(errno.ENOSYS, "todo")
    def send(self, data: bytes) -> int: raise OSError(errno.ENOSYS, "todo")
    def recv(self, n: int) -> bytes | None: raise OSError(errno.ENOSYS, "todo")
    def sendto(self, data: bytes, addr: tuple[str, int]) -> int: raise OSError(errno.ENOSYS, "todo")
    def recvfrom(self, n: int) -> tuple[bytes, tuple[str, int]] | None: raise OSError(errno.ENOSYS, "todo")
    def close(self) -> None: pass
    def readable(self) -> bool: return False
    def writable(self) -> bool: return False
