"""Names: creating, linking, unlinking and renaming inodes in directories.

Rules:
1. Each operation reads and holds everything first (directory blocks,
   inodes, bitmaps, the block tree of an inode it frees), then commits with
   no yield: entries, link counts, used_dirs and the bitmaps change together
   (ext2.py rule 3). Growing a directory by a block for a new entry is a
   complete step of its own, before the commit.
2. Link counts: a file has one per name; a directory two plus one per
   subdirectory (its "." and each child's ".."). A directory moved to
   another parent takes a link from the old parent and gives one to the new.
3. The last link frees the inode: its blocks (tree and extended-attribute
   block, whose h_refcount is dropped when shared), i_size and i_blocks to
   0, i_dtime set, its bitmap bit cleared. There is no orphan list.
4. rename replaces a file by a file and an empty directory by a directory;
   a directory never moves into its own subtree (EINVAL, found by walking
   ".." up from the target directory).
"""

import errno
import stat
import struct
from collections.abc import Callable, Generator
from typing import Any

from domains.xenolinux.fs.ext2_alloc import Volume
from domains.xenolinux.fs.ext2_dir import Directories, decode_name, encode_name
from domains.xenolinux.fs.ext2_file import BlockMap, TruncatePlan
from domains.xenolinux.fs.ext2_inode import InodeRef, InodeTable, file_type
from domains.xenolinux.fs.ext2_layout import (
    EA_HEADER_FORMAT,
    EA_MAGIC,
    FT_DIR,
    FT_REG_FILE,
    LINK_MAX,
    ROOT_INO,
    FsError,
    corrupt,
)

Io = Generator[Any, Any, Any]


class Namespace:
    """create/mkdir/unlink/rmdir/rename on the parts of one mounted ext2."""

    def __init__(self, vol: Volume, inodes: InodeTable, bmap: BlockMap, dirs: Directories,
                 clock: Callable[[], int], trace: Callable[..., None] | None) -> None:
        self._vol, self._cache, self._inodes = vol, vol.cache, inodes
        self._map, self._dirs = bmap, dirs
        self._clock, self._trace = clock, trace
        self.block_size = vol.block_size

    def new_inode(self, dir_ino: int, name: str, mode: int) -> Io:
        """Generator: a new inode of `mode` (a file, or a directory with its
        first block) named `name` in `dir_ino`; its number."""
        raw = encode_name(name)
        is_dir = stat.S_ISDIR(mode)
        dref = yield from self._inodes.iget(dir_ino)
        if raw in (b".", b".."):
            raise FsError(errno.EEXIST, f"ext2: {name!r} exists")
        self.check_live_dir(dref, grows=is_dir)
        slot = yield from self._dirs.prepare_insert(dref, raw)
        ino = yield from self._vol.find_inode(dir_ino, is_dir)
        nref = yield from self._inodes.iget(ino)
        if is_dir:
            blk = yield from self._vol.find_block(self._vol.inode_goal(nref.ino))
        now = self._clock()
        # Commit: no yield from here on.
        self._vol.take_inode(ino, is_dir)
        self._inodes.init(nref, mode, 2 if is_dir else 1, now)
        if is_dir:
            self._vol.take_block(blk)
            self._dirs.blocks.init_dots(self._cache.new_block(blk), ino, dir_ino)
            nref.inode.block[0] = blk
            nref.inode.size = self.block_size
            self._inodes.add_blocks(nref, 1)
            self._inodes.put(nref)
            dref.inode.links_count += 1
        self._dirs.insert(dref, slot, ino, raw, FT_DIR if is_dir else FT_REG_FILE, now)
        if self._trace:
            self._trace("ext2.mkdir" if is_dir else "ext2.create", dir=dir_ino, name=name,
                        ino=ino)
        return ino

    def check_live_dir(self, dref: InodeRef, grows: bool) -> None:
        """A directory that may get a new entry (and a subdirectory if `grows`)."""
        if not dref.is_dir:
            raise FsError(errno.ENOTDIR, f"ext2: inode {dref.ino} is not a directory")
        if dref.inode.links_count == 0:
            raise FsError(errno.ENOENT, f"ext2: directory {dref.ino} was removed")
        if grows and dref.inode.links_count >= LINK_MAX:
            raise FsError(errno.EMLINK, f"ext2: directory {dref.ino} has too many links")

    def unlink(self, dir_ino: int, name: str) -> Io:
        """Generator: remove the non-directory `name` from `dir_ino`; the inode
        and its blocks are freed with its last link."""
        raw = encode_name(name)
        dref = yield from self._inodes.iget(dir_ino)
        no, entry = yield from self._find(dref, raw)
        tref = yield from self._inodes.iget(entry.ino)
        if tref.is_dir:
            raise FsError(errno.EISDIR, f"ext2: {name!r} is a directory")
        last = tref.inode.links_count <= 1
        plan = (yield from self._prepare_release(tref)) if last else None
        now = self._clock()
        # Commit.
        self._dirs.remove(dref, no, entry, now)
        self._drop_link(tref, plan, now)
        if self._trace:
            self._trace("ext2.unlink", dir=dir_ino, name=name, ino=tref.ino, freed=last)

    def _find(self, dref: InodeRef, raw: bytes) -> Io:
        hit = yield from self._dirs.lookup(dref, raw)
        if hit is None:
            raise FsError(errno.ENOENT, f"ext2: no {decode_name(raw)!r} in directory {dref.ino}")
        return hit

    def rmdir(self, dir_ino: int, name: str) -> Io:
        """Generator: remove the empty directory `name` from `dir_ino`."""
        raw = encode_name(name)
        if raw == b".":
            raise FsError(errno.EINVAL, "ext2: rmdir of '.'")
        if raw == b"..":
            raise FsError(errno.ENOTEMPTY, "ext2: rmdir of '..'")
        dref = yield from self._inodes.iget(dir_ino)
        no, entry = yield from self._find(dref, raw)
        tref = yield from self._inodes.iget(entry.ino)
        if not tref.is_dir:
            raise FsError(errno.ENOTDIR, f"ext2: {name!r} is not a directory")
        if not (yield from self._dirs.is_empty(tref)):
            raise FsError(errno.ENOTEMPTY, f"ext2: directory {name!r} is not empty")
        plan = yield from self._prepare_release(tref)
        now = self._clock()
        # Commit.
        self._dirs.remove(dref, no, entry, now)
        dref.inode.links_count -= 1  # the ".." of the removed directory
        self._inodes.put(dref)
        self._drop_link(tref, plan, now)
        if self._trace:
            self._trace("ext2.rmdir", dir=dir_ino, name=name, ino=tref.ino)

    def rename(self, src_dir: int, src_name: str, dst_dir: int, dst_name: str) -> Io:
        """Generator: move `src_name` of `src_dir` to `dst_name` of `dst_dir`,
        replacing a file there (or an empty directory, by a directory). A
        directory moved to another parent gets its ".." fixed; moving one into
        its own subtree is EINVAL."""
        sraw, draw = encode_name(src_name), encode_name(dst_name)
        if {sraw, draw} & {b".", b".."}:
            raise FsError(errno.EINVAL, "ext2: rename of '.' or '..'")
        sref = yield from self._inodes.iget(src_dir)
        dref = yield from self._inodes.iget(dst_dir)
        sno, sentry = yield from self._find(sref, sraw)
        mref = yield from self._inodes.iget(sentry.ino)
        dhit = yield from self._dirs.lookup(dref, draw)
        if dhit is not None and dhit[1].ino == mref.ino:
            return  # two names of one inode: nothing to do (POSIX)
        cross = mref.is_dir and src_dir != dst_dir
        if cross:
            yield from self._check_not_inside(dst_dir, mref.ino)
        victim, vplan, slot = None, None, None
        if dhit is not None:
            victim = yield from self._inodes.iget(dhit[1].ino)
            vplan = yield from self._prepare_victim(mref, victim)
        else:
            self.check_live_dir(dref, grows=cross)
            slot = yield from self._dirs.prepare_insert(dref, draw)
        dotdot = (yield from self._dirs.prepare_dotdot(mref)) if cross else None
        now = self._clock()
        # Commit: no yield from here on.
        ftype = file_type(mref.inode.mode)
        if dhit is not None:
            self._dirs.retarget(dref, dhit[0], dhit[1], mref.ino, ftype, now)
        else:
            self._dirs.insert(dref, slot, mref.ino, draw, ftype, now)
        self._dirs.remove(sref, sno, sentry, now)
        mref.inode.ctime = now
        self._inodes.put(mref)
        if dotdot is not None:
            self._dirs.retarget(mref, dotdot[0], dotdot[1], dst_dir, FT_DIR, now)
            sref.inode.links_count -= 1
            dref.inode.links_count += 1
        if victim is not None:
            if victim.is_dir:
                dref.inode.links_count -= 1  # the victim's ".."
            self._drop_link(victim, vplan, now)
        self._inodes.put(sref)
        self._inodes.put(dref)
        if self._trace:
            self._trace("ext2.rename", src_dir=src_dir, src=src_name, dst_dir=dst_dir,
                        dst=dst_name, ino=mref.ino)

    def _prepare_victim(self, mref: InodeRef, victim: InodeRef) -> Io:
        """Check that `victim` may be replaced by `mref`; plan its release if
        that drops its last link."""
        if mref.is_dir and not victim.is_dir:
            raise FsError(errno.ENOTDIR, f"ext2: inode {victim.ino} is not a directory")
        if not mref.is_dir and victim.is_dir:
            raise FsError(errno.EISDIR, f"ext2: inode {victim.ino} is a directory")
        if victim.is_dir and not (yield from self._dirs.is_empty(victim)):
            raise FsError(errno.ENOTEMPTY, f"ext2: directory {victim.ino} is not empty")
        if victim.is_dir or victim.inode.links_count <= 1:
            return (yield from self._prepare_release(victim))
        return None

    def _check_not_inside(self, dir_ino: int, moved: int) -> Io:
        """EINVAL if directory `dir_ino` is `moved` or below it."""
        cur = dir_ino
        for _ in range(self._vol.sb.inodes_count):
            if cur == moved:
                raise FsError(errno.EINVAL, "ext2: cannot move a directory into itself")
            if cur == ROOT_INO:
                return
            ref = yield from self._inodes.iget(cur)
            _no, entry = yield from self._dirs.prepare_dotdot(ref)
            if entry.ino == cur:
                return
            cur = entry.ino
        raise corrupt("a cycle of '..' entries")

    def _prepare_release(self, ref: InodeRef) -> Io:
        """Generator: read and hold all that freeing `ref` changes; the plan."""
        if self._inodes.has_block_tree(ref):
            plan = yield from self._map.plan_truncate(ref, 0)
        else:
            plan = TruncatePlan()
        ea = ref.inode.file_acl
        if ea:
            if not self._vol.valid_block(ea):
                raise corrupt(f"inode {ref.ino} has EA block {ea} outside the filesystem")
            buf = yield from self._cache.get(ea)
            self._vol.hold(ea)
            magic, refcount = _ea_header(buf)
            if magic != EA_MAGIC:
                raise corrupt(f"EA block {ea} of inode {ref.ino} has a bad magic")
            if refcount <= 1:
                yield from self._vol.prepare_release_blocks([ea])
        yield from self._vol.prepare_release_inode(ref.ino)
        return plan

    def _drop_link(self, ref: InodeRef, plan: TruncatePlan | None, now: int) -> None:
        """Commit: one link less; with `plan` (the last link), free the inode."""
        ref.inode.ctime = now
        if plan is None:
            ref.inode.links_count -= 1
            self._inodes.put(ref)
            return
        self._map.commit_truncate(ref, plan)
        ea = ref.inode.file_acl
        if ea:
            buf = self._cache.peek(ea)
            refcount = _ea_header(buf)[1]
            if refcount <= 1:
                self._vol.release_blocks([ea])
            else:
                struct.pack_into("<I", buf, 4, refcount - 1)  # h_refcount
                self._cache.mark_dirty(ea)
        i = ref.inode
        i.file_acl, i.blocks_lo, i.links_count, i.size, i.dtime = 0, 0, 0, 0, now
        self._inodes.put(ref)
        self._vol.release_inode(ref.ino, ref.is_dir)


def _ea_header(buf: bytearray) -> tuple[int, int]:
    """(h_magic, h_refcount) of an extended-attribute block."""
    magic, refcount, _blocks, _hash = struct.unpack_from(EA_HEADER_FORMAT, buf, 0)
    return magic, refcount
