"""drop_caches on a mounted ext2: after the buffer cache lets go of every
clean block, the filesystem reads what it needs again and stays correct
(its only state outside the cache is mount-time: the superblock and group
descriptors, which stay pinned)."""

import shutil
from pathlib import Path

import pytest

from launcher.images import default_template, make_image
from tests.unit.test_ext2 import Disk


@pytest.fixture
def disk(tmp_path_factory, tmp_path):
    base = tmp_path_factory.getbasetemp() / "drop-caches-default.img"
    if not base.exists():
        make_image(str(base), 4)
    path = tmp_path / "d.img"
    shutil.copyfile(base, path)
    d = Disk(path)
    yield d
    d.close()


def test_a_cold_lookup_reads_again_and_finds_the_same_file(disk):
    motd = (Path(default_template()) / "etc" / "motd").read_bytes()
    assert disk.cat("/etc/motd") == motd
    pinned = disk.cache.statistics().held
    assert disk.cache.drop_clean() > 0
    s = disk.cache.statistics()
    assert s.cached == s.held == pinned > 0  # only the superblock and the GDT are left
    before = len(disk.requests)
    assert disk.cat("/etc/motd") == motd
    assert len(disk.requests) - before >= 3  # root, /etc and motd: inodes and blocks
    misses = disk.cache.statistics().misses
    assert disk.cat("/etc/motd") == motd and disk.cache.statistics().misses == misses


def test_writes_survive_a_sync_and_drop_and_e2fsck_agrees(disk):
    disk.mkdir("/home/a")
    disk.create("/home/a/f", b"x" * 3000)
    disk(disk.fs.sync())
    disk.cache.drop_clean()
    disk.create("/home/a/g", b"y" * 10)  # allocates with the group counts held in memory
    dirty = disk.cache.dirty_blocks
    disk.cache.drop_clean()
    assert disk.cache.dirty_blocks == dirty > 0  # not written yet: they stay
    assert disk.cat("/home/a/f") == b"x" * 3000 and disk.names("/home/a") == {"f", "g"}
    disk.check(**{"/home/a/f": b"x" * 3000, "/home/a/g": b"y" * 10})
