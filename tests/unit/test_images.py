"""Guest images: reproducible ext2 that e2fsck accepts and debugfs reads."""

import hashlib
import subprocess

from launcher.images import FIXED_TIME, make_image


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_images_are_reproducible_and_clean(tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    make_image(str(a), 8)
    make_image(str(b), 8)
    assert digest(a) == digest(b)
    fsck = subprocess.run(["e2fsck", "-fn", str(a)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    cat = subprocess.run(["debugfs", "-R", "cat /etc/issue", str(a)], capture_output=True,
                         text=True)
    assert cat.stdout.startswith("XenoLinux")


def test_an_existing_image_is_kept(tmp_path):
    img = tmp_path / "d.img"
    make_image(str(img), 8)
    img.write_bytes(b"guest data")
    make_image(str(img), 8)
    assert img.read_bytes() == b"guest data"


def test_every_inode_has_the_fixed_ctime(tmp_path):
    """mke2fs -d copies each staged file's ctime (the second it was copied),
    so without the debugfs pass two builds a second apart differ."""
    img = tmp_path / "c.img"
    make_image(str(img), 8)
    want = f"ctime: 0x{FIXED_TIME:08x}"
    for path in ("/", "/bin", "/bin/sh", "/etc/issue"):
        stat = subprocess.run(["debugfs", "-R", f"stat {path}", str(img)], capture_output=True,
                              text=True).stdout
        assert want in stat, (path, stat)
