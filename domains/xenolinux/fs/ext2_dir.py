"""Directories: chains of entries in whole blocks, scanned linearly.

Rules:
1. A directory is i_size/block_size whole blocks, none of them a hole. Each
   block is a chain of entries (inode u32, rec_len u16, name_len u8,
   file_type u8, name) whose rec_lens are multiples of 4 and add up to
   exactly the block, so the last entry spans to its end. An entry with
   inode 0 is free space. Without the filetype feature (revision 0)
   name_len is a u16 and there is no file type.
2. Block 0 starts with "." and ".."; they are never removed by name.
3. Inserting takes the first entry with room: a free entry becomes the new
   one; a live entry keeps the space its name needs and gives the rest. Only
   when no block has room does the directory grow by one block holding one
   free entry. Removing merges an entry into the previous one's rec_len; the
   first entry of a block becomes free (inode 0) instead.
4. htree (dir_index) directories read linearly: their index blocks look
   like free space. Whoever modifies a directory clears EXT2_INDEX_FL, as
   ext2 without htree support does; e2fsck accepts the result.
5. Every entry read is checked (rec_len >= 8, 4-aligned, inside the block,
   the name inside the entry); a bad one is EIO "corrupt".
6. ``load`` reads all of a directory's blocks in one batch and holds them
   for the operation, so the later commit (insert/remove) needs no I/O.
"""

import errno
import struct
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from domains.xenolinux.fs.ext2_alloc import Volume
from domains.xenolinux.fs.ext2_file import BlockMap
from domains.xenolinux.fs.ext2_inode import InodeRef, InodeTable
from domains.xenolinux.fs.ext2_layout import (
    DIRENT_FORMAT,
    DIRENT_OLD_FORMAT,
    DIRENT_SIZE,
    EXT2_INDEX_FL,
    FT_DIR,
    NAME_MAX,
    FsError,
    corrupt,
)

Io = Generator[Any, Any, Any]


def encode_name(name: str) -> bytes:
    """The on-disk bytes of a name: UTF-8, undecodable bytes kept as
    surrogates; ENOENT if empty, EINVAL with "/" or NUL, ENAMETOOLONG past 255."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        raise FsError(errno.ENOENT, "ext2: empty name")
    if b"/" in raw or b"\0" in raw:
        raise FsError(errno.EINVAL, f"ext2: bad name {name!r}")
    if len(raw) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, f"ext2: name of {len(raw)} bytes")
    return raw


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def rec_len_for(name_len: int) -> int:
    """The smallest rec_len of an entry with a name of `name_len` bytes."""
    return (DIRENT_SIZE + name_len + 3) & ~3


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry, as found at `offset` of its block."""

    offset: int
    ino: int
    rec_len: int
    name: bytes
    ftype: int


class DirBlock:
    """Parsing and editing of one directory block (no I/O)."""

    def __init__(self, block_size: int, filetype: bool) -> None:
        self.bs, self.filetype = block_size, filetype

    def entries(self, buf: bytearray) -> list[Entry]:
        out, off = [], 0
        while off < self.bs:
            if off + DIRENT_SIZE > self.bs:
                raise corrupt(f"directory entry header past the block end at {off}")
            ino, rec_len, name_len, ftype = struct.unpack_from(DIRENT_FORMAT, buf, off)
            if not self.filetype:
                name_len, ftype = name_len | ftype << 8, 0
            if rec_len < DIRENT_SIZE or rec_len % 4 or off + rec_len > self.bs \
                    or DIRENT_SIZE + name_len > rec_len:
                raise corrupt(f"directory entry at {off}: rec_len {rec_len}, "
                              f"name_len {name_len}")
            name = bytes(buf[off + DIRENT_SIZE:off + DIRENT_SIZE + name_len])
            out.append(Entry(off, ino, rec_len, name, ftype))
            off += rec_len
        return out

    def find(self, buf: bytearray, name: bytes) -> Entry | None:
        for e in self.entries(buf):
            if e.ino and e.name == name:
                return e
        return None

    def room(self, buf: bytearray, name_len: int) -> int | None:
        """The offset of the first entry with room for a `name_len` name."""
        need = rec_len_for(name_len)
        for e in self.entries(buf):
            used = rec_len_for(len(e.name)) if e.ino else 0
            if e.rec_len - used >= need:
                return e.offset
        return None

    def write(self, buf: bytearray, off: int, ino: int, rec_len: int, name: bytes,
              ftype: int) -> None:
        if self.filetype:
            struct.pack_into(DIRENT_FORMAT, buf, off, ino, rec_len, len(name), ftype)
        else:
            struct.pack_into(DIRENT_OLD_FORMAT, buf, off, ino, rec_len, len(name))
        buf[off + DIRENT_SIZE:off + DIRENT_SIZE + len(name)] = name

    def insert(self, buf: bytearray, off: int, ino: int, name: bytes, ftype: int) -> None:
        """Put entry `name` -> `ino` into the room of the entry at `off`."""
        e = self._at(buf, off)
        if e.ino:
            used = rec_len_for(len(e.name))
            self.write(buf, off, e.ino, used, e.name, e.ftype)
            off, rec_len = off + used, e.rec_len - used
        else:
            rec_len = e.rec_len
        self.write(buf, off, ino, rec_len, name, ftype)

    def remove(self, buf: bytearray, off: int) -> None:
        """Remove the entry at `off`: merge it into its predecessor, or free it."""
        prev = None
        for e in self.entries(buf):
            if e.offset == off:
                break
            prev = e
        else:
            raise RuntimeError(f"no directory entry at offset {off}")
        struct.pack_into("<I", buf, off, 0)
        if prev is not None:
            struct.pack_into("<H", buf, prev.offset + 4, prev.rec_len + e.rec_len)

    def set_ino(self, buf: bytearray, off: int, ino: int, ftype: int) -> None:
        """Point the entry at `off` to another inode (rename over a target)."""
        e = self._at(buf, off)
        self.write(buf, off, ino, e.rec_len, e.name, ftype)

    def _at(self, buf: bytearray, off: int) -> Entry:
        for e in self.entries(buf):
            if e.offset == off:
                return e
        raise RuntimeError(f"no directory entry at offset {off}")

    def init_empty(self, buf: bytearray) -> None:
        self.write(buf, 0, 0, self.bs, b"", 0)

    def init_dots(self, buf: bytearray, ino: int, parent: int) -> None:
        """The first block of a new directory: "." and ".." spanning the rest."""
        self.write(buf, 0, ino, 12, b".", FT_DIR)
        self.write(buf, 12, parent, self.bs - 12, b"..", FT_DIR)


class Directories:
    """Directory operations on inodes: load, look up, insert, remove."""

    def __init__(self, vol: Volume, inodes: InodeTable, bmap: BlockMap) -> None:
        self.vol, self.inodes, self.bmap, self.cache = vol, inodes, bmap, vol.cache
        self.blocks = DirBlock(vol.block_size, vol.filetype)

    def load(self, ref: InodeRef) -> Io:
        """Generator: the disk blocks of directory `ref`, read in one batch and held."""
        if not ref.is_dir:
            raise FsError(errno.ENOTDIR, f"ext2: inode {ref.ino} is not a directory")
        n, rest = divmod(ref.inode.size, self.vol.block_size)
        if rest:
            raise corrupt(f"directory {ref.ino} size {ref.inode.size} is not whole blocks")
        phys = yield from self.bmap.bmap_many(ref, range(n))
        if 0 in phys:
            raise corrupt(f"directory {ref.ino} has a hole")
        yield from self.cache.get_many(phys)
        for no in phys:
            self.vol.hold(no)
        return phys

    def lookup(self, ref: InodeRef, name: bytes) -> Io:
        """Generator: (block, Entry) of `name` in directory `ref`, or None."""
        for no in (yield from self.load(ref)):
            e = self.blocks.find(self.cache.peek(no), name)
            if e is not None:
                return no, e
        return None

    def listing(self, ref: InodeRef) -> Io:
        """Generator: every live entry of directory `ref`, in on-disk order."""
        out: list[Entry] = []
        for no in (yield from self.load(ref)):
            out += [e for e in self.blocks.entries(self.cache.peek(no)) if e.ino]
        return out

    def is_empty(self, ref: InodeRef) -> Io:
        """Generator: whether directory `ref` holds nothing but "." and ".."."""
        entries = yield from self.listing(ref)
        return all(e.name in (b".", b"..") for e in entries)

    def prepare_insert(self, ref: InodeRef, name: bytes) -> Io:
        """Generator: (block, offset) where `name` will go, held; EEXIST if it
        exists. May grow the directory by a block (a complete step of its own)."""
        phys = yield from self.load(ref)
        for no in phys:
            if self.blocks.find(self.cache.peek(no), name) is not None:
                raise FsError(errno.EEXIST, f"ext2: {name!r} exists")
        for no in phys:
            off = self.blocks.room(self.cache.peek(no), len(name))
            if off is not None:
                return no, off
        goal = phys[-1] + 1 if phys else self.vol.group_first_block(
            self.vol.inode_group(ref.ino)[0])
        no = yield from self.bmap.map_block(ref, len(phys), goal)
        # Commit the new block: no yield since map_block allocated it. new_block
        # (not peek) in case a block past i_size was already mapped: it held
        # nothing anyway.
        self.blocks.init_empty(self.cache.new_block(no))
        self.vol.hold(no)
        ref.inode.size += self.vol.block_size
        self.inodes.put(ref)
        return no, 0

    def insert(self, ref: InodeRef, slot: tuple[int, int], ino: int, name: bytes,
               ftype: int, now: int) -> None:
        """Commit: the entry `name` -> `ino` at `slot` from prepare_insert."""
        no, off = slot
        self.blocks.insert(self.cache.peek(no), off, ino, name, ftype)
        self.cache.mark_dirty(no)
        self.touch(ref, now)

    def remove(self, ref: InodeRef, no: int, entry: Entry, now: int) -> None:
        """Commit: remove `entry` (found by lookup in this operation) from block `no`."""
        self.blocks.remove(self.cache.peek(no), entry.offset)
        self.cache.mark_dirty(no)
        self.touch(ref, now)

    def retarget(self, ref: InodeRef, no: int, entry: Entry, ino: int, ftype: int,
                 now: int) -> None:
        """Commit: make `entry` name inode `ino` instead."""
        self.blocks.set_ino(self.cache.peek(no), entry.offset, ino, ftype)
        self.cache.mark_dirty(no)
        self.touch(ref, now)

    def prepare_dotdot(self, ref: InodeRef) -> Io:
        """Generator: (block, Entry) of ".." in directory `ref`, held."""
        phys = yield from self.load(ref)
        e = self.blocks.find(self.cache.peek(phys[0]), b"..") if phys else None
        if e is None:
            raise corrupt(f"directory {ref.ino} has no '..' entry")
        return phys[0], e

    def touch(self, ref: InodeRef, now: int) -> None:
        """A modified directory: new mtime/ctime, and no longer an htree."""
        ref.inode.mtime = ref.inode.ctime = now
        ref.inode.flags &= ~EXT2_INDEX_FL
        self.inodes.put(ref)
