"""ext2 core against real images: made by mke2fs, checked by e2fsck -fn, read by debugfs.

Every scenario ends with sync() and an e2fsck that must find nothing to fix,
and compares what debugfs reads with what was written. The core runs on the
synchronous driver; `Disk` counts its requests and injects EIO where asked.
"""

import errno
import itertools
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from domains.xenolinux.fs.bcache import BufferCache
from domains.xenolinux.fs.blockreq import ReadBlocks, WriteBlocks
from domains.xenolinux.fs.ext2 import ROOT_INO, Ext2, FsError
from domains.xenolinux.fs.ext2_layout import EXT2_INDEX_FL
from domains.xenolinux.fs.syncdrive import drive, perform
from launcher.images import default_template, make_image

FAKE_TIME = 1_700_000_000
KIB = 1024


def mkfs(path: Path, kib: int, *opts: str, template: str | None = None) -> Path:
    """An ext2 image of `kib` KiB made by mke2fs with `opts`."""
    cmd = ["mke2fs", "-q", "-F", "-t", "ext2", *opts]
    if template:
        cmd += ["-d", template]
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(FAKE_TIME)}
    subprocess.run([*cmd, str(path), f"{kib}k"], check=True, env=env, capture_output=True)
    return path


def fsck(path: Path) -> None:
    res = subprocess.run(["e2fsck", "-fn", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def debugfs(path: Path, request: str) -> bytes:
    return subprocess.run(["debugfs", "-R", request, str(path)], capture_output=True,
                          check=True).stdout


def inode_flags(path: Path, name: str) -> int:
    return int(debugfs(path, f"stat {name}").split(b"Flags: ")[1].split()[0], 16)


class Disk:
    """An image with a mounted Ext2 driven synchronously; counts requests and
    fails those that `fail(index, request)` picks."""

    def __init__(self, path: Path, cache_blocks: int = 256) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        self.requests: list = []
        self.fail = None
        ticks = itertools.count(FAKE_TIME + 1000)
        self.cache = BufferCache(1024, cache_blocks)
        self.fs = self(Ext2.mount(self.cache, lambda: next(ticks)))

    def handle(self, req):
        self.requests.append(req)
        if self.fail is not None and self.fail(len(self.requests) - 1, req):
            raise OSError(errno.EIO, "injected I/O error")
        return perform(self.fd, req)

    def __call__(self, gen):
        return drive(gen, self.handle)

    def path_of(self, path: str) -> int:
        return self(self.fs.namei(path))

    def parent(self, path: str) -> tuple[int, str]:
        head, _, name = path.rpartition("/")
        return self(self.fs.namei(head or "/")), name

    def create(self, path: str, data: bytes = b"") -> int:
        ino = self(self.fs.create(*self.parent(path)))
        if data:
            assert self(self.fs.write(ino, 0, data)) == len(data)
        return ino

    def mkdir(self, path: str) -> int:
        return self(self.fs.mkdir(*self.parent(path)))

    def cat(self, path: str) -> bytes:
        ino = self.path_of(path)
        return self(self.fs.read(ino, 0, self(self.fs.stat(ino)).size))

    def names(self, path: str) -> set[str]:
        return {n for n, _i, _t in self(self.fs.readdir(self.path_of(path)))} - {".", ".."}

    def check(self, **files: bytes) -> None:
        """sync, e2fsck clean, and debugfs reads `files` (path=bytes) as written."""
        self(self.fs.sync())
        fsck(self.path)
        for path, data in files.items():
            assert debugfs(self.path, f"cat {path}") == data, path

    def close(self) -> None:
        os.close(self.fd)


def expect(errno_: int, disk: Disk, gen) -> None:
    with pytest.raises(FsError) as err:
        disk(gen)
    assert err.value.errno == errno_, err.value


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Base images built once; tests get copies."""
    base = tmp_path_factory.mktemp("base")
    empty = base / "empty"
    empty.mkdir()
    return {
        "default": Path(make_image(str(base / "default.img"), 4)),
        "small": mkfs(base / "small.img", 2048, "-b", "1024", "-I", "256",
                      template=str(empty)),
    }


@pytest.fixture
def open_disk(images, tmp_path):
    opened: list[Disk] = []

    def open_(name: str = "small", cache_blocks: int = 256, path: Path | None = None) -> Disk:
        if path is None:
            path = tmp_path / f"{name}-{len(opened)}.img"
            shutil.copyfile(images[name], path)
        opened.append(Disk(path, cache_blocks))
        return opened[-1]

    yield open_
    for d in opened:
        d.close()


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# ---- scenarios ---------------------------------------------------------------

def test_the_default_image_mounts_and_motd_reads_as_in_the_template(open_disk):
    d = open_disk("default")
    motd = (Path(default_template()) / "etc" / "motd").read_bytes()
    assert d.cat("/etc/motd") == motd
    assert {"etc", "home", "lost+found"} <= d.names("/")
    assert d.fs.block_size == 1024
    d.check()


def test_create_write_read_back(open_disk):
    d = open_disk("default")
    data = b"hello, ext2\n" * 100
    ino = d.create("/home/greeting", data)
    assert d(d.fs.read(ino, 6, 5)) == data[6:11]
    assert d(d.fs.read(ino, len(data) - 3, 100)) == data[-3:]
    assert d(d.fs.read(ino, len(data) + 5, 10)) == b""
    st_ = d(d.fs.stat(ino))
    assert (st_.size, st_.nlink, st_.blocks) == (len(data), 1, 2 * 2)
    d.check(**{"/home/greeting": data})


def test_a_big_file_goes_through_double_indirect_blocks(open_disk):
    d = open_disk()
    data = pattern(300 * KIB + 123)
    ino = d.create("/big")
    for off in range(0, len(data), 7777):  # unaligned pieces
        assert d(d.fs.write(ino, off, data[off:off + 7777])) == len(data[off:off + 7777])
    assert d.cat("/big") == data
    data_blocks = -(-len(data) // KIB)
    meta = 1 + 1 + -(-(data_blocks - 12 - 256) // 256)  # IND, DIND, its indirect blocks
    assert d(d.fs.stat(ino)).blocks == 2 * (data_blocks + meta)
    patch = pattern(5000, seed=2)
    d(d.fs.write(ino, 280 * KIB, patch))
    data = data[:280 * KIB] + patch + data[280 * KIB + 5000:]
    assert d(d.fs.read(ino, 279 * KIB, 8 * KIB)) == data[279 * KIB:287 * KIB]
    d.check(big=data)


def test_sparse_files_reach_triple_indirect_and_large_file(open_disk, tmp_path):
    path = mkfs(tmp_path / "nolarge.img", 2048, "-b", "1024", "-O", "^large_file")
    d = open_disk(path=path)
    ino = d.create("/sparse")
    far = 3 * 1024 ** 3 + 5  # past 2 GiB and the double-indirect reach of 1 KiB blocks
    assert d(d.fs.write(ino, far, b"far away")) == 8
    assert d(d.fs.write(ino, 10, b"near")) == 4
    assert d(d.fs.read(ino, far - 4, 100)) == bytes(4) + b"far away"
    assert d(d.fs.read(ino, 0, 20)) == bytes(10) + b"near" + bytes(6)
    assert d(d.fs.stat(ino)).blocks == 2 * (2 + 3)  # two data blocks, TIND + DIND + IND
    d.check()
    assert b"large_file" in debugfs(path, "features")
    phys = int(debugfs(path, f"bmap /sparse {far // KIB}").split()[0])
    with open(path, "rb") as f:
        f.seek(phys * KIB + far % KIB)
        assert f.read(8) == b"far away"


def test_truncate_frees_blocks_and_zeroes_the_tail(open_disk):
    d = open_disk()
    free0 = d(d.fs.statfs()).bfree
    data = pattern(290 * KIB)
    ino = d.create("/t", data)
    d(d.fs.truncate(ino, 100 * KIB + 10))  # into the single-indirect range
    assert d.cat("/t") == data[:100 * KIB + 10]
    assert d(d.fs.stat(ino)).blocks == 2 * (101 + 1)
    d(d.fs.truncate(ino, 5000))  # direct blocks only: IND freed
    d(d.fs.truncate(ino, 8000))  # growing leaves zeros, not the old bytes
    assert d.cat("/t") == data[:5000] + bytes(3000)
    assert d(d.fs.stat(ino)).blocks == 2 * 5
    d.check(t=data[:5000] + bytes(3000))
    d(d.fs.truncate(ino, 0))
    assert d(d.fs.statfs()).bfree == free0
    d.check(t=b"")


def test_unlink_frees_the_inode_and_its_blocks(open_disk):
    d = open_disk()
    before = d(d.fs.statfs())
    d.create("/doomed", pattern(400 * KIB))
    d(d.fs.unlink(ROOT_INO, "doomed"))
    after = d(d.fs.statfs())
    assert (after.bfree, after.ffree) == (before.bfree, before.ffree)
    expect(errno.ENOENT, d, d.fs.namei("/doomed"))
    expect(errno.ENOENT, d, d.fs.unlink(ROOT_INO, "doomed"))
    d.mkdir("/dir")
    expect(errno.EISDIR, d, d.fs.unlink(ROOT_INO, "dir"))
    d.check()


def test_mkdir_rmdir_and_link_counts(open_disk):
    d = open_disk()
    root_links = d(d.fs.stat(ROOT_INO)).nlink
    a = d.mkdir("/a")
    d.mkdir("/a/b")
    d.create("/a/f", b"x")
    assert d(d.fs.stat(ROOT_INO)).nlink == root_links + 1
    assert d(d.fs.stat(a)).nlink == 3
    assert d.path_of("/a/b/..") == a
    expect(errno.EEXIST, d, d.fs.mkdir(ROOT_INO, "a"))
    expect(errno.ENOTEMPTY, d, d.fs.rmdir(ROOT_INO, "a"))
    expect(errno.ENOTDIR, d, d.fs.rmdir(a, "f"))
    expect(errno.ENOTDIR, d, d.fs.mkdir(d.path_of("/a/f"), "x"))
    d.check()
    d(d.fs.rmdir(a, "b"))
    assert d(d.fs.stat(a)).nlink == 2
    d(d.fs.unlink(a, "f"))
    d(d.fs.rmdir(ROOT_INO, "a"))
    assert d(d.fs.stat(ROOT_INO)).nlink == root_links
    d.check()


def test_rename_files(open_disk):
    d = open_disk()
    d.mkdir("/d")
    d.create("/one", b"1" * 3000)
    d.create("/two", b"2" * 5000)
    free = d(d.fs.statfs()).bfree
    d(d.fs.rename(ROOT_INO, "one", ROOT_INO, "uno"))
    d(d.fs.rename(ROOT_INO, "uno", d.path_of("/d"), "two"))  # across directories
    d(d.fs.rename(d.path_of("/d"), "two", ROOT_INO, "two"))  # replaces /two: its blocks freed
    assert d(d.fs.statfs()).bfree == free + 5
    assert d.names("/") >= {"two", "d"} and "uno" not in d.names("/") and not d.names("/d")
    expect(errno.ENOENT, d, d.fs.rename(ROOT_INO, "one", ROOT_INO, "x"))
    expect(errno.EISDIR, d, d.fs.rename(ROOT_INO, "two", ROOT_INO, "d"))
    d.check(two=b"1" * 3000)


def test_rename_directories_fixes_dotdot_and_links(open_disk):
    d = open_disk()
    a, b = d.mkdir("/a"), d.mkdir("/b")
    d.mkdir("/a/sub")
    d.create("/a/sub/f", b"data")
    d(d.fs.rename(a, "sub", b, "moved"))
    assert d.path_of("/b/moved/..") == b
    assert (d(d.fs.stat(a)).nlink, d(d.fs.stat(b)).nlink) == (2, 3)
    expect(errno.EINVAL, d, d.fs.rename(ROOT_INO, "b", d.path_of("/b/moved"), "loop"))
    expect(errno.EINVAL, d, d.fs.rename(ROOT_INO, "b", b, "self"))
    d.mkdir("/a/empty")
    d(d.fs.rename(b, "moved", a, "empty"))  # over an empty directory
    assert d.path_of("/a/empty/..") == a and d.cat("/a/empty/f") == b"data"
    assert (d(d.fs.stat(a)).nlink, d(d.fs.stat(b)).nlink) == (3, 2)
    d.mkdir("/b/full")
    d.create("/b/full/x")
    expect(errno.ENOTEMPTY, d, d.fs.rename(a, "empty", b, "full"))
    expect(errno.ENOTDIR, d, d.fs.rename(a, "empty", d.path_of("/b/full"), "x"))
    d.check(**{"/a/empty/f": b"data"})


def test_readdir_over_many_blocks_reuses_freed_space(open_disk):
    d = open_disk()
    d.mkdir("/many")
    many = d.path_of("/many")
    names = [f"file-with-a-longish-name-{i:03d}" for i in range(120)]
    for n in names:
        d(d.fs.create(many, n))
    listing = d(d.fs.readdir(many))
    assert [n for n, _i, _t in listing] == [".", "..", *names]
    assert all(t == 1 for n, _i, t in listing[2:])
    size = d(d.fs.stat(many)).size
    assert size > 4 * KIB and size % KIB == 0
    for n in names[::2]:
        d(d.fs.unlink(many, n))
    for i in range(60):
        d(d.fs.create(many, f"new{i}"))
    assert d(d.fs.stat(many)).size == size, "freed entries are reused"
    assert d.names("/many") == set(names[1::2]) | {f"new{i}" for i in range(60)}
    d.check()


def test_namei_paths_and_symlinks(open_disk, tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_bytes(b"motd\n")
    (tree / "fast").symlink_to("etc/motd")
    (tree / "slow").symlink_to("/" + "x" * 70 + "/../etc//motd")
    (tree / ("x" * 70)).mkdir()
    (tree / "loop").symlink_to("loop")
    d = open_disk(path=mkfs(tmp_path / "links.img", 1024, "-b", "1024", template=str(tree)))
    motd = d.path_of("/etc/motd")
    etc = d.path_of("/etc")
    for path in ("//etc///motd", "etc/../etc/./motd", "/fast", "slow", "/etc/../fast"):
        assert d(d.fs.namei(path)) == motd, path
    assert d(d.fs.namei("motd", etc)) == motd
    assert d(d.fs.namei("..", etc)) == ROOT_INO and d(d.fs.namei("/..")) == ROOT_INO
    assert d(d.fs.readlink(d(d.fs.namei("/fast", follow=False)))) == "etc/motd"
    expect(errno.ENOENT, d, d.fs.namei("/etc/nothing"))
    expect(errno.ENOTDIR, d, d.fs.namei("/etc/motd/x"))
    expect(errno.ENOTDIR, d, d.fs.namei("/etc/motd/"))
    expect(errno.ELOOP, d, d.fs.namei("/loop"))
    expect(errno.ENAMETOOLONG, d, d.fs.lookup(ROOT_INO, "n" * 256))
    d(d.fs.unlink(ROOT_INO, "fast"))
    d(d.fs.unlink(ROOT_INO, "slow"))  # a slow symlink owns a block
    d.check()


def test_enospc_leaves_a_consistent_filesystem(open_disk, tmp_path):
    d = open_disk(path=mkfs(tmp_path / "tiny.img", 200, "-b", "1024", "-N", "16"))
    ino = d.create("/fill")
    data = pattern(400 * KIB)
    written = d(d.fs.write(ino, 0, data))
    assert 0 < written < len(data)
    assert d(d.fs.statfs()).bfree == 0
    expect(errno.ENOSPC, d, d.fs.write(ino, written, b"more"))
    made = 0
    with pytest.raises(FsError) as err:
        for i in range(32):
            d(d.fs.create(ROOT_INO, f"f{i}"))
            made += 1
    assert err.value.errno == errno.ENOSPC and made > 0
    expect(errno.ENOSPC, d, d.fs.mkdir(ROOT_INO, "nodir"))
    d.check(fill=data[:written])
    d(d.fs.truncate(ino, 10 * KIB))
    d(d.fs.unlink(ROOT_INO, "f0"))
    d.mkdir("/nowfits")
    d.check(fill=data[:10 * KIB])


@pytest.mark.parametrize("opts", [("-b", "1024", "-r", "0"), ("-b", "2048", "-I", "128"),
                                  ("-b", "4096", "-I", "256")],
                         ids=["rev0-1k", "2k-128", "4k-256"])
def test_revisions_and_block_sizes(open_disk, tmp_path, opts):
    d = open_disk(path=mkfs(tmp_path / "fs.img", 8192, *opts))
    assert d.fs.block_size == int(opts[1])
    data = pattern(int(opts[1]) * 14 + 77)  # into the single-indirect range
    d.mkdir("/dir")
    d.create("/dir/f", data)
    d.create("/g", b"g")
    d(d.fs.rename(d.path_of("/dir"), "f", ROOT_INO, "f"))
    d(d.fs.unlink(ROOT_INO, "g"))
    types = {n: t for n, _i, t in d(d.fs.readdir(ROOT_INO))}
    assert types["dir"] == (0 if opts[3] == "0" else 2)
    d.check(f=data)


@pytest.mark.parametrize("feature", ["extent", "metadata_csum", "flex_bg"])
def test_unsupported_features_are_refused_at_mount(tmp_path, feature):
    path = mkfs(tmp_path / "x.img", 2048, "-O", feature)
    with pytest.raises(FsError) as err:
        Disk(path)
    assert err.value.errno == errno.EINVAL and feature.replace("metadata_", "") in str(err.value)


def test_not_ext2_is_refused(tmp_path):
    path = tmp_path / "zero.img"
    path.write_bytes(bytes(64 * KIB))
    with pytest.raises(FsError) as err:
        Disk(path)
    assert err.value.errno == errno.EINVAL and "magic" in str(err.value)


def test_htree_directories_are_read_and_lose_their_index_when_changed(open_disk, tmp_path):
    tree = tmp_path / "tree"
    (tree / "big").mkdir(parents=True)
    for i in range(300):
        (tree / "big" / f"entry-number-{i:04d}").write_bytes(b"")
    path = mkfs(tmp_path / "htree.img", 4096, "-b", "1024", template=str(tree))
    subprocess.run(["e2fsck", "-fyD", str(path)], capture_output=True)  # builds the index
    fsck(path)
    assert inode_flags(path, "/big") & EXT2_INDEX_FL
    d = open_disk(path=path)
    big = d.path_of("/big")
    assert d(d.fs.lookup(big, "entry-number-0299")) > 0
    assert len(d.names("/big")) == 300
    d(d.fs.create(big, "newcomer"))
    d(d.fs.unlink(big, "entry-number-0007"))
    d.check()
    assert not inode_flags(path, "/big") & EXT2_INDEX_FL


def test_extended_attribute_blocks_are_released_with_their_inode(open_disk, tmp_path):
    path = mkfs(tmp_path / "ea.img", 2048, "-b", "1024", "-I", "128")
    subprocess.run(["debugfs", "-w", "-R", "write /dev/null /x", str(path)], check=True,
                   capture_output=True)
    subprocess.run(["debugfs", "-w", "-R", "ea_set /x user.note " + "v" * 100, str(path)],
                   check=True, capture_output=True)
    fsck(path)
    d = open_disk(path=path)
    free = d(d.fs.statfs()).bfree
    assert d(d.fs.stat(d.path_of("/x"))).blocks == 2  # the EA block
    d(d.fs.unlink(ROOT_INO, "x"))
    assert d(d.fs.statfs()).bfree == free + 1
    d.check()


# ---- driving: batching, errors, one operation at a time ------------------------

def test_a_multi_block_read_is_one_request_per_tree_level(open_disk):
    d = open_disk()
    data = pattern(40 * KIB)
    d.create("/forty", data)
    d(d.fs.sync())
    cold = Disk(d.path)
    try:
        ino = cold.path_of("/forty")
        cold(cold.fs.stat(ino))
        cold.requests.clear()
        assert cold(cold.fs.read(ino, 0, len(data))) == data
        reads = [r for r in cold.requests if isinstance(r, ReadBlocks)]
        assert len(reads) == 2  # the indirect block, then all 40 data blocks at once
        assert len(reads[1].nos) == 40
    finally:
        cold.close()


def test_eio_propagates_and_a_later_sync_succeeds(open_disk):
    d = open_disk()
    ino = d.create("/f", b"first")
    d.fail = lambda _i, req: isinstance(req, WriteBlocks)
    with pytest.raises(OSError) as err:
        d(d.fs.sync())
    assert err.value.errno == errno.EIO
    dirty = d.cache.statistics().dirty
    assert dirty > 0, "nothing was marked clean"
    d.fail = None
    d(d.fs.write(ino, 5, b" and second"))
    d.check(f=b"first and second")


def test_eio_at_any_request_never_breaks_the_filesystem(images, tmp_path):
    """Fail the k-th request of a sequence of operations, for every k: after a
    successful sync, e2fsck must find nothing to fix."""

    def scenario(d: Disk) -> None:
        ino = d.create("/a", pattern(30 * KIB))
        d.mkdir("/dir")
        d(d.fs.rename(ROOT_INO, "a", d.path_of("/dir"), "b"))
        d(d.fs.write(ino, 290 * KIB, b"tail"))
        d(d.fs.truncate(ino, 20 * KIB))
        d.create("/dir/c", b"c")
        d(d.fs.unlink(d.path_of("/dir"), "b"))
        d(d.fs.rmdir(ROOT_INO, "lost+found"))

    path = tmp_path / "k.img"
    shutil.copyfile(images["small"], path)
    d = Disk(path, cache_blocks=8)
    d.requests.clear()
    scenario(d)
    total = len(d.requests)
    d.close()
    assert total > 10
    for k in range(total):
        shutil.copyfile(images["small"], path)
        d = Disk(path, cache_blocks=8)
        base = len(d.requests)  # the mount's
        d.fail = lambda i, _req, at=base + k: i == at
        try:
            with pytest.raises(OSError):
                scenario(d)
            d.fail = None
            d(d.fs.sync())
            fsck(path)
        finally:
            d.close()


def test_trace_hook_and_fsync(images, tmp_path):
    path = tmp_path / "traced.img"
    shutil.copyfile(images["default"], path)
    events: list[tuple[str, dict]] = []
    fd = os.open(path, os.O_RDWR)
    try:
        requests: list = []

        def run(gen):
            return drive(gen, lambda req: requests.append(req) or perform(fd, req))

        cache = BufferCache(1024, 64)
        fs = run(Ext2.mount(cache, lambda: FAKE_TIME + 5,
                            trace=lambda what, **kw: events.append((what, kw))))
        etc = run(fs.lookup(ROOT_INO, "etc"))
        ino = run(fs.create(etc, "log"))
        run(fs.write(ino, 0, b"line\n"))
        requests.clear()
        run(fs.fsync(ino))
        assert [type(r).__name__ for r in requests] == ["WriteBlocks", "Flush"]
    finally:
        os.close(fd)
    kinds = [what for what, _kw in events]
    assert ("ext2.lookup", {"dir": ROOT_INO, "name": "etc", "ino": etc}) in events
    assert {"ext2.mount", "ext2.bread", "ext2.create", "ext2.write", "ext2.bwrite",
            "ext2.flush", "ext2.sync"} <= set(kinds)
    fsck(path)
    assert debugfs(path, "cat /etc/log") == b"line\n"


def test_one_operation_at_a_time(open_disk):
    d = open_disk()
    cold = Disk(d.path, cache_blocks=16)
    try:
        first = cold.fs.stat(12)
        assert isinstance(next(first), ReadBlocks)  # suspended, waiting for the disk
        with pytest.raises(RuntimeError):
            next(cold.fs.lookup(ROOT_INO, "x"))
        first.close()
        cold(cold.fs.readdir(ROOT_INO))  # the first one ended: free again
    finally:
        cold.close()
