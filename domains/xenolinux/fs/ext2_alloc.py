"""The ext2 volume: geometry, superblock, group descriptors and bitmaps.

Rules:
1. The superblock and the group descriptor table stay held in the buffer
   cache for the whole mount. Every change of a count is packed into them at
   once (write-through): a sync has nothing to assemble, and an error loses
   nothing.
2. Allocation is two-phase. ``find_block``/``find_inode`` and the
   ``prepare_*`` generators read bitmaps and hold them for the running
   operation but change nothing; ``take_*``/``release_*`` (plain functions,
   no I/O) change a bit and the three counts (bitmap, group, superblock)
   together. An operation reads everything first and then commits without
   yielding, so a disk error can never leave them disagreeing.
3. ``hold`` keeps a buffer until ``end_operation``, which the filesystem
   calls when a public operation ends, however it ends.
4. The bitmaps alone say what is free. mke2fs marks all metadata used in
   them (superblock backups, the GDT and the reserved GDT blocks of
   resize_inode, bitmaps, inode tables, the padding past the last block), so
   we never allocate a block whose bit is set and never need to know why.
5. Goals: a block goes at or after its goal, in its goal's group first; a
   directory's inode goes to a group with at least average free inodes and
   the most free blocks (Linux 2.4 find_group_dir); any other inode goes to
   its directory's group when that has room.
"""

import errno
import re
from collections import Counter
from collections.abc import Generator
from typing import Any

from domains.xenolinux.fs.bcache import BufferCache
from domains.xenolinux.fs.ext2_layout import (
    DYNAMIC_REV,
    EXT2_MAGIC,
    GOOD_OLD_FIRST_INO,
    GOOD_OLD_INODE_SIZE,
    GOOD_OLD_REV,
    INCOMPAT_FILETYPE,
    INCOMPAT_NAMES,
    RO_COMPAT_LARGE_FILE,
    RO_COMPAT_NAMES,
    ROOT_INO,
    SUPERBLOCK_OFFSET,
    SUPPORTED_INCOMPAT,
    SUPPORTED_RO_COMPAT,
    FsError,
    GroupDesc,
    Superblock,
    corrupt,
    feature_names,
)

Io = Generator[Any, Any, Any]
_NOT_FULL = re.compile(rb"[^\xff]")


def find_zero(bm: bytearray, start: int, end: int) -> int | None:
    """The first clear bit of bitmap `bm` in [start, end), or None."""
    i = start
    while i < end:
        byte = bm[i >> 3]
        if byte == 0xFF:
            m = _NOT_FULL.search(bm, (i >> 3) + 1, (end + 7) >> 3)
            if m is None:
                return None
            i = m.start() << 3
            continue
        if not byte >> (i & 7) & 1:
            return i
        i += 1
    return None


def _bit(bm: bytearray, i: int) -> bool:
    return bool(bm[i >> 3] >> (i & 7) & 1)


def read_superblock(cache: BufferCache) -> Io:
    """Generator: the superblock; switches the cache to the filesystem's block size."""
    no, off = divmod(SUPERBLOCK_OFFSET, cache.block_size)
    buf = yield from cache.get(no)
    sb = Superblock.unpack_from(buf, off)
    if sb.magic != EXT2_MAGIC:
        raise FsError(errno.EINVAL, f"ext2: bad magic 0x{sb.magic:04x}: not an ext2 filesystem")
    if sb.log_block_size > 2:
        raise FsError(errno.EINVAL,
                      f"ext2: block size {1024 << min(sb.log_block_size, 20)} not supported")
    block_size = 1024 << sb.log_block_size
    if block_size != cache.block_size:
        cache.set_block_size(block_size)
        return (yield from read_superblock(cache))
    return sb


def check_superblock(sb: Superblock, block_size: int) -> None:
    """Refuse (EINVAL) what this driver does not implement or cannot trust."""
    if sb.rev_level not in (GOOD_OLD_REV, DYNAMIC_REV):
        raise FsError(errno.EINVAL, f"ext2: revision {sb.rev_level} not supported")
    if sb.rev_level == DYNAMIC_REV:
        _check_features(sb)
        isz = sb.inode_size
        if isz < GOOD_OLD_INODE_SIZE or isz > block_size or isz & (isz - 1):
            raise FsError(errno.EINVAL, f"ext2: inode size {isz} not supported")
    if sb.first_data_block != (1 if block_size == 1024 else 0):
        raise FsError(errno.EINVAL, f"ext2: first data block {sb.first_data_block} is wrong")
    for what, n in (("blocks", sb.blocks_per_group), ("inodes", sb.inodes_per_group)):
        if not 8 <= n <= 8 * block_size or n % 8:
            raise FsError(errno.EINVAL, f"ext2: {n} {what} per group is wrong")
    groups = -(-(sb.blocks_count - sb.first_data_block) // sb.blocks_per_group)
    if sb.blocks_count <= sb.first_data_block or sb.inodes_count > groups * sb.inodes_per_group:
        raise FsError(errno.EINVAL, "ext2: block or inode count is wrong")


def _check_features(sb: Superblock) -> None:
    incompat = sb.feature_incompat & ~SUPPORTED_INCOMPAT
    if incompat:
        raise FsError(errno.EINVAL, "ext2: unsupported incompat features: "
                      + feature_names(incompat, INCOMPAT_NAMES))
    ro = sb.feature_ro_compat & ~SUPPORTED_RO_COMPAT
    if ro:
        raise FsError(errno.EINVAL, "ext2: unsupported ro_compat features (and no read-only "
                      "mounts): " + feature_names(ro, RO_COMPAT_NAMES))


class Volume:
    """Geometry, superblock, group descriptors and allocation of one mounted ext2."""

    def __init__(self, cache: BufferCache, sb: Superblock, groups: list[GroupDesc]) -> None:
        self.cache, self.sb, self.groups = cache, sb, groups
        self.block_size = bs = cache.block_size
        self.sb_block, self.sb_offset = divmod(SUPERBLOCK_OFFSET, bs)
        self.gdt_first = sb.first_data_block + 1
        self.ptrs = bs // 4
        dynamic = sb.rev_level == DYNAMIC_REV
        self.inode_size = sb.inode_size if dynamic else GOOD_OLD_INODE_SIZE
        self.first_ino = sb.first_ino if dynamic else GOOD_OLD_FIRST_INO
        self.filetype = dynamic and bool(sb.feature_incompat & INCOMPAT_FILETYPE)
        self.dynamic = dynamic
        self._held: list[int] = []
        self.pinned: list[int] = []

    @classmethod
    def load(cls, cache: BufferCache) -> Io:
        """Generator: read and check the superblock and group descriptors, and
        hold their blocks for the life of the mount."""
        sb = yield from read_superblock(cache)
        check_superblock(sb, cache.block_size)
        n = -(-(sb.blocks_count - sb.first_data_block) // sb.blocks_per_group)
        per_block = cache.block_size // GroupDesc.SIZE
        first = sb.first_data_block + 1
        nos = list(range(first, first + -(-n // per_block)))
        pinned = [SUPERBLOCK_OFFSET // cache.block_size]
        cache.hold(pinned[0])
        try:
            bufs = yield from cache.get_many(nos)
            for no in nos:
                cache.hold(no)
                pinned.append(no)
            groups = [GroupDesc.unpack_from(bufs[g // per_block], g % per_block * GroupDesc.SIZE)
                      for g in range(n)]
            vol = cls(cache, sb, groups)
            vol._check_groups()
        except BaseException:
            for no in pinned:
                cache.release(no)
            raise
        vol.pinned = pinned
        return vol

    def unpin(self) -> None:
        """Release the superblock and GDT blocks (the filesystem is unmounted)."""
        for no in self.pinned:
            self.cache.release(no)
        self.pinned = []

    def _check_groups(self) -> None:
        itable_blocks = -(-self.sb.inodes_per_group * self.inode_size // self.block_size)
        for g, gd in enumerate(self.groups):
            ends = (gd.block_bitmap, gd.inode_bitmap, gd.inode_table + itable_blocks - 1)
            if not all(self.valid_block(b) for b in ends):
                raise corrupt(f"group {g} descriptor points outside the filesystem")
        if not self.first_ino > ROOT_INO or self.first_ino > self.sb.inodes_count:
            raise FsError(errno.EINVAL, f"ext2: first inode {self.first_ino} is wrong")

    # ---- geometry ----------------------------------------------------------

    def valid_block(self, no: int) -> bool:
        return self.sb.first_data_block <= no < self.sb.blocks_count

    def group_first_block(self, g: int) -> int:
        return self.sb.first_data_block + g * self.sb.blocks_per_group

    def blocks_in_group(self, g: int) -> int:
        return min(self.sb.blocks_per_group, self.sb.blocks_count - self.group_first_block(g))

    def block_group(self, no: int) -> tuple[int, int]:
        """(group, bit) of block `no`."""
        return divmod(no - self.sb.first_data_block, self.sb.blocks_per_group)

    def inode_group(self, ino: int) -> tuple[int, int]:
        """(group, bit) of inode `ino`."""
        return divmod(ino - 1, self.sb.inodes_per_group)

    def inode_goal(self, ino: int) -> int:
        """Where blocks of inode `ino` go when nothing better is known: its group."""
        return self.group_first_block(self.inode_group(ino)[0])

    def inode_location(self, ino: int) -> tuple[int, int]:
        """(block, byte offset) of inode `ino` in its group's inode table."""
        if not 1 <= ino <= self.sb.inodes_count:
            raise FsError(errno.EINVAL, f"ext2: inode {ino} out of range")
        g, idx = self.inode_group(ino)
        blk, off = divmod(idx * self.inode_size, self.block_size)
        return self.groups[g].inode_table + blk, off

    # ---- holds -------------------------------------------------------------

    def hold(self, no: int) -> None:
        """Keep cached block `no` until end_operation()."""
        self.cache.hold(no)
        self._held.append(no)

    def end_operation(self) -> None:
        for no in self._held:
            self.cache.release(no)
        self._held.clear()

    def _bitmap(self, no: int) -> Io:
        buf = yield from self.cache.get(no)
        self.hold(no)
        return buf

    # ---- write-through of counts -------------------------------------------

    def put_superblock(self) -> None:
        self.sb.pack_into(self.cache.peek(self.sb_block), self.sb_offset)
        self.cache.mark_dirty(self.sb_block)

    def _put_group(self, g: int) -> None:
        blk, off = divmod(g * GroupDesc.SIZE, self.block_size)
        self.groups[g].pack_into(self.cache.peek(self.gdt_first + blk), off)
        self.cache.mark_dirty(self.gdt_first + blk)

    def set_large_file(self) -> None:
        """A file passed 2 GiB: the large_file feature must say so (Linux does this)."""
        if not self.sb.feature_ro_compat & RO_COMPAT_LARGE_FILE:
            self.sb.feature_ro_compat |= RO_COMPAT_LARGE_FILE
            self.put_superblock()

    # ---- blocks ------------------------------------------------------------

    def find_block(self, goal: int) -> Io:
        """Generator: a free block at or after `goal` (wrapping), its bitmap held.
        Nothing changes until take_block(). ENOSPC when there is none."""
        if not self.valid_block(goal):
            goal = self.sb.first_data_block
        g0, goal_bit = self.block_group(goal)
        n = len(self.groups)
        for k in range(n):
            g = (g0 + k) % n
            if self.groups[g].free_blocks_count == 0:
                continue
            bm = yield from self._bitmap(self.groups[g].block_bitmap)
            start = goal_bit if k == 0 else 0
            bit = find_zero(bm, start, self.blocks_in_group(g))
            if bit is None and start:
                bit = find_zero(bm, 0, start)
            if bit is not None:
                return self.group_first_block(g) + bit
        raise FsError(errno.ENOSPC, "ext2: no free block")

    def take_block(self, no: int) -> None:
        """Mark block `no` (found by find_block in this operation) used."""
        g, bit = self.block_group(no)
        bm_no = self.groups[g].block_bitmap
        bm = self.cache.peek(bm_no)
        if bm is None or _bit(bm, bit):
            raise RuntimeError(f"take_block({no}) without find_block")
        bm[bit >> 3] |= 1 << (bit & 7)
        self.cache.mark_dirty(bm_no)
        self.groups[g].free_blocks_count -= 1
        self.sb.free_blocks_count -= 1
        self._put_group(g)
        self.put_superblock()

    def prepare_release_blocks(self, nos: list[int]) -> Io:
        """Generator: read and hold the bitmaps that release_blocks(nos) changes."""
        bitmaps = sorted({self.groups[self.block_group(no)[0]].block_bitmap for no in nos})
        if bitmaps:
            yield from self.cache.get_many(bitmaps)
            for no in bitmaps:
                self.hold(no)

    def release_blocks(self, nos: list[int]) -> None:
        """Free blocks `nos` and forget their buffers (after prepare_release_blocks)."""
        freed: Counter[int] = Counter()
        for no in nos:
            g, bit = self.block_group(no)
            bm_no = self.groups[g].block_bitmap
            bm = self.cache.peek(bm_no)
            if _bit(bm, bit):  # a block referenced twice is freed once
                bm[bit >> 3] &= ~(1 << (bit & 7))
                self.cache.mark_dirty(bm_no)
                freed[g] += 1
            self.cache.forget(no)
        for g, count in freed.items():
            self.groups[g].free_blocks_count += count
            self._put_group(g)
        if freed:
            self.sb.free_blocks_count += sum(freed.values())
            self.put_superblock()

    # ---- inodes ------------------------------------------------------------

    def find_inode(self, parent: int, is_dir: bool) -> Io:
        """Generator: a free inode number for a child of `parent`, its bitmap
        held. Nothing changes until take_inode(). ENOSPC when there is none."""
        ipg = self.sb.inodes_per_group
        for g in self._inode_groups(self.inode_group(parent)[0], is_dir):
            bm = yield from self._bitmap(self.groups[g].inode_bitmap)
            bit = find_zero(bm, max(0, self.first_ino - 1 - g * ipg), ipg)
            if bit is not None and g * ipg + bit < self.sb.inodes_count:
                return g * ipg + bit + 1
        raise FsError(errno.ENOSPC, "ext2: no free inode")

    def _inode_groups(self, parent_group: int, is_dir: bool) -> list[int]:
        n = len(self.groups)
        order = [(parent_group + k) % n for k in range(n)]
        order = [g for g in order if self.groups[g].free_inodes_count > 0]
        if is_dir:
            avg = self.sb.free_inodes_count // n
            return sorted(order, key=lambda g: (self.groups[g].free_inodes_count < avg,
                                                -self.groups[g].free_blocks_count))
        return sorted(order, key=lambda g: self.groups[g].free_blocks_count == 0)

    def take_inode(self, ino: int, is_dir: bool) -> None:
        """Mark inode `ino` (found by find_inode in this operation) used."""
        g, bit = self.inode_group(ino)
        bm_no = self.groups[g].inode_bitmap
        bm = self.cache.peek(bm_no)
        if bm is None or _bit(bm, bit):
            raise RuntimeError(f"take_inode({ino}) without find_inode")
        bm[bit >> 3] |= 1 << (bit & 7)
        self._count_inode(g, bm_no, -1, is_dir)

    def prepare_release_inode(self, ino: int) -> Io:
        """Generator: read and hold the bitmap that release_inode(ino) changes."""
        g, _bit_no = self.inode_group(ino)
        yield from self._bitmap(self.groups[g].inode_bitmap)

    def release_inode(self, ino: int, is_dir: bool) -> None:
        """Free inode `ino` (after prepare_release_inode)."""
        g, bit = self.inode_group(ino)
        bm_no = self.groups[g].inode_bitmap
        bm = self.cache.peek(bm_no)
        if _bit(bm, bit):
            bm[bit >> 3] &= ~(1 << (bit & 7))
            self._count_inode(g, bm_no, +1, is_dir)

    def _count_inode(self, g: int, bm_no: int, delta: int, is_dir: bool) -> None:
        self.cache.mark_dirty(bm_no)
        gd = self.groups[g]
        gd.free_inodes_count += delta
        if is_dir:
            gd.used_dirs_count -= delta
        self.sb.free_inodes_count += delta
        self._put_group(g)
        self.put_superblock()
