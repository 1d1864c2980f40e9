"""Block maps: a file's logical blocks to disk blocks through i_block[15].

Rules:
1. i_block[0..11] map logical blocks 0..11 directly; i_block[12], [13] and
   [14] root the single, double and triple indirect trees, each indirect
   block holding block_size/4 pointers (Linux ``fs/ext2/inode.c``). A zero
   pointer is a hole: it reads as zeros and nothing exists below it.
2. Lookups are batched by tree level: the indirect blocks that a set of
   logical blocks needs one level down are read in one get_many, so reading
   N blocks costs at most one ReadBlocks per level plus one for the data.
3. Mapping for a write allocates in atomic steps. Each new block (indirect
   or data) is found, taken, zeroed, linked into its held parent and counted
   in i_blocks with no yield in between, so a disk error or ENOSPC between
   steps leaves a valid tree (at worst an empty indirect block, which is
   legal) and the bitmaps agreeing with it.
4. Freeing is planned, then committed. ``plan_truncate`` reads every
   indirect block of the part to cut, holds the blocks whose pointers it will
   clear and the bitmaps it will change; ``commit_truncate`` clears the
   pointers, frees the blocks and fixes i_blocks without any I/O.
5. Every pointer read from disk is checked to lie inside the filesystem
   before it is followed (EIO, "corrupt", otherwise).
"""

import errno
import struct
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from domains.xenolinux.fs.ext2_alloc import Volume
from domains.xenolinux.fs.ext2_inode import InodeRef, InodeTable
from domains.xenolinux.fs.ext2_layout import (
    DIND_BLOCK,
    IND_BLOCK,
    N_DIRECT,
    TIND_BLOCK,
    FsError,
    corrupt,
)

Io = Generator[Any, Any, Any]
_U32 = struct.Struct("<I")
MAX_OLD_SIZE = (1 << 31) - 1  # without large_file (and always on revision 0)


def max_file_size(block_size: int) -> int:
    """The largest size of a block-mapped file whose i_blocks (512-byte
    sectors, indirect blocks included) still fits 32 bits (Linux ext2_max_size)."""
    bits = block_size.bit_length() - 1
    ppb = block_size // 4
    upper = ((1 << 32) - 1) >> (bits - 9)
    res = N_DIRECT + ppb + ppb ** 2 + ppb ** 3
    meta = 1 + (1 + ppb) + (1 + ppb + ppb ** 2)
    if res + meta > upper:
        res = upper
        left = upper - N_DIRECT - ppb
        meta = 1
        if left < ppb * ppb:
            meta += 1 + -(-left // ppb)
        else:
            left -= ppb * ppb
            meta += 1 + ppb + 1 + -(-left // ppb) + -(-left // (ppb * ppb))
        res -= meta
    return res << bits


@dataclass
class TruncatePlan:
    """What commit_truncate does: free `blocks`, zero the pointers `clears`
    ((parent block, slot), parent None meaning the inode's i_block)."""

    blocks: list[int] = field(default_factory=list)
    clears: list[tuple[int | None, int]] = field(default_factory=list)


class BlockMap:
    """Logical-to-physical mapping, allocation and freeing for inodes' trees."""

    def __init__(self, vol: Volume, inodes: InodeTable) -> None:
        self.vol, self.inodes, self.cache = vol, inodes, vol.cache
        p = vol.ptrs
        # (i_block slot, tree depth, first logical block, logical blocks under it)
        self._trees = ((IND_BLOCK, 1, N_DIRECT, p),
                       (DIND_BLOCK, 2, N_DIRECT + p, p * p),
                       (TIND_BLOCK, 3, N_DIRECT + p + p * p, p ** 3))
        self.max_blocks = N_DIRECT + p + p * p + p ** 3
        self._all_ptrs = f"<{p}I"

    def path(self, lblk: int) -> tuple[int, ...]:
        """(i_block slot, index at each indirect level...) of logical block `lblk`."""
        if lblk < N_DIRECT:
            return (lblk,)
        for slot, depth, first, span in self._trees:
            if lblk < first + span:
                rel, idx = lblk - first, []
                for _ in range(depth):
                    rel, i = divmod(rel, self.vol.ptrs)
                    idx.append(i)
                return (slot, *reversed(idx))
        raise FsError(errno.EFBIG, f"ext2: logical block {lblk} beyond the triple-indirect tree")

    def _ptr(self, buf: bytearray, index: int) -> int:
        no = _U32.unpack_from(buf, index * 4)[0]
        if no and not self.vol.valid_block(no):
            raise corrupt(f"block pointer {no} outside the filesystem")
        return no

    def _ptrs(self, buf: bytearray) -> tuple[int, ...]:
        """All pointers of an indirect block, checked."""
        ptrs = struct.unpack(self._all_ptrs, buf)
        if any(p and not self.vol.valid_block(p) for p in ptrs):
            raise corrupt("block pointer outside the filesystem in an indirect block")
        return ptrs

    def _top(self, ref: InodeRef, slot: int) -> int:
        no = ref.inode.block[slot]
        if no and not self.vol.valid_block(no):
            raise corrupt(f"inode {ref.ino} points to block {no} outside the filesystem")
        return no

    # ---- lookup ------------------------------------------------------------

    def bmap_many(self, ref: InodeRef, lblks: Iterable[int]) -> Io:
        """Generator: the disk block of each logical block (0 for a hole);
        one get_many per indirect level."""
        lblks = list(lblks)
        paths = [self.path(lb) for lb in lblks]
        cur = [self._top(ref, p[0]) for p in paths]
        for depth in (1, 2, 3):
            todo = [i for i, p in enumerate(paths) if len(p) > depth and cur[i]]
            if not todo:
                break
            nos = sorted({cur[i] for i in todo})
            bufs = dict(zip(nos, (yield from self.cache.get_many(nos)), strict=True))
            for i in todo:
                cur[i] = self._ptr(bufs[cur[i]], paths[i][depth])
        return cur

    # ---- allocation --------------------------------------------------------

    def map_block(self, ref: InodeRef, lblk: int, goal: int) -> Io:
        """Generator: the disk block of `lblk`, allocating it (zeroed, dirty)
        and any missing indirect block on the way, each near `goal`."""
        path = self.path(lblk)
        ptr = self._top(ref, path[0])
        if not ptr:
            ptr = yield from self._link_new(ref, None, path[0], goal)
        for index in path[1:]:
            buf = yield from self.cache.get(ptr)
            self.vol.hold(ptr)
            child = self._ptr(buf, index)
            if not child:
                child = yield from self._link_new(ref, ptr, index, ptr + 1)
            ptr = child
        return ptr

    def _link_new(self, ref: InodeRef, parent: int | None, index: int, goal: int) -> Io:
        no = yield from self.vol.find_block(goal)
        # Commit: no yield from here on (rule 3).
        self.vol.take_block(no)
        self.cache.new_block(no)
        if parent is None:
            ref.inode.block[index] = no
        else:
            _U32.pack_into(self.cache.peek(parent), index * 4, no)
            self.cache.mark_dirty(parent)
        self.inodes.add_blocks(ref, 1)
        self.inodes.put(ref)
        return no

    # ---- freeing -----------------------------------------------------------

    def plan_truncate(self, ref: InodeRef, keep: int) -> Io:
        """Generator: the plan that frees every block of `ref` at logical block
        `keep` and beyond (and indirect blocks left with nothing to map)."""
        plan = TruncatePlan()
        for slot in range(min(keep, N_DIRECT), N_DIRECT):
            if self._top(ref, slot):
                plan.blocks.append(ref.inode.block[slot])
                plan.clears.append((None, slot))
        for slot, depth, first, span in self._trees:
            root = self._top(ref, slot)
            if not root or keep >= first + span:
                continue
            if keep <= first:
                plan.blocks += yield from self._subtree([root], depth)
                plan.clears.append((None, slot))
            else:
                yield from self._trim(plan, root, depth, keep - first)
        yield from self.vol.prepare_release_blocks(plan.blocks)
        return plan

    def _trim(self, plan: TruncatePlan, block: int, depth: int, keep: int) -> Io:
        """Plan to cut the tree of depth `depth` at `block` after its first `keep`
        logical blocks (0 < keep < its span); `block` itself stays."""
        buf = yield from self.cache.get(block)
        self.vol.hold(block)
        child_span = self.vol.ptrs ** (depth - 1)
        partial, rem = divmod(keep, child_span)
        ptrs = self._ptrs(buf)
        whole = [i for i in range(partial + (1 if rem else 0), self.vol.ptrs) if ptrs[i]]
        plan.clears += [(block, i) for i in whole]
        plan.blocks += yield from self._subtree([ptrs[i] for i in whole], depth - 1)
        if rem and ptrs[partial]:
            yield from self._trim(plan, ptrs[partial], depth - 1, rem)

    def _subtree(self, roots: list[int], depth: int) -> Io:
        """Generator: `roots` and every block below them (roots of depth
        `depth`; depth 0 is a data block), read level by level in batches."""
        out, level = list(roots), list(roots)
        batch = max(1, self.cache.capacity // 2)
        while depth >= 1 and level:
            children: list[int] = []
            for i in range(0, len(level), batch):
                bufs = yield from self.cache.get_many(level[i:i + batch])
                for buf in bufs:
                    children += [p for p in self._ptrs(buf) if p]
            out += children
            level, depth = children, depth - 1
        return out

    def commit_truncate(self, ref: InodeRef, plan: TruncatePlan) -> None:
        """Carry out `plan` (no I/O): clear pointers, free blocks, fix i_blocks."""
        for parent, slot in plan.clears:
            if parent is None:
                ref.inode.block[slot] = 0
            else:
                _U32.pack_into(self.cache.peek(parent), slot * 4, 0)
                self.cache.mark_dirty(parent)
        self.vol.release_blocks(plan.blocks)
        self.inodes.add_blocks(ref, -len(plan.blocks))
        self.inodes.put(ref)
