"""ext2 core against a model: random operations on real images, compared with
an in-memory tree, then e2fsck -fn and a debugfs dump of the whole tree."""

import errno
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.xenolinux.fs.ext2 import FsError
from tests.unit.test_ext2 import KIB, Disk, debugfs, fsck, mkfs, pattern


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A 2 MiB image with 1 KiB blocks, made once; examples work on copies."""
    base = tmp_path_factory.mktemp("model")
    empty = base / "empty"
    empty.mkdir()
    return mkfs(base / "model.img", 2048, "-b", "1024", "-I", "256", template=str(empty))


NAMES = ["a", "b", "c", "d"]
OFFSETS = [0, 100, 1023, 1024, 12 * KIB - 7, 70 * KIB, 300 * KIB]
COUNTS = [1, 10, 1024, 3000, 20 * KIB]
SIZES = [0, 1, 1024, 5000, 13 * KIB, 280 * KIB]
KINDS = ["create", "create", "mkdir", "write", "write", "truncate", "unlink", "rmdir",
         "rename", "rename"]
# An abstract operation: (kind, pick, pick, pick); picks choose among what exists now.
ABSTRACT_OPS = st.tuples(st.sampled_from(KINDS), st.integers(0, 99), st.integers(0, 99),
                         st.integers(0, 99))


class Model:
    """The expected tree: path -> bytes for files, None for directories."""

    def __init__(self) -> None:
        self.tree: dict[str, bytes | None] = {"/": None, "/lost+found": None}

    @staticmethod
    def parent(p: str) -> str:
        return p.rpartition("/")[0] or "/"

    def children(self, p: str) -> list[str]:
        return [q for q in self.tree if q != p and self.parent(q) == p]

    def walk(self, p: str) -> bytes | None:
        """Resolve `p` as namei does: ENOENT for a missing part, ENOTDIR for a
        file walked through."""
        cur = "/"
        for part in p.strip("/").split("/"):
            if self.tree[cur] is not None:
                raise FsError(errno.ENOTDIR, p)
            cur = cur.rstrip("/") + "/" + part
            if cur not in self.tree:
                raise FsError(errno.ENOENT, p)
        return self.tree[cur]

    def in_dir(self, p: str) -> None:
        """`p`'s parent resolves and is a directory."""
        if self.walk(self.parent(p)) is not None:
            raise FsError(errno.ENOTDIR, p)

    def need(self, p: str) -> bytes | None:
        self.in_dir(p)
        if p not in self.tree:
            raise FsError(errno.ENOENT, p)
        return self.tree[p]

    def concrete(self, op: tuple) -> tuple:
        """Turn an abstract op into one on paths, mostly paths that exist."""
        kind, p1, p2, p3 = op
        dirs = sorted(q for q, v in self.tree.items() if v is None)
        paths = sorted(q for q in self.tree if q != "/")

        def new(pick: int, sub: int) -> str:
            return dirs[pick % len(dirs)].rstrip("/") + "/" + NAMES[sub % len(NAMES)]

        def old(pick: int) -> str:
            return paths[pick % len(paths)] if paths and pick % 10 else new(pick, pick // 10)

        if kind in ("create", "mkdir"):
            return kind, new(p1, p2)
        if kind == "write":
            return kind, old(p1), OFFSETS[p2 % len(OFFSETS)], COUNTS[p3 % len(COUNTS)]
        if kind == "truncate":
            return kind, old(p1), SIZES[p2 % len(SIZES)]
        if kind == "rename":
            return kind, old(p1), new(p2, p3)
        return kind, old(p1)

    def apply(self, op: tuple) -> None:
        getattr(self, "do_" + op[0])(*op[1:])

    def do_create(self, p):
        self.in_dir(p)
        if p in self.tree:
            raise FsError(errno.EEXIST, p)
        self.tree[p] = b""

    def do_mkdir(self, p):
        self.do_create(p)
        self.tree[p] = None

    def do_write(self, p, off, n):
        old = self.walk(p)
        if old is None:
            raise FsError(errno.EISDIR, p)
        data = pattern(n, seed=off + n)
        old = old.ljust(off, b"\0")
        self.tree[p] = old[:off] + data + old[off + n:]

    def do_truncate(self, p, size):
        old = self.walk(p)
        if old is None:
            raise FsError(errno.EISDIR, p)
        self.tree[p] = old[:size].ljust(size, b"\0")

    def do_unlink(self, p):
        if self.need(p) is None:
            raise FsError(errno.EISDIR, p)
        del self.tree[p]

    def do_rmdir(self, p):
        if self.need(p) is not None:
            raise FsError(errno.ENOTDIR, p)
        if self.children(p):
            raise FsError(errno.ENOTEMPTY, p)
        del self.tree[p]

    def do_rename(self, src, dst):
        self.walk(self.parent(src))
        self.walk(self.parent(dst))
        self.need(src)
        self.in_dir(dst)
        if src == dst:
            return
        is_dir = self.tree[src] is None
        if is_dir and self.parent(src) != self.parent(dst) and dst.startswith(src + "/"):
            raise FsError(errno.EINVAL, dst)
        if dst in self.tree:
            if is_dir and self.tree[dst] is not None:
                raise FsError(errno.ENOTDIR, dst)
            if not is_dir and self.tree[dst] is None:
                raise FsError(errno.EISDIR, dst)
            if self.children(dst):
                raise FsError(errno.ENOTEMPTY, dst)
        moved = {q: v for q, v in self.tree.items() if q == src or q.startswith(src + "/")}
        for q in moved:
            del self.tree[q]
        self.tree.pop(dst, None)
        self.tree.update({dst + q[len(src):]: v for q, v in moved.items()})


def run_op(d: Disk, op: tuple) -> None:
    kind, path = op[0], op[1]
    if kind == "write":
        off, n = op[2], op[3]
        assert d(d.fs.write(d.path_of(path), off, pattern(n, seed=off + n))) == n
    elif kind == "truncate":
        d(d.fs.truncate(d.path_of(path), op[2]))
    elif kind == "rename":
        src, dst = d.parent(path), d.parent(op[2])
        d(d.fs.rename(*src, *dst))
    else:
        d(getattr(d.fs, kind)(*d.parent(path)))


def outcome(fn) -> int:
    try:
        fn()
    except FsError as err:
        return err.errno
    return 0


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(ABSTRACT_OPS, min_size=5, max_size=30))
def test_random_operations_match_a_model_and_stay_fsck_clean(image, tmp_path_factory, ops):
    work = tmp_path_factory.mktemp("prop")
    path = work / "p.img"
    shutil.copyfile(image, path)
    d = Disk(path, cache_blocks=32)
    model = Model()
    try:
        for abstract in ops:
            op = model.concrete(abstract)
            expected = outcome(lambda op=op: model.apply(op))
            assert outcome(lambda op=op: run_op(d, op)) == expected, op
        for p, data in model.tree.items():
            if data is not None:
                assert d.cat(p) == data, p
        d(d.fs.sync())
        fsck(path)
        out = work / "dump"
        out.mkdir()
        debugfs(path, f"rdump / {out}")
        dumped = {"/" + str(q.relative_to(out)): (None if q.is_dir() else q.read_bytes())
                  for q in out.rglob("*")}
        assert dumped == {p: v for p, v in model.tree.items() if p != "/"}
    finally:
        d.close()
        shutil.rmtree(work)
