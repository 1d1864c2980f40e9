"""The disk's medium: a raw image file, read and written in place.

Rules:
1. DMA is straight into the frames: preadv/pwritev take the memoryviews of
   the target frames, so the kernel copies between the page cache and the
   domain's memory object with no bounce buffer in between.
2. sync() is fdatasync(2) of the image: after it returns, every write that
   returned before it is on stable storage (it survives a SIGKILL of any
   process; only a power cut would need O_DIRECT and a real disk).
3. discard punches a hole (the range then reads as zeros); where the file
   system cannot, it writes zeros, so discard always "deterministically
   reads zero" as the device advertises.
"""

import ctypes
import errno
import os

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_ZEROS = bytes(1 << 20)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


class ImageFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    def readv(self, offset: int, views: list[memoryview]) -> int:
        return _all(os.preadv, self.fd, views, offset)

    def writev(self, offset: int, views: list[memoryview]) -> int:
        return _all(os.pwritev, self.fd, views, offset)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if _libc.fallocate(self.fd, mode, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
        self._write_zeros(offset, length)

    def _write_zeros(self, offset: int, length: int) -> None:
        while length:
            n = os.pwrite(self.fd, _ZEROS[:min(length, len(_ZEROS))], offset)
            offset, length = offset + n, length - n

    def close(self) -> None:
        os.close(self.fd)


def _all(call, fd: int, views: list[memoryview], offset: int) -> int:
    """preadv/pwritev until done or end of file; returns the bytes moved
    (a regular file may still return short, e.g. after a signal)."""
    want, done = sum(len(v) for v in views), 0
    while done < want:
        n = call(fd, _advance(views, done) if done else views, offset + done)
        if n <= 0:
            break
        done += n
    return done


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    """The views with their first n bytes dropped."""
    out = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(v[n:] if n else v)
        n = 0
    return out
