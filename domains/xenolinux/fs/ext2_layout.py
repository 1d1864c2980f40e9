"""ext2 on-disk layout: named struct formats, their sizes and the constants.

Rules:
1. Everything is little-endian, as on disk. Each record has a ``*_FORMAT``
   and a ``*_SIZE``; a test checks the sizes and the field offsets that
   matter (Linux ``fs/ext2/ext2.h``, e2fsprogs ``ext2_fs.h``).
2. Only the fields this driver uses are named; the bytes around them (the
   rest of the 1024-byte superblock, the tail of a 256-byte inode, a group
   descriptor's reserved words) are preserved because records are packed
   back over the bytes they were read from.
3. Records are plain mutable dataclasses: parse with ``unpack_from``, change
   fields, write back with ``pack_into``. No I/O here.
"""

import errno
import struct
from dataclasses import dataclass, fields
from typing import ClassVar

SUPERBLOCK_OFFSET = 1024  # bytes from the start of the device, whatever the block size
EXT2_MAGIC = 0xEF53
ROOT_INO = 2
GOOD_OLD_REV, DYNAMIC_REV = 0, 1
GOOD_OLD_INODE_SIZE = 128
GOOD_OLD_FIRST_INO = 11
EXTRA_ISIZE = 32  # i_extra_isize of new 256-byte inodes, as mke2fs and Linux write it

N_DIRECT = 12
IND_BLOCK, DIND_BLOCK, TIND_BLOCK = 12, 13, 14
N_BLOCKS = 15
NAME_MAX = 255
LINK_MAX = 32000  # Linux EXT2_LINK_MAX
EXT2_INDEX_FL = 0x1000  # htree directory; cleared when we modify one
FAST_SYMLINK_MAX = 60  # bytes of target stored in i_block

# Feature bits (s_feature_*)
COMPAT_NAMES = {0x1: "dir_prealloc", 0x2: "imagic_inodes", 0x4: "has_journal",
                0x8: "ext_attr", 0x10: "resize_inode", 0x20: "dir_index",
                0x200: "sparse_super2"}
INCOMPAT_FILETYPE = 0x2
INCOMPAT_NAMES = {0x1: "compression", 0x2: "filetype", 0x4: "needs_recovery",
                  0x8: "journal_dev", 0x10: "meta_bg", 0x40: "extent", 0x80: "64bit",
                  0x100: "mmp", 0x200: "flex_bg", 0x400: "ea_inode", 0x1000: "dirdata",
                  0x2000: "metadata_csum_seed", 0x4000: "large_dir", 0x8000: "inline_data",
                  0x10000: "encrypt", 0x20000: "casefold"}
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_LARGE_FILE = 0x2
RO_COMPAT_NAMES = {0x1: "sparse_super", 0x2: "large_file", 0x4: "btree_dir",
                   0x8: "huge_file", 0x10: "uninit_bg", 0x20: "dir_nlink",
                   0x40: "extra_isize", 0x100: "quota", 0x200: "bigalloc",
                   0x400: "metadata_csum", 0x1000: "readonly", 0x2000: "project",
                   0x8000: "verity"}
SUPPORTED_INCOMPAT = INCOMPAT_FILETYPE
SUPPORTED_RO_COMPAT = RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE

# Directory entry file types (with the filetype feature)
FT_UNKNOWN, FT_REG_FILE, FT_DIR, FT_CHRDEV, FT_BLKDEV, FT_FIFO, FT_SOCK, FT_SYMLINK = range(8)

EA_MAGIC = 0xEA020000  # extended-attribute block header


class FsError(OSError):
    """A filesystem error: ``errno`` says which (ENOENT, ENOSPC, ...)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)


def corrupt(message: str) -> FsError:
    """The on-disk structures break ext2's rules: EIO, as Linux reports it."""
    return FsError(errno.EIO, f"ext2: corrupt filesystem: {message}")


def feature_names(bits: int, names: dict[int, str]) -> str:
    """'extent, 64bit' for the bits set in `bits` (unknown ones in hex)."""
    out = [names.get(1 << i, hex(1 << i)) for i in range(32) if bits >> i & 1]
    return ", ".join(out)


class _Record:
    """A record whose dataclass fields are, in order, the items of FORMAT."""

    __slots__ = ()
    FORMAT: ClassVar[str]
    SIZE: ClassVar[int]

    def __init_subclass__(cls) -> None:
        cls.SIZE = struct.calcsize(cls.FORMAT)

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray, offset: int = 0):
        return cls(*struct.unpack_from(cls.FORMAT, buf, offset))

    def pack_into(self, buf: bytearray, offset: int = 0) -> None:
        values = (getattr(self, f.name) for f in fields(self))
        struct.pack_into(self.FORMAT, buf, offset, *values)


@dataclass(slots=True)
class Superblock(_Record):
    """The first 208 bytes of the superblock: revision 0 fields, then the
    dynamic-revision fields up to s_reserved_gdt_blocks."""

    FORMAT: ClassVar[str] = "<13IHh4H4I2HIHH3I16s16s64sI2BH"
    inodes_count: int
    blocks_count: int
    r_blocks_count: int
    free_blocks_count: int
    free_inodes_count: int
    first_data_block: int
    log_block_size: int
    log_frag_size: int
    blocks_per_group: int
    frags_per_group: int
    inodes_per_group: int
    mtime: int
    wtime: int
    mnt_count: int
    max_mnt_count: int
    magic: int
    state: int
    errors: int
    minor_rev_level: int
    lastcheck: int
    checkinterval: int
    creator_os: int
    rev_level: int
    def_resuid: int
    def_resgid: int
    first_ino: int
    inode_size: int
    block_group_nr: int
    feature_compat: int
    feature_incompat: int
    feature_ro_compat: int
    uuid: bytes
    volume_name: bytes
    last_mounted: bytes
    algorithm_usage_bitmap: int
    prealloc_blocks: int
    prealloc_dir_blocks: int
    reserved_gdt_blocks: int


@dataclass(slots=True)
class GroupDesc(_Record):
    """A block group descriptor (32 bytes; the checksum words stay as read)."""

    FORMAT: ClassVar[str] = "<3I4H12s"
    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    free_blocks_count: int
    free_inodes_count: int
    used_dirs_count: int
    flags: int
    reserved: bytes


INODE_FORMAT = "<2H5I2H3I15I4I6H"
INODE_SIZE = struct.calcsize(INODE_FORMAT)
INODE_EXTRA_FORMAT = "<2H7I"  # i_extra_isize .. i_projid of a large inode
INODE_EXTRA_SIZE = struct.calcsize(INODE_EXTRA_FORMAT)
_U32S = struct.Struct("<15I")


@dataclass(slots=True)
class Inode:
    """The 128-byte ext2 inode (Linux osd2 layout); ``block`` holds the 15 pointers."""

    mode: int
    uid: int
    size_lo: int
    atime: int
    ctime: int
    mtime: int
    dtime: int
    gid: int
    links_count: int
    blocks_lo: int
    flags: int
    osd1: int
    block: list[int]
    generation: int
    file_acl: int
    size_high: int
    faddr: int
    blocks_hi: int
    file_acl_high: int
    uid_high: int
    gid_high: int
    checksum_lo: int
    osd2_reserved: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray, offset: int = 0) -> "Inode":
        v = struct.unpack_from(INODE_FORMAT, buf, offset)
        return cls(*v[:12], list(v[12:27]), *v[27:])

    def pack_into(self, buf: bytearray, offset: int = 0) -> None:
        struct.pack_into(INODE_FORMAT, buf, offset, self.mode, self.uid, self.size_lo,
                         self.atime, self.ctime, self.mtime, self.dtime, self.gid,
                         self.links_count, self.blocks_lo, self.flags, self.osd1, *self.block,
                         self.generation, self.file_acl, self.size_high, self.faddr,
                         self.blocks_hi, self.file_acl_high, self.uid_high, self.gid_high,
                         self.checksum_lo, self.osd2_reserved)

    @property
    def size(self) -> int:
        return self.size_lo | self.size_high << 32

    @size.setter
    def size(self, value: int) -> None:
        self.size_lo, self.size_high = value & 0xFFFFFFFF, value >> 32

    def block_bytes(self) -> bytes:
        """i_block as raw bytes (where a fast symlink keeps its target)."""
        return _U32S.pack(*self.block)


DIRENT_FORMAT = "<IHBB"  # inode, rec_len, name_len, file_type (filetype feature)
DIRENT_OLD_FORMAT = "<IHH"  # inode, rec_len, name_len (revision 0 without filetype)
DIRENT_SIZE = struct.calcsize(DIRENT_FORMAT)

EA_HEADER_FORMAT = "<4I"  # h_magic, h_refcount, h_blocks, h_hash
EA_HEADER_SIZE = struct.calcsize(EA_HEADER_FORMAT)
