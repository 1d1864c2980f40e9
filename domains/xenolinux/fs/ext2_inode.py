"""In-core inodes: parsed views of on-disk inodes that live for one operation.

Rules:
1. The buffer cache holds the only copy. ``iget`` reads the inode table
   block, holds it for the running operation and parses the inode; ``put``
   packs the changed inode straight back into that held buffer and marks it
   dirty, without I/O. No inode outlives an operation, so there is no inode
   cache to keep coherent with the disk.
2. Within one operation an inode number has one InodeRef: a rename inside
   one directory changes one object, not two copies that overwrite each other.
3. A new inode's slot is zeroed whole (the tail of a large inode too) before
   its fields are set; a large inode gets i_extra_isize 32 and its creation
   time, as Linux writes them.
4. i_blocks counts 512-byte sectors of every block the inode owns: data,
   indirect blocks and its extended-attribute block.
"""

import errno
import stat
import struct
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from domains.xenolinux.fs.ext2_alloc import Volume
from domains.xenolinux.fs.ext2_layout import (
    EXTRA_ISIZE,
    FT_BLKDEV,
    FT_CHRDEV,
    FT_DIR,
    FT_FIFO,
    FT_REG_FILE,
    FT_SOCK,
    FT_SYMLINK,
    FT_UNKNOWN,
    GOOD_OLD_INODE_SIZE,
    INODE_EXTRA_FORMAT,
    FsError,
    Inode,
)

Io = Generator[Any, Any, Any]

_FILE_TYPES = {stat.S_IFREG: FT_REG_FILE, stat.S_IFDIR: FT_DIR, stat.S_IFCHR: FT_CHRDEV,
               stat.S_IFBLK: FT_BLKDEV, stat.S_IFIFO: FT_FIFO, stat.S_IFSOCK: FT_SOCK,
               stat.S_IFLNK: FT_SYMLINK}


def file_type(mode: int) -> int:
    """The directory-entry file type (EXT2_FT_*) of an inode mode."""
    return _FILE_TYPES.get(stat.S_IFMT(mode), FT_UNKNOWN)


@dataclass(eq=False, slots=True)
class InodeRef:
    """Inode `ino`, parsed from the held inode-table `block` at `offset`."""

    ino: int
    inode: Inode
    block: int
    offset: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.inode.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.inode.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.inode.mode)


class InodeTable:
    """iget/put of inodes through the buffer cache (one operation's view)."""

    def __init__(self, vol: Volume) -> None:
        self.vol = vol
        self.sectors_per_block = vol.block_size // 512
        self._open: dict[int, InodeRef] = {}

    def iget(self, ino: int) -> Io:
        """Generator: the InodeRef of `ino`; its table block is held until the
        operation ends."""
        ref = self._open.get(ino)
        if ref is not None:
            return ref
        block, offset = self.vol.inode_location(ino)
        buf = yield from self.vol.cache.get(block)
        self.vol.hold(block)
        ref = self._open[ino] = InodeRef(ino, Inode.unpack_from(buf, offset), block, offset)
        return ref

    def put(self, ref: InodeRef) -> None:
        """Write `ref.inode` back into its (held) table block."""
        ref.inode.pack_into(self.vol.cache.peek(ref.block), ref.offset)
        self.vol.cache.mark_dirty(ref.block)

    def end_operation(self) -> None:
        self._open.clear()

    def init(self, ref: InodeRef, mode: int, links: int, now: int) -> None:
        """Turn the (free) slot of `ref` into a new inode and put it."""
        buf = self.vol.cache.peek(ref.block)
        size = self.vol.inode_size
        buf[ref.offset:ref.offset + size] = bytes(size)
        ref.inode = Inode.unpack_from(buf, ref.offset)
        ino = ref.inode
        ino.mode, ino.links_count = mode, links
        ino.atime = ino.ctime = ino.mtime = now
        if size >= GOOD_OLD_INODE_SIZE + EXTRA_ISIZE:
            # i_extra_isize, i_checksum_hi, 3 x *_extra, i_crtime, ...
            struct.pack_into(INODE_EXTRA_FORMAT, buf, ref.offset + GOOD_OLD_INODE_SIZE,
                             EXTRA_ISIZE, 0, 0, 0, 0, now, 0, 0, 0)
        self.put(ref)

    def add_blocks(self, ref: InodeRef, count: int) -> None:
        """Count `count` more (or fewer, if negative) blocks in i_blocks (no put)."""
        value = ref.inode.blocks_lo + count * self.sectors_per_block
        if not 0 <= value < 1 << 32:
            raise FsError(errno.EFBIG, f"ext2: i_blocks of inode {ref.ino} would overflow")
        ref.inode.blocks_lo = value

    def has_block_tree(self, ref: InodeRef) -> bool:
        """Whether i_block holds block pointers: not for devices, fifos,
        sockets and fast symlinks (whose target lives in i_block)."""
        if ref.is_reg or ref.is_dir:
            return True
        if not ref.is_symlink:
            return False
        ea = self.sectors_per_block if ref.inode.file_acl else 0
        return ref.inode.blocks_lo - ea > 0
