"""A synchronous driver: runs ext2 generators against a plain image file.

Rules:
1. For tests and tools, never for the guest kernel (whose driver is
   blockdev.py over blkfront): it blocks the caller on os.pread/os.pwrite.
2. ReadBlocks and WriteBlocks are served run by run (consecutive blocks in
   one system call); Flush is os.fdatasync. A block past the end of the
   image reads as an error, as a disk would answer.
3. Any OSError of a request is thrown into the generator, which decides
   what to do with it; a request of an unknown type is a TypeError thrown
   the same way.
4. ``drive`` takes the request handler as a parameter, so a test can count
   requests or inject faults around ``perform``.
"""

import errno
import os
from collections.abc import Callable, Generator
from typing import Any

from domains.xenolinux.fs.blockreq import Flush, ReadBlocks, WriteBlocks


def _runs(nos: list[int]) -> list[tuple[int, int]]:
    """(first, count) of each run of consecutive numbers in sorted `nos`."""
    out: list[tuple[int, int]] = []
    for no in nos:
        if out and out[-1][0] + out[-1][1] == no:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((no, 1))
    return out


def _read(fd: int, req: ReadBlocks) -> list[bytes]:
    bs, got = req.block_size, {}
    for first, count in _runs(sorted(set(req.nos))):
        data = os.pread(fd, bs * count, first * bs)
        if len(data) != bs * count:
            raise OSError(errno.EIO, f"read of blocks {first}+{count} past the end of the image")
        for i in range(count):
            got[first + i] = data[i * bs:(i + 1) * bs]
    return [got[no] for no in req.nos]


def _write(fd: int, req: WriteBlocks) -> None:
    bs, blocks = req.block_size, dict(req.blocks)
    for first, count in _runs(sorted(blocks)):
        data = b"".join(blocks[first + i] for i in range(count))
        if os.pwrite(fd, data, first * bs) != len(data):
            raise OSError(errno.EIO, f"short write of blocks {first}+{count}")


def perform(fd: int, req: Any) -> Any:
    """Carry out one request on `fd`; its result, or an OSError."""
    if isinstance(req, ReadBlocks):
        return _read(fd, req)
    if isinstance(req, WriteBlocks):
        return _write(fd, req)
    if isinstance(req, Flush):
        return os.fdatasync(fd)
    raise TypeError(f"not a block request: {req!r}")


def drive(gen: Generator[Any, Any, Any], handle: Callable[[Any], Any]) -> Any:
    """Run `gen` to completion, answering each request with `handle(req)`;
    exceptions of `handle` are thrown into `gen`. Returns `gen`'s value."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            req = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            value = handle(req)
        except (OSError, TypeError) as exc:
            error = exc


def run(gen: Generator[Any, Any, Any], path_or_fd: str | os.PathLike | int) -> Any:
    """Run `gen` against the image at `path_or_fd` (a path, or an open fd)."""
    if isinstance(path_or_fd, int):
        return drive(gen, lambda req: perform(path_or_fd, req))
    fd = os.open(path_or_fd, os.O_RDWR)
    try:
        return drive(gen, lambda req: perform(fd, req))
    finally:
        os.close(fd)
