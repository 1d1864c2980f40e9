"""The thin libc that every guest program is linked with.

Rules:
1. This is user-space code: it runs in the process and reaches the kernel
   only by yielding abi.Syscall (so every libc call that enters the kernel
   is used as `yield from fwrite(...)`). Loads and stores go through the
   process's page tables (`load`, `store`: the model's CPU instructions).
2. Wrappers return what the raw system call returns: a value >= 0, or
   -errno. `strerror(-rc)` names it.
3. stdio: a FILE is unbuffered (each fwrite is one write(2)), so what a
   trace shows is what the program asked; printf formats into a scratch
   buffer in the process's heap, then writes it to fd 1.
4. malloc is a bump allocator over brk (free is a no-op): enough for
   short-lived programs, and every byte of it is demand-zero user memory.
5. Sockets: the raw calls (socket, bind, connect, send, recv, ...) take user
   buffers like read/write; the *_bytes helpers stage Python bytes as
   write_bytes does. Names resolve through /etc/hosts (no DNS in the model).
"""

import os as _os
import random
import zlib as _zlib

from domains.xenolinux.abi import (
    ERRNO,
    O_APPEND,
    O_CREAT,
    O_RDONLY,
    O_RDWR,
    O_SYNC,
    O_TRUNC,
    O_WRONLY,
    SYSCALLS,
    Syscall,
)

_NAMES = {v: k for k, v in ERRNO.items()}
FOPEN_MODES = {
    "r": O_RDONLY, "r+": O_RDWR,
    "w": O_WRONLY | O_CREAT | O_TRUNC, "w+": O_RDWR | O_CREAT | O_TRUNC,
    "a": O_WRONLY | O_CREAT | O_APPEND, "a+": O_RDWR | O_CREAT | O_APPEND,
}


def strerror(err: int) -> str:
    return f"{_NAMES.get(err, 'E?')} ({_os.strerror(err)})"


def crc32(data: bytes, value: int = 0) -> int:
    """CRC-32 (zlib's, as `cksum -a crc32b`) of `data`, continuing from `value`:
    user-space arithmetic."""
    return _zlib.crc32(data, value) & 0xFFFFFFFF


def _is_ipv4(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


def hosts_lookup(text: str, name: str) -> str | None:
    """The address /etc/hosts gives `name` (first match), or None."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and name in words[1:] and _is_ipv4(words[0]):
            return words[0]
    return None


def syscall(name: str, *args):
    return (yield Syscall(name, args))


class FILE:  # noqa: N801 - C's name
    def __init__(self, fd: int, mode: str) -> None:
        self.fd, self.mode = fd, mode

    def __repr__(self) -> str:
        return f"<FILE fd={self.fd} mode={self.mode!r}>"


def instantiate(load, store) -> dict:
    """The libc namespace of one process, bound to its address space."""
    heap = {"next": 0, "end": 0}
    scratch = {"addr": 0, "size": 0}

    def malloc(n: int):
        if heap["next"] == 0:
            heap["next"] = heap["end"] = yield Syscall("brk", (0,))
        addr = (heap["next"] + 15) & ~15
        if addr + n > heap["end"]:
            new = yield Syscall("brk", (addr + n,))
            if new < addr + n:
                return 0
            heap["end"] = new
        heap["next"] = addr + n
        return addr

    def _scratch(n: int):
        if scratch["size"] < n:
            scratch["addr"] = yield from malloc(max(n, 256))
            scratch["size"] = max(n, 256)
        return scratch["addr"]

    def _out(call: str, fd: int, data: bytes, *rest):
        """A call that takes user memory to send: `data` staged there first."""
        buf = yield from _scratch(max(len(data), 1))
        if not buf:
            return -ERRNO["ENOMEM"]
        store(buf, data)
        return (yield Syscall(call, (fd, buf, len(data), *rest)))

    def _in(call: str, fd: int, n: int):
        """A call that fills user memory: bytes, or -errno."""
        buf = yield from _scratch(n)
        if not buf:
            return -ERRNO["ENOMEM"]
        got = yield Syscall(call, (fd, buf, n))
        return got if got < 0 else load(buf, got)

    def write_bytes(fd: int, data: bytes):
        """write(2) of Python bytes: staged in user memory first."""
        return (yield from _out("write", fd, data)) if data else 0

    def read_bytes(fd: int, n: int):
        """read(2) into a scratch buffer; bytes, or -errno."""
        return (yield from _in("read", fd, n))

    def send_bytes(fd: int, data: bytes):
        """send(2) of Python bytes (all of them, as a blocking send does)."""
        return (yield from _out("send", fd, data)) if data else 0

    def recv_bytes(fd: int, n: int):
        """recv(2) into a scratch buffer; bytes (b"": the peer closed), or -errno."""
        return (yield from _in("recv", fd, n))

    def sendto_bytes(fd: int, data: bytes, addr):
        return (yield from _out("sendto", fd, data, addr))

    def recvfrom_bytes(fd: int, n: int):
        """recvfrom(2): (bytes, sender address), or -errno."""
        buf = yield from _scratch(n)
        if not buf:
            return -ERRNO["ENOMEM"]
        got = yield Syscall("recvfrom", (fd, buf, n))
        if not isinstance(got, tuple):
            return got
        return load(buf, got[0]), got[1]

    def gethostbyname(name: str):
        """An IPv4 address for `name`: dotted quads as they are, else /etc/hosts."""
        if _is_ipv4(name):
            return name
        fd = yield Syscall("open", ("/etc/hosts", O_RDONLY, 0))
        if fd < 0:
            return None
        text = b""
        while True:
            chunk = yield from read_bytes(fd, 4096)
            if not isinstance(chunk, bytes) or not chunk:
                break
            text += chunk
        yield Syscall("close", (fd,))
        return hosts_lookup(text.decode("utf-8", "replace"), name)

    def printf(fmt: str, *args):
        return (yield from write_bytes(1, (fmt % args if args else fmt).encode()))

    def eprintf(fmt: str, *args):
        return (yield from write_bytes(2, (fmt % args if args else fmt).encode()))

    def fopen(path: str, mode: str = "r"):
        # "s" (a xenolab extension, like glibc's "e" or "x"): open O_SYNC.
        flags = FOPEN_MODES.get(mode.replace("s", ""))
        if flags is not None and "s" in mode:
            flags |= O_SYNC
        if flags is None:
            return None
        fd = yield Syscall("open", (path, flags, 0o644))
        return FILE(fd, mode) if fd >= 0 else None

    def fwrite(f: FILE, size: int, buf: int):
        return (yield Syscall("write", (f.fd, buf, size)))

    def fread(f: FILE, size: int, buf: int):
        return (yield Syscall("read", (f.fd, buf, size)))

    def fclose(f: FILE):
        return (yield Syscall("close", (f.fd,)))

    def fsync_file(f: FILE):
        return (yield Syscall("fsync", (f.fd,)))

    ns = {"malloc": malloc, "write_bytes": write_bytes, "read_bytes": read_bytes,
          "printf": printf, "eprintf": eprintf, "fopen": fopen, "fwrite": fwrite,
          "fread": fread, "fclose": fclose, "fflush": fsync_file, "load": load,
          "store": store, "strerror": strerror, "syscall": syscall, "FILE": FILE,
          "crc32": crc32, "send_bytes": send_bytes, "recv_bytes": recv_bytes,
          "sendto_bytes": sendto_bytes, "recvfrom_bytes": recvfrom_bytes,
          "gethostbyname": gethostbyname}
    ns.update(_wrappers())
    ns["Random"] = random.Random  # rand(3) for programs: seeded, so runs replay
    return ns


def _wrapper(name: str):
    def call(*args):
        return (yield Syscall(name, args))
    call.__name__ = name
    return call


def _wrappers() -> dict:
    return {name: _wrapper(name) for name in SYSCALLS}
