"""The ext2 core's small parts alone: buffer cache, on-disk formats, bitmaps,
block-map limits and the synchronous driver. No image, no mke2fs."""

import dataclasses
import errno
import struct

import pytest

from domains.xenolinux.fs import syncdrive
from domains.xenolinux.fs.bcache import BufferCache
from domains.xenolinux.fs.blockreq import Flush, ReadBlocks, WriteBlocks, first_sector
from domains.xenolinux.fs.ext2_alloc import find_zero
from domains.xenolinux.fs.ext2_file import max_file_size
from domains.xenolinux.fs.ext2_layout import (
    DIRENT_SIZE,
    EA_HEADER_SIZE,
    INODE_EXTRA_SIZE,
    INODE_SIZE,
    GroupDesc,
    Inode,
    Superblock,
)

BS = 1024


class FakeDisk:
    """Blocks in a dict; logs requests; fails those that `fail` picks."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytes] = {}
        self.log: list = []
        self.fail = lambda req: False

    def block(self, no: int) -> bytes:
        return self.blocks.get(no, bytes([no % 251]) * BS)

    def __call__(self, req):
        self.log.append(req)
        if self.fail(req):
            raise OSError(errno.EIO, "injected")
        if isinstance(req, ReadBlocks):
            return [self.block(n) for n in req.nos]
        if isinstance(req, WriteBlocks):
            self.blocks.update(dict(req.blocks))
        return None

    def run(self, gen):
        return syncdrive.drive(gen, self)

    def of(self, kind) -> list:
        return [r for r in self.log if isinstance(r, kind)]


# ---- buffer cache ------------------------------------------------------------

def test_misses_are_read_once_in_one_sorted_batch_and_then_hit():
    disk, cache = FakeDisk(), BufferCache(BS, 16)
    bufs = disk.run(cache.get_many([7, 3, 7, 5]))
    assert [bytes(b) for b in bufs] == [disk.block(n) for n in (7, 3, 7, 5)]
    assert disk.log == [ReadBlocks((3, 5, 7), BS)]
    assert disk.run(cache.get(5)) == disk.block(5)
    assert len(disk.log) == 1
    s = cache.statistics()
    assert (s.hits, s.misses, s.reads, s.read_requests) == (1, 4, 3, 1)


def test_sync_writes_all_dirty_blocks_in_one_sorted_batch_then_flushes():
    disk, cache = FakeDisk(), BufferCache(BS, 16)
    for no in (9, 2, 4):
        cache.new_block(no)[0] = no
    buf = disk.run(cache.get(6))
    buf[1] = 0xAA
    cache.mark_dirty(6)
    disk.run(cache.sync())
    writes = disk.of(WriteBlocks)
    assert [n for n, _ in writes[0].blocks] == [2, 4, 6, 9] and len(writes) == 1
    assert isinstance(disk.log[-1], Flush)
    assert disk.blocks[6][1] == 0xAA and disk.blocks[9][0] == 9
    assert cache.statistics().dirty == 0
    assert not disk.of(ReadBlocks)[1:], "new_block never reads"


@pytest.mark.parametrize("failing", [WriteBlocks, Flush])
def test_a_failed_sync_leaves_blocks_dirty_and_the_next_sync_writes_them(failing):
    disk, cache = FakeDisk(), BufferCache(BS, 16)
    cache.new_block(3)[0] = 1
    disk.fail = lambda req: isinstance(req, failing)
    with pytest.raises(OSError) as err:
        disk.run(cache.sync())
    assert err.value.errno == errno.EIO
    assert cache.statistics().dirty == 1
    disk.fail = lambda req: False
    disk.run(cache.sync())
    assert disk.blocks[3][0] == 1 and cache.statistics().dirty == 0


def test_a_failed_read_caches_nothing():
    disk, cache = FakeDisk(), BufferCache(BS, 16)
    disk.fail = lambda req: True
    with pytest.raises(OSError):
        disk.run(cache.get(4))
    assert cache.peek(4) is None and cache.statistics().cached == 0


def test_clean_blocks_are_evicted_least_recently_used_first():
    disk, cache = FakeDisk(), BufferCache(BS, 8)
    disk.run(cache.get_many(range(8)))
    disk.run(cache.get(0))  # 0 is now the most recently used
    disk.run(cache.get(8))
    assert cache.peek(1) is None and cache.peek(0) is not None
    assert cache.statistics().cached == 8


def test_dirty_and_held_blocks_are_never_evicted():
    disk, cache = FakeDisk(), BufferCache(BS, 8)
    disk.run(cache.get_many(range(8)))
    cache.hold(0)
    cache.mark_dirty(1)
    disk.run(cache.get_many(range(100, 106)))
    assert cache.peek(0) is not None and cache.peek(1) is not None
    assert [cache.peek(n) for n in range(2, 8)] == [None] * 6
    assert not disk.of(WriteBlocks)
    cache.release(0)
    disk.run(cache.get(200))
    assert cache.peek(0) is None


def test_dirty_blocks_crowding_the_cache_are_written_back_before_a_read():
    disk, cache = FakeDisk(), BufferCache(BS, 8)
    for no in range(8):
        cache.new_block(no)[0] = 0xEE
    disk.run(cache.get_many([50, 51]))
    writes = disk.of(WriteBlocks)
    assert len(writes) == 1 and [n for n, _ in writes[0].blocks] == [0, 1, 2, 3]
    assert all(disk.blocks[n][0] == 0xEE for n in range(4))
    assert cache.statistics().dirty == 4
    assert not disk.of(Flush), "writeback is not a barrier"


def test_forget_drops_a_dirty_block_without_writing_it():
    disk, cache = FakeDisk(), BufferCache(BS, 8)
    cache.new_block(5)
    cache.forget(5)
    disk.run(cache.sync())
    assert not disk.of(WriteBlocks) and cache.statistics().dirty == 0


def test_changing_the_block_size_is_refused_while_something_is_dirty():
    cache = BufferCache(BS, 8)
    cache.new_block(1)
    with pytest.raises(ValueError):
        cache.set_block_size(4096)
    cache.forget(1)
    cache.set_block_size(4096)
    assert cache.block_size == 4096


def test_marking_an_uncached_block_dirty_is_a_bug_not_silence():
    with pytest.raises(ValueError):
        BufferCache(BS, 8).mark_dirty(3)


def test_a_driver_answering_the_wrong_count_is_refused():
    cache = BufferCache(BS, 8)
    gen = cache.get_many([1, 2])
    next(gen)
    with pytest.raises(ValueError):
        gen.send([bytes(BS)])


def test_drop_clean_keeps_dirty_and_held_buffers_and_the_next_get_reads_again():
    disk, cache = FakeDisk(), BufferCache(BS, 16)
    disk.run(cache.get_many(range(6)))
    cache.hold(0)  # e.g. the superblock, pinned for the mount
    cache.mark_dirty(1)
    cache.new_block(9)
    assert cache.drop_clean() == 4  # 2, 3, 4, 5
    assert [n for n in range(10) if cache.peek(n) is not None] == [0, 1, 9]
    s = cache.statistics()
    assert (s.cached, s.dirty, s.held) == (3, 2, 1)
    assert cache.drop_clean() == 0
    before = cache.statistics()
    assert disk.run(cache.get(3)) == disk.block(3)
    after = cache.statistics()
    assert (after.misses - before.misses, after.read_requests - before.read_requests) == (1, 1)
    disk.run(cache.sync())  # what was dirty is written, then clean and droppable
    cache.release(0)
    assert cache.drop_clean() == 4 and cache.statistics().cached == 0


# ---- formats ---------------------------------------------------------------

def test_format_sizes():
    assert Superblock.SIZE == 0xD0  # up to s_reserved_gdt_blocks included
    assert GroupDesc.SIZE == 32
    assert INODE_SIZE == 128 and INODE_EXTRA_SIZE == 32
    assert DIRENT_SIZE == 8 and EA_HEADER_SIZE == 16


def test_superblock_field_offsets_match_ext2_fs_h():
    names = [f.name for f in dataclasses.fields(Superblock)]
    values = {n: 0 for n in names}
    values.update(uuid=b"", volume_name=b"", last_mounted=b"")
    for off, name in ((0x0C, "free_blocks_count"), (0x38, "magic"), (0x54, "first_ino"),
                      (0x5C, "feature_compat"), (0x64, "feature_ro_compat"),
                      (0xCE, "reserved_gdt_blocks")):
        buf = bytearray(Superblock.SIZE)
        Superblock(**{**values, name: 0xBEEF}).pack_into(buf)
        width = 2 if name in ("magic", "reserved_gdt_blocks") else 4
        assert int.from_bytes(buf[off:off + width], "little") == 0xBEEF, name


def test_inode_fields_land_where_ext2_puts_them():
    raw = bytearray(INODE_SIZE)
    struct.pack_into("<H", raw, 0, 0o100644)
    struct.pack_into("<I", raw, 28, 42)  # i_blocks
    struct.pack_into("<I", raw, 40 + 14 * 4, 777)  # i_block[14]
    struct.pack_into("<I", raw, 104, 99)  # i_file_acl
    struct.pack_into("<I", raw, 108, 1)  # i_size_high
    ino = Inode.unpack_from(raw)
    assert (ino.mode, ino.blocks_lo, ino.block[14], ino.file_acl) == (0o100644, 42, 777, 99)
    assert ino.size == 1 << 32
    out = bytearray(INODE_SIZE)
    ino.pack_into(out)
    assert out == raw


def test_find_zero_scans_bits_from_start_to_end():
    bm = bytearray(b"\xff\xff\x07\x00")
    assert find_zero(bm, 0, 32) == 19
    assert find_zero(bm, 20, 32) == 20
    assert find_zero(bm, 0, 19) is None
    assert find_zero(bytearray(b"\xff" * 8), 0, 64) is None


def test_max_file_size_is_linux_ext2_max_size():
    assert max_file_size(1024) == (12 + 256 + 256 ** 2 + 256 ** 3) * 1024
    # 4 KiB blocks: i_blocks (2^32 - 1 sectors) limits, not the tree
    assert max_file_size(4096) < 2 ** 41 and max_file_size(4096) > 2 ** 41 - 2 ** 32


def test_first_sector_converts_filesystem_blocks():
    assert first_sector(3, 4096) == 24 and first_sector(3, 1024) == 6


# ---- synchronous driver -----------------------------------------------------

def test_syncdrive_runs_requests_against_a_file_and_throws_errors(tmp_path):
    img = tmp_path / "img"
    img.write_bytes(bytes(range(256)) * 16)  # 4 blocks of 1 KiB

    def job():
        blocks = yield ReadBlocks((1, 2), BS)
        yield WriteBlocks(((0, blocks[1]),), BS)
        yield Flush()
        try:
            yield ReadBlocks((9,), BS)
        except OSError as err:
            return err.errno

    assert syncdrive.run(job(), str(img)) == errno.EIO
    data = img.read_bytes()
    assert data[:BS] == data[2 * BS:3 * BS]
