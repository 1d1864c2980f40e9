"""The VFS: open files, descriptors and the one mounted ext2, plus /dev.

Rules:
1. The root filesystem is the ext2 on xvda (domains.xenolinux.fs). Its
   operations are generators that yield block requests; every one runs under
   the filesystem mutex, so two processes never interleave inside ext2.
2. /dev is a small devfs of character devices (console, null, zero)
   resolved by path before ext2 is asked.
3. An OpenFile is Linux's struct file: shared offset and flags; descriptors
   of a process point at OpenFiles.
4. A descriptor's close drops one reference to its OpenFile (put, Linux's
   fput); the last one releases what the device holds (a socket's Sock).
5. O_SYNC and fsync return only after the data and metadata reached the
   disk through blkfront's flush: that is when a write is acknowledged as
   durable.
"""

import errno
import posixpath

from domains.xenolinux import abi
from domains.xenolinux.fs.ext2 import Stat
from domains.xenolinux.task import Mutex

S_IFMT, S_IFDIR, S_IFREG, S_IFCHR = 0o170000, 0o040000, 0o100000, 0o020000


_DEV_STAT = Stat(0, S_IFCHR | 0o666, 1, 0, 0, 0, 0, 0, 0, 0)  # what stat says of /dev/*


def is_dir(mode: int) -> bool:
    return mode & S_IFMT == S_IFDIR


class CharDevice:
    """A character device: reads and writes never touch the disk."""

    name = ""

    def read(self, n: int):
        return b""
        yield  # a generator like every file read

    def write(self, data: bytes):
        return len(data)
        yield


class NullDevice(CharDevice):
    name = "null"


class ZeroDevice(CharDevice):
    name = "zero"

    def read(self, n: int):
        return bytes(n)
        yield


class OpenFile:
    def __init__(self, ino: int, flags: int, dev: CharDevice | None = None) -> None:
        self.ino, self.flags, self.dev = ino, flags, dev
        self.offset = 0
        self.refs = 1

    def put(self) -> None:
        """Drop a reference; the last one releases the device's state (fput)."""
        self.refs -= 1
        release = getattr(self.dev, "release", None)
        if self.refs == 0 and release is not None:
            release()

    @property
    def readable(self) -> bool:
        return self.flags & abi.O_ACCMODE in (abi.O_RDONLY, abi.O_RDWR)

    @property
    def writable(self) -> bool:
        return self.flags & abi.O_ACCMODE in (abi.O_WRONLY, abi.O_RDWR)


class Vfs:
    def __init__(self, devices: dict[str, CharDevice]) -> None:
        self.fs = None  # the mounted ext2, once xvda is up
        self.lock = Mutex()
        self.devices = devices

    # ---- paths -----------------------------------------------------------

    def _locked(self, gen):
        if self.fs is None:
            raise OSError(errno.ENODEV, "no root filesystem mounted")
        yield from self.lock.acquire()
        try:
            return (yield from gen)
        finally:
            self.lock.release()

    @staticmethod
    def absolute(cwd_path: str, path: str) -> str:
        if not path:
            raise OSError(errno.ENOENT, "empty path")
        return posixpath.normpath(posixpath.join(cwd_path, path)).replace("//", "/")

    def _device(self, abspath: str) -> CharDevice | None:
        head, name = posixpath.split(abspath)
        return self.devices.get(name) if head == "/dev" else None

    def _parent(self, cwd: int, path: str):
        head, name = posixpath.split(path.rstrip("/") or "/")
        if not name:
            raise OSError(errno.EEXIST, "is the root")
        parent = yield from self.fs.namei(head or ".", cwd)
        return parent, name

    # ---- files -----------------------------------------------------------

    def open(self, cwd: int, cwd_path: str, path: str, flags: int, mode: int = 0o644):
        dev = self._device(self.absolute(cwd_path, path))
        if dev is not None:
            return OpenFile(0, flags, dev)
        return (yield from self._locked(self._open(cwd, path, flags, mode)))

    def _open(self, cwd: int, path: str, flags: int, mode: int):
        try:
            ino = yield from self.fs.namei(path, cwd)
            if flags & abi.O_CREAT and flags & abi.O_EXCL:
                raise OSError(errno.EEXIST, path)
        except OSError as err:
            if err.errno != errno.ENOENT or not flags & abi.O_CREAT:
                raise
            parent, name = yield from self._parent(cwd, path)
            ino = yield from self.fs.create(parent, name, mode & 0o7777)
        st = yield from self.fs.stat(ino)
        f = OpenFile(ino, flags)
        if is_dir(st.mode) and f.writable:
            raise OSError(errno.EISDIR, path)
        if flags & abi.O_DIRECTORY and not is_dir(st.mode):
            raise OSError(errno.ENOTDIR, path)
        if flags & abi.O_TRUNC and f.writable and st.size:
            yield from self.fs.truncate(ino, 0)
        return f

    def read(self, f: OpenFile, n: int):
        if not f.readable:
            raise OSError(errno.EBADF, "not open for reading")
        if f.dev is not None:
            return (yield from f.dev.read(n))
        data = yield from self._locked(self.fs.read(f.ino, f.offset, n))
        f.offset += len(data)
        return data

    def write(self, f: OpenFile, data: bytes):
        if not f.writable:
            raise OSError(errno.EBADF, "not open for writing")
        if f.dev is not None:
            return (yield from f.dev.write(data))
        return (yield from self._locked(self._write(f, data)))

    def _write(self, f: OpenFile, data: bytes):
        if f.flags & abi.O_APPEND:
            f.offset = (yield from self.fs.stat(f.ino)).size
        n = yield from self.fs.write(f.ino, f.offset, data)
        f.offset += n
        if f.flags & abi.O_SYNC == abi.O_SYNC:
            yield from self.fs.fsync(f.ino)
        return n

    def lseek(self, f: OpenFile, offset: int, whence: int):
        if f.dev is not None:
            raise OSError(errno.ESPIPE, "a device")
        base = {abi.SEEK_SET: 0, abi.SEEK_CUR: f.offset}.get(whence)
        if whence == abi.SEEK_END:
            base = (yield from self._locked(self.fs.stat(f.ino))).size
        if base is None or base + offset < 0:
            raise OSError(errno.EINVAL, "bad seek")
        f.offset = base + offset
        return f.offset

    def fsync(self, f: OpenFile):
        if f.dev is None:
            yield from self._locked(self.fs.fsync(f.ino))
        return 0

    def fstat(self, f: OpenFile):
        if f.dev is not None:
            return _DEV_STAT
        return (yield from self._locked(self.fs.stat(f.ino)))

    # ---- names -----------------------------------------------------------

    def stat(self, cwd: int, cwd_path: str, path: str):
        if self._device(self.absolute(cwd_path, path)) is not None:
            return _DEV_STAT
        return (yield from self._locked(self._stat(cwd, path)))

    def _stat(self, cwd: int, path: str):
        ino = yield from self.fs.namei(path, cwd)
        return (yield from self.fs.stat(ino))

    def lookup_dir(self, cwd: int, path: str):
        """The inode of a directory (chdir); ENOTDIR otherwise."""
        return (yield from self._locked(self._lookup_dir(cwd, path)))

    def _lookup_dir(self, cwd: int, path: str):
        ino = yield from self.fs.namei(path, cwd)
        if not is_dir((yield from self.fs.stat(ino)).mode):
            raise OSError(errno.ENOTDIR, path)
        return ino

    def readdir(self, cwd: int, cwd_path: str, path: str):
        if self.absolute(cwd_path, path) == "/dev":
            return [(name, 0, 3) for name in sorted(self.devices)]
        return (yield from self._locked(self._readdir(cwd, path)))

    def _readdir(self, cwd: int, path: str):
        ino = yield from self._lookup_dir(cwd, path)
        return (yield from self.fs.readdir(ino))

    def _in_parent(self, cwd: int, path: str, op: str, *extra):
        parent, name = yield from self._parent(cwd, path)
        return (yield from getattr(self.fs, op)(parent, name, *extra))

    def unlink(self, cwd: int, path: str):
        return (yield from self._locked(self._in_parent(cwd, path, "unlink")))

    def mkdir(self, cwd: int, path: str, mode: int = 0o755):
        return (yield from self._locked(self._in_parent(cwd, path, "mkdir", mode)))

    def rmdir(self, cwd: int, path: str):
        return (yield from self._locked(self._in_parent(cwd, path, "rmdir")))

    def rename(self, cwd: int, old: str, new: str):
        return (yield from self._locked(self._rename(cwd, old, new)))

    def _rename(self, cwd: int, old: str, new: str):
        src_dir, src = yield from self._parent(cwd, old)
        dst_dir, dst = yield from self._parent(cwd, new)
        return (yield from self.fs.rename(src_dir, src, dst_dir, dst))

    def sync(self):
        if self.fs is None:
            return 0
        return (yield from self._locked(self.fs.sync()))
