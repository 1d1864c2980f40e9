"""Each DomU disk of a host description is an image with its own disk device.

The default host boots with one image and one controller per DomU; the
images live in the host's image directory and outlive the run directory, so
what was written in one boot is there in the next.
"""

import json
import os
import pathlib
import subprocess

import pytest

from launcher import rundir
from launcher.host import Host
from launcher.hostspec import default_host, parse_host_toml
from launcher.rundir import HostError
from tests.conftest import assert_no_leaks, shm_entries, xenolab

FREE_BLOCK = 16383  # the last 1 KiB block of a 16 MiB image: outside every file
DEFAULT_TOML = pathlib.Path(__file__).parents[2] / "launcher" / "default_host.toml"
MARK = b"written in the first boot".ljust(1024, b".")


def boot(spec, name: str, lines: list[str]) -> Host:
    return Host(spec, name=name, progress=lines.append).start()


def down(h: Host, shm: set[str]) -> None:
    h.down()
    assert_no_leaks(h.name, shm)


def device_titles(name: str) -> set[str]:
    prefix = f"xenolab[{name}]: "
    return {p.cmdline()[0][len(prefix):] for p in rundir.host_processes(name)
            if p.cmdline()[0].endswith("(disk device)")}


def fsck(img: str) -> None:
    res = subprocess.run(["e2fsck", "-fn", img], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def block_in_use(img: str, block: int) -> bool:
    out = subprocess.run(["debugfs", "-R", f"testb {block}", img], capture_output=True,
                         text=True).stdout
    return "not in use" not in out


def test_default_host_disks_are_images_with_their_own_devices_and_persist():
    name, shm = f"img-{os.getpid()}", shm_entries()
    images = rundir.image_dir(name)
    d1, d2 = os.path.join(images, "d1.img"), os.path.join(images, "d2.img")
    lines: list[str] = []
    h = boot(default_host(), name, lines)
    try:
        assert [line for line in lines if line.startswith("Creating disk image")] == [
            f"Creating disk image {d1} (16 MiB ext2)", f"Creating disk image {d2} (16 MiB ext2)"]
        assert device_titles(name) == {"vbd-d1-xvda (disk device)", "vbd-d2-xvda (disk device)"}
        env = {**os.environ, "XENOLAB_HOST": name}
        disks = {d["name"]: d for d in json.loads(xenolab("dev", "list", "--json",
                                                          env=env).stdout)}
        assert set(disks) == {"vbd-d1-xvda", "vbd-d2-xvda"}
        assert all(d["ready"] and d["capacity_sectors"] == 32768 for d in disks.values())
        assert [r["target"] for r in h.xl("block_list", dom="d1")] == [d1]
        # xl block-attach with a relative target names an image of this host too
        xenolab("xl", "block-attach", "d1", "format=raw, vdev=xvdb, access=ro, target=d2.img",
                env=env, cwd="/")
        assert {r["vdev"]: r["target"] for r in h.xl("block_list", dom="d1")} == {
            "xvda": d1, "xvdb": d2}
        # through d1's controller, into a block no file uses
        assert not block_in_use(d1, FREE_BLOCK)
        h.xl("phys_write", dev="vbd-d1-xvda", sector=FREE_BLOCK * 2, data=MARK, fua=True)
    finally:
        down(h, shm)
    for img in (d1, d2):
        fsck(img)
    # The same host again, now with a slow controller of its own for d1's image.
    toml = (DEFAULT_TOML.read_text() + '\n[[device]]\nname = "slow"\nimage = "d1.img"\n'
            'latency = "fixed:100"\n')
    lines.clear()
    h = boot(parse_host_toml(toml), name, lines)
    try:
        assert not [line for line in lines if line.startswith("Creating")]  # kept, not remade
        assert {d["name"] for d in h.xl("phys_list")} == {"slow", "vbd-d2-xvda"}
        assert h.xl("phys_read", dev="slow", sector=FREE_BLOCK * 2, count=2) == MARK
        env = {**os.environ, "XENOLAB_HOST": name}
        bad = xenolab("dev", "latency", "slow", "ssd", env=env, check=False)
        assert bad.returncode == 1 and "latency must be" in bad.stderr
        xenolab("dev", "fault", "slow", "eio", env=env)
        with pytest.raises(HostError, match="error"):
            h.xl("phys_read", dev="slow", sector=0, count=1)
    finally:
        down(h, shm)
    fsck(d1)
