"""ext2 for the XenoLinux guest kernel: every operation a sans-IO generator.

Rules:
1. Sans-IO (blockreq.py). An operation is a generator: it yields ReadBlocks,
   WriteBlocks and Flush and is resumed with their results; a disk error is
   thrown into it as OSError(EIO) and propagates out. There is no clock
   inside: times come from the injected ``clock()`` (seconds).
2. One operation at a time. The kernel serialises them (the VFS mutex);
   starting one while another is suspended raises RuntimeError. Run each to
   completion: closing one half way skips the steps it has not reached.
3. Read, then commit. An operation first reads and holds all it will change
   (directory blocks, inodes, bitmaps, indirect blocks), then changes it all
   without yielding. A disk error thus stops an operation before any change
   or between two complete steps (each block of a long write, or a directory
   growing by a block, is such a step), never inside one: bitmaps, counts,
   links and entries always agree, and once a later sync() succeeds e2fsck
   finds nothing to fix.
4. Changes stay in the buffer cache (dirty) until sync() or until the cache
   needs room. sync() writes back everything, then Flushes; fsync(ino) is a
   sync() (ext2 has no per-file metadata tracking to do better honestly).
5. Semantics. Names are str (UTF-8; undecodable bytes round-trip as
   surrogates), 1..255 bytes, without "/" or NUL. namei follows symlinks
   (at most 40: ELOOP); symlinks are never created. An inode and its blocks
   are freed when its last link goes: there is no orphan list, so a kernel
   that keeps unlinked files open must defer the unlink itself. Reads do
   not update atime (noatime). New inodes belong to uid 0, gid 0. The
   blocks reserved for root are reported by statfs, not enforced.
"""

import errno
import functools
import stat
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from domains.xenolinux.fs.bcache import BufferCache
from domains.xenolinux.fs.ext2_alloc import Volume
from domains.xenolinux.fs.ext2_dir import Directories, decode_name, encode_name
from domains.xenolinux.fs.ext2_file import (
    MAX_OLD_SIZE,
    BlockMap,
    TruncatePlan,
    max_file_size,
)
from domains.xenolinux.fs.ext2_inode import InodeRef, InodeTable
from domains.xenolinux.fs.ext2_layout import (
    NAME_MAX,
    ROOT_INO,
    FsError,
    corrupt,
)
from domains.xenolinux.fs.ext2_names import Namespace

__all__ = ["ROOT_INO", "Ext2", "FsError", "Stat", "StatFs"]

Io = Generator[Any, Any, Any]
SYMLOOP_MAX = 40


@dataclass(frozen=True, slots=True)
class Stat:
    """What stat() reports; blocks in 512-byte units, times in seconds."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime: int
    mtime: int
    ctime: int
    blocks: int


@dataclass(frozen=True, slots=True)
class StatFs:
    """What statfs() reports (counts of blocks of block_size, and inodes)."""

    block_size: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namelen: int


def _operation(fn):
    """A public operation: one at a time (rule 2); its holds end with it."""

    @functools.wraps(fn)
    def run(self: "Ext2", *args, **kwargs):
        if self._busy:
            raise RuntimeError(f"ext2: {fn.__name__}() while {self._busy}() is running")
        if self._vol is None:
            raise FsError(errno.EINVAL, "ext2: not mounted")
        self._busy = fn.__name__
        try:
            return (yield from fn(self, *args, **kwargs))
        finally:
            self._busy = None
            if self._vol is not None:
                self._vol.end_operation()
            self._inodes.end_operation()

    return run


class Ext2:
    """A mounted ext2 filesystem. Get one with ``yield from Ext2.mount(...)``."""

    def __init__(self, vol: Volume, clock: Callable[[], int],
                 trace: Callable[..., None] | None) -> None:
        self._vol: Volume | None = vol
        self._cache = vol.cache
        self._inodes = InodeTable(vol)
        self._map = BlockMap(vol, self._inodes)
        self._dirs = Directories(vol, self._inodes, self._map)
        self._ns = Namespace(vol, self._inodes, self._map, self._dirs, clock, trace)
        self._clock, self._trace = clock, trace
        self._busy: str | None = None
        self.block_size = vol.block_size
        self._max_size = max_file_size(vol.block_size) if vol.dynamic else MAX_OLD_SIZE
        self._chunk = max(1, self._cache.capacity // 4)  # blocks per read/write batch

    @classmethod
    def mount(cls, cache: BufferCache, clock: Callable[[], int],
              trace: Callable[..., None] | None = None) -> Io:
        """Generator: mount the ext2 on the disk behind `cache` (the cache is
        switched to the filesystem's block size). EINVAL for what this driver
        does not support."""
        if trace is not None and cache.trace is None:
            cache.trace = trace
        vol = yield from Volume.load(cache)
        fs = cls(vol, clock, trace)
        try:
            root = yield from fs._inodes.iget(ROOT_INO)
            if not root.is_dir:
                raise corrupt("the root inode is not a directory")
        except BaseException:
            vol.unpin()
            raise
        finally:
            vol.end_operation()
            fs._inodes.end_operation()
        if trace:
            trace("ext2.mount", block_size=vol.block_size, blocks=vol.sb.blocks_count,
                  inodes=vol.sb.inodes_count)
        return fs

    @_operation
    def unmount(self) -> Io:
        """Generator: sync, then release the cache's pinned metadata; the
        object refuses every later operation."""
        yield from self._sync()
        self._vol.unpin()
        self._vol = None

    # ---- names -------------------------------------------------------------

    @_operation
    def lookup(self, dir_ino: int, name: str) -> Io:
        """Generator: the inode that `name` names in directory `dir_ino`."""
        return (yield from self._lookup(dir_ino, name))

    def _lookup(self, dir_ino: int, name: str) -> Io:
        ref = yield from self._inodes.iget(dir_ino)
        hit = yield from self._dirs.lookup(ref, encode_name(name))
        ino = hit[1].ino if hit else 0
        if self._trace:
            self._trace("ext2.lookup", dir=dir_ino, name=name, ino=ino)
        if not ino:
            raise FsError(errno.ENOENT, f"ext2: no {name!r} in directory {dir_ino}")
        return ino

    @_operation
    def namei(self, path: str, cwd: int = ROOT_INO, follow: bool = True) -> Io:
        """Generator: the inode of `path` (absolute, or relative to `cwd`).
        Symlinks are followed, the last component's only if `follow`."""
        if not path:
            raise FsError(errno.ENOENT, "ext2: empty path")
        cur = ROOT_INO if path.startswith("/") else cwd
        todo = deque(p for p in path.split("/") if p and p != ".")
        links = 0
        while todo:
            name = todo.popleft()
            nxt = yield from self._lookup(cur, name)
            ref = yield from self._inodes.iget(nxt)
            if ref.is_symlink and (todo or follow):
                links += 1
                if links > SYMLOOP_MAX:
                    raise FsError(errno.ELOOP, f"ext2: too many symlinks in {path!r}")
                target = yield from self._readlink(ref)
                if not target:
                    raise FsError(errno.ENOENT, f"ext2: empty symlink in {path!r}")
                todo.extendleft(reversed([p for p in target.split("/") if p and p != "."]))
                cur = ROOT_INO if target.startswith("/") else cur
                continue
            cur = nxt
        ref = yield from self._inodes.iget(cur)
        if path.endswith("/") and not ref.is_dir:
            raise FsError(errno.ENOTDIR, f"ext2: {path!r} is not a directory")
        return cur

    @_operation
    def readlink(self, ino: int) -> Io:
        """Generator: the target of symlink `ino` (EINVAL if it is none)."""
        ref = yield from self._inodes.iget(ino)
        return (yield from self._readlink(ref))

    def _readlink(self, ref: InodeRef) -> Io:
        if not ref.is_symlink:
            raise FsError(errno.EINVAL, f"ext2: inode {ref.ino} is not a symlink")
        size = ref.inode.size
        if not self._inodes.has_block_tree(ref):
            return decode_name(ref.inode.block_bytes()[:size])
        return decode_name((yield from self._read(ref, 0, size)))

    @_operation
    def readdir(self, ino: int) -> Io:
        """Generator: [(name, inode, file type)] of directory `ino`, "." and
        ".." included, in on-disk order; the file type is EXT2_FT_* (0 on a
        filesystem without the filetype feature)."""
        ref = yield from self._inodes.iget(ino)
        entries = yield from self._dirs.listing(ref)
        return [(decode_name(e.name), e.ino, e.ftype) for e in entries]

    # ---- inodes --------------------------------------------------------------

    @_operation
    def stat(self, ino: int) -> Io:
        """Generator: the Stat of inode `ino`."""
        i = (yield from self._inodes.iget(ino)).inode
        return Stat(ino, i.mode, i.links_count, i.uid | i.uid_high << 16,
                    i.gid | i.gid_high << 16, i.size, i.atime, i.mtime, i.ctime, i.blocks_lo)

    @_operation
    def statfs(self) -> Io:
        """Generator (no I/O): the filesystem's counts."""
        sb = self._vol.sb
        return StatFs(self.block_size, sb.blocks_count, sb.free_blocks_count,
                      max(0, sb.free_blocks_count - sb.r_blocks_count), sb.inodes_count,
                      sb.free_inodes_count, NAME_MAX)
        yield  # a generator like every operation

    def _regular(self, ino: int) -> Io:
        ref = yield from self._inodes.iget(ino)
        if ref.is_dir:
            raise FsError(errno.EISDIR, f"ext2: inode {ino} is a directory")
        if not ref.is_reg:
            raise FsError(errno.EINVAL, f"ext2: inode {ino} is not a regular file")
        return ref

    # ---- file data -----------------------------------------------------------

    @_operation
    def read(self, ino: int, offset: int, n: int) -> Io:
        """Generator: up to `n` bytes at `offset` (fewer at the end of the
        file); holes read as zeros."""
        if offset < 0 or n < 0:
            raise FsError(errno.EINVAL, "ext2: negative offset or count")
        ref = yield from self._regular(ino)
        data = yield from self._read(ref, offset, n)
        if self._trace:
            self._trace("ext2.read", ino=ino, offset=offset, n=len(data))
        return data

    def _read(self, ref: InodeRef, offset: int, n: int) -> Io:
        end = min(offset + n, ref.inode.size)
        if offset >= end:
            return b""
        bs, out = self.block_size, bytearray(end - offset)
        first = offset // bs
        while first * bs < end:
            last = min((end - 1) // bs, first + self._chunk - 1)
            phys = yield from self._map.bmap_many(ref, range(first, last + 1))
            real = [p for p in phys if p]
            bufs = dict(zip(real, (yield from self._cache.get_many(real)), strict=True))
            for lb, p in enumerate(phys, first):
                a, b = max(offset, lb * bs), min(end, (lb + 1) * bs)
                if p:
                    out[a - offset:b - offset] = bufs[p][a - lb * bs:b - lb * bs]
            first = last + 1
        return bytes(out)

    @_operation
    def write(self, ino: int, offset: int, data: bytes) -> Io:
        """Generator: write `data` at `offset`, allocating blocks (and extending
        the size) as needed; returns the count written, short only when the
        disk filled up part way (ENOSPC if nothing could be written)."""
        if offset < 0:
            raise FsError(errno.EINVAL, "ext2: negative offset")
        ref = yield from self._regular(ino)
        data = bytes(data)
        end = offset + len(data)
        if not data:
            return 0
        self._check_size(end)
        ref.inode.mtime = ref.inode.ctime = self._clock()
        done = [offset]
        try:
            while done[0] < end:
                yield from self._write_chunk(ref, data, offset, done)
        except FsError as err:
            if err.errno != errno.ENOSPC or done[0] == offset:
                raise
        if self._trace:
            self._trace("ext2.write", ino=ino, offset=offset, n=done[0] - offset)
        return done[0] - offset

    def _check_size(self, size: int) -> None:
        if size > self._max_size:
            raise FsError(errno.EFBIG, f"ext2: size {size} beyond {self._max_size}")

    def _set_size(self, ref: InodeRef, size: int) -> None:
        if size > MAX_OLD_SIZE:
            self._vol.set_large_file()
        ref.inode.size = size

    def _write_chunk(self, ref: InodeRef, data: bytes, offset: int, done: list[int]) -> Io:
        """Write from done[0] up to a chunk of blocks; done[0] follows each block."""
        bs, end = self.block_size, offset + len(data)
        first = done[0] // bs
        last = min((end - 1) // bs, first + self._chunk - 1)
        lo = max(0, first - 1)  # the block before gives the allocation goal
        phys = yield from self._map.bmap_many(ref, range(lo, last + 1))
        goal = phys[0] + 1 if phys[0] else self._vol.inode_goal(ref.ino)
        phys = phys[first - lo:]
        covered = [max(done[0], lb * bs) == lb * bs and min(end, (lb + 1) * bs) == (lb + 1) * bs
                   for lb in range(first, last + 1)]
        partial = [p for p, whole in zip(phys, covered, strict=True) if p and not whole]
        yield from self._cache.get_many(partial)
        for p in partial:
            self._vol.hold(p)
        for lb, p, whole in zip(range(first, last + 1), phys, covered, strict=True):
            if not p:
                p = yield from self._map.map_block(ref, lb, goal)
                buf = self._cache.peek(p)
            else:
                buf = self._cache.new_block(p) if whole else self._cache.peek(p)
            # Commit this block: no yield from here to the end of the iteration.
            a, b = max(done[0], lb * bs), min(end, (lb + 1) * bs)
            buf[a - lb * bs:b - lb * bs] = data[a - offset:b - offset]
            self._cache.mark_dirty(p)
            if b > ref.inode.size:
                self._set_size(ref, b)
            self._inodes.put(ref)
            done[0], goal = b, p + 1

    @_operation
    def truncate(self, ino: int, size: int) -> Io:
        """Generator: set the size of file `ino`: blocks past it are freed
        (indirect blocks too), the partial last block is zeroed past the end;
        growing leaves a hole."""
        if size < 0:
            raise FsError(errno.EINVAL, "ext2: negative size")
        ref = yield from self._regular(ino)
        self._check_size(size)
        old, bs = ref.inode.size, self.block_size
        keep = -(-size // bs)
        plan = TruncatePlan()
        tail = 0
        if size < old:
            plan = yield from self._map.plan_truncate(ref, keep)
            if size % bs:
                (tail,) = yield from self._map.bmap_many(ref, [keep - 1])
            if tail:
                yield from self._cache.get(tail)
                self._vol.hold(tail)
        # Commit.
        self._map.commit_truncate(ref, plan)
        if tail:
            buf = self._cache.peek(tail)
            buf[size % bs:] = bytes(bs - size % bs)
            self._cache.mark_dirty(tail)
        if size != old:
            ref.inode.mtime = ref.inode.ctime = self._clock()
            self._set_size(ref, size)
            self._inodes.put(ref)
        if self._trace:
            self._trace("ext2.truncate", ino=ino, size=size, freed=len(plan.blocks))

    # ---- names --------------------------------------------------------------

    @_operation
    def create(self, dir_ino: int, name: str, mode: int = 0o644) -> Io:
        """Generator: a new regular file `name` in `dir_ino` (EEXIST if taken)."""
        ino = yield from self._ns.new_inode(dir_ino, name, stat.S_IFREG | mode & 0o7777)
        return ino

    @_operation
    def mkdir(self, dir_ino: int, name: str, mode: int = 0o755) -> Io:
        """Generator: a new directory `name` in `dir_ino`, with "." and ".."."""
        ino = yield from self._ns.new_inode(dir_ino, name, stat.S_IFDIR | mode & 0o7777)
        return ino

    @_operation
    def unlink(self, dir_ino: int, name: str) -> Io:
        """Generator: remove the non-directory `name` from `dir_ino`; the inode
        and its blocks are freed with its last link (rule 5)."""
        yield from self._ns.unlink(dir_ino, name)

    @_operation
    def rmdir(self, dir_ino: int, name: str) -> Io:
        """Generator: remove the empty directory `name` from `dir_ino`."""
        yield from self._ns.rmdir(dir_ino, name)

    @_operation
    def rename(self, src_dir: int, src_name: str, dst_dir: int, dst_name: str) -> Io:
        """Generator: move `src_name` of `src_dir` to `dst_name` of `dst_dir`,
        replacing a file there (or an empty directory, by a directory). A
        directory moved to another parent gets its ".." fixed; moving one into
        its own subtree is EINVAL."""
        yield from self._ns.rename(src_dir, src_name, dst_dir, dst_name)

    # ---- durability ----------------------------------------------------------

    @_operation
    def sync(self) -> Io:
        """Generator: write back every dirty block in one batch, then Flush."""
        yield from self._sync()

    @_operation
    def fsync(self, ino: int) -> Io:
        """Generator: make inode `ino` durable; this is a whole sync() (rule 4)."""
        yield from self._sync()

    def _sync(self) -> Io:
        if self._cache.dirty_blocks:  # s_wtime says when the disk was last written
            self._vol.sb.wtime = self._clock()
            self._vol.put_superblock()
        yield from self._cache.sync()
        if self._trace:
            self._trace("ext2.sync")
