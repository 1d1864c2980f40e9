"""Guest disk images: raw files holding an ext2 filesystem made from a template.

Rules:
1. `mke2fs -t ext2 -d TEMPLATE` builds the filesystem (the guest's programs
   from domains/xenolinux/bin/ become its /bin); the result is
   reproducible: fixed UUID and directory hash seed, a fixed mke2fs clock
   (E2FSPROGS_FAKE_TIME) and a staged copy of the template whose files all
   carry the same timestamp and mode, so two builds are byte-identical.
   mke2fs -d copies each file's ctime, which no one can set: debugfs then
   sets every inode's ctime to the fixed time too.
2. An existing image is never overwritten unless asked: it is the guest's
   disk and holds what the guest wrote.
"""

import os
import shutil
import subprocess
import tempfile
from importlib import resources

from launcher.rundir import HostError

FIXED_TIME = 1_700_000_000
FS_UUID = "5a1b0c2d-0000-4000-8000-00000000e2f5"
HASH_SEED = "5a1b0c2d-0000-4000-8000-0000000a5eed"
BLOCK_SIZE = 1024


def default_template() -> str:
    return str(resources.files("domains.xenolinux") / "rootfs")


def guest_programs() -> str:
    """The folder whose files become /bin of every image (the guest's programs)."""
    return str(resources.files("domains.xenolinux") / "bin")


def make_image(path: str, size_mib: int = 16, template: str | None = None,
               overwrite: bool = False) -> str:
    """Create `path` as an ext2 image of `size_mib` from `template`."""
    if os.path.exists(path) and not overwrite:
        return path
    template = template or default_template()
    if shutil.which("mke2fs") is None:
        raise HostError("mke2fs not found: install e2fsprogs")
    with tempfile.TemporaryDirectory() as stage:
        root = os.path.join(stage, "root")
        shutil.copytree(template, root, ignore=shutil.ignore_patterns(".keep", "__pycache__"))
        shutil.copytree(guest_programs(), os.path.join(root, "bin"), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        _normalise(root)
        _mke2fs(path, root, size_mib)
    return path


def _paths(root: str) -> list[str]:
    """Every file and directory of the staged tree, as paths in the image."""
    out = ["/"]
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        base = "/" if rel == "." else "/" + rel + "/"
        out += [base + n for n in sorted(dirnames + filenames)]
    return out


def _fix_ctimes(image: str, root: str, env: dict) -> None:
    """Rule 1: one debugfs run sets the ctime of every copied inode."""
    cmds = "".join(f'sif "{p}" ctime @{FIXED_TIME}\n' for p in _paths(root))
    res = subprocess.run(["debugfs", "-w", "-f", "-", image], input=cmds, env=env,
                         capture_output=True, text=True)
    if res.returncode != 0 or "sif:" in res.stderr:
        raise HostError(f"debugfs failed: {res.stderr.strip().splitlines()[-1:]}")


def _normalise(root: str) -> None:
    """Same mode and time on every file, deepest first (so dirs keep theirs)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            executable = os.access(p, os.X_OK) or os.path.basename(dirpath) == "bin"
            os.chmod(p, 0o755 if executable else 0o644)
            os.utime(p, (FIXED_TIME, FIXED_TIME))
        os.chmod(dirpath, 0o755)
        os.utime(dirpath, (FIXED_TIME, FIXED_TIME))


def _mke2fs(path: str, root: str, size_mib: int) -> None:
    tmp = path + ".tmp"
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(FIXED_TIME)}
    cmd = ["mke2fs", "-q", "-F", "-t", "ext2", "-b", str(BLOCK_SIZE), "-d", root, "-U", FS_UUID,
           "-E", f"hash_seed={HASH_SEED},root_owner=0:0", "-L", "xenolinux", tmp,
           f"{size_mib}M"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise HostError(f"mke2fs failed: {res.stderr.strip().splitlines()[-1:]}")
    _fix_ctimes(tmp, root, env)
    os.replace(tmp, path)
