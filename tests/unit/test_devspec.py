"""[[device]] tables, image paths and the implicit disk device per image."""

import os

import pytest

from hypervisor.iommu import parse_device_arg
from launcher import commands, rundir
from launcher.devspec import (
    NAME_RE,
    DeviceSpec,
    implicit_name,
    resolve_image,
    with_disk_devices,
)
from launcher.firmware import device_arg
from launcher.hostspec import ConfigError, DiskSpec, DomainSpec, HostSpec, default_host
from launcher.hostspec import parse_host_toml as toml

IMAGES = "/run/images/h"


def disk(target: str, vdev: str = "xvda", **kw) -> DiskSpec:
    return DiskSpec(target, vdev, **kw)


def host(*domains: DomainSpec, devices=()) -> HostSpec:
    return HostSpec(name="h", domains=domains, devices=devices)


# --- DeviceSpec and [[device]] ----------------------------------------------------


def test_device_spec_rules() -> None:
    d = DeviceSpec("disk0", image="/x.img", latency="fixed:250", fail_rate=0.5, seed=7)
    assert d.argv() == ["--image", "/x.img", "--latency", "fixed:250", "--fail-rate", "0.5",
                        "--seed", "7"]
    for fields, message in [
        ({"name": "Disk0", "image": "/x"}, "lower-case"),
        ({"name": "0disk", "image": "/x"}, "lower-case"),
        ({"name": "d" * 32, "image": "/x"}, "lower-case"),
        ({"name": "gpu0", "kind": "gpu", "image": "/x"}, "unknown kind"),
        ({"name": "disk0"}, "needs image"),
        ({"name": "disk0", "image": "/x", "latency": "ssd"}, "latency"),
        ({"name": "disk0", "image": "/x", "latency": "fixed:"}, "latency"),
        ({"name": "disk0", "image": "/x", "latency": "hdd:500"}, "latency"),
        ({"name": "disk0", "image": "/x", "latency": "hdd:"}, "latency"),
        ({"name": "disk0", "image": "/x", "fail_rate": 1.5}, "fail_rate"),
        ({"name": "disk0", "image": "/x", "fail_rate": "high"}, "fail_rate"),
        ({"name": "disk0", "image": "/x", "seed": -1}, "seed"),
        ({"name": "disk0", "image": "/x", "on_crash": "retry"}, "on_crash"),
        ({"name": "disk0", "image": "/x", "on_crash": 1}, "on_crash"),
        ({"name": "disk0", "image": 3}, "image"),
        ({"name": 3, "image": "/x"}, "name"),
    ]:
        with pytest.raises(ConfigError, match=message):
            DeviceSpec(**fields)
    assert DeviceSpec("d" * 31, image="/x").name == "d" * 31
    for latency in ("none", "fixed:0", "hdd", "hdd:5400", "hdd:15000"):
        assert DeviceSpec("disk0", image="/x", latency=latency).latency == latency


def test_device_tables_in_toml() -> None:
    spec = toml('[[device]]\nname = "slow"\nimage = "d1.img"\nlatency = "hdd"\n'
                '[[device]]\nname = "flaky"\nkind = "disk"\nimage = "/srv/f.img"\n'
                'fail_rate = 0.01\nseed = 3\non_crash = "fail"\n')
    assert spec.devices == (DeviceSpec("slow", image="d1.img", latency="hdd"),
                            DeviceSpec("flaky", image="/srv/f.img", fail_rate=0.01, seed=3,
                                       on_crash="fail"))
    assert spec.devices[0].on_crash == "wait"  # the default: keep what a dead device held
    # a relative image stays relative in the description: the launcher resolves it
    assert spec.devices[0].image == "d1.img"


@pytest.mark.parametrize(("text", "message"), [
    ('device = 3\n', "array of tables"),
    ('device = [1]\n', "must be a table"),
    ('[[device]]\nname = "a"\nimage = "x"\nspeed = 3\n', "speed"),
    ('[[device]]\nname = "a"\nimage = "x"\n[[device]]\nname = "a"\nimage = "y"\n', "duplicate"),
    ('[[device]]\nname = "a"\n', "needs image"),
])
def test_bad_device_tables(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        toml(text, "lab.toml")
    assert str(err.value).startswith("lab.toml")


# --- image paths ------------------------------------------------------------------


def test_relative_images_live_in_the_image_directory() -> None:
    assert resolve_image("d1.img", IMAGES) == f"{IMAGES}/d1.img"
    assert resolve_image("sub/../d1.img", IMAGES) == f"{IMAGES}/d1.img"
    assert resolve_image("/srv//web.img", IMAGES) == "/srv/web.img"
    assert resolve_image("", IMAGES) == ""  # an empty cdrom drive
    assert rundir.image_dir("lab") == os.path.join(rundir.run_root(), "images", "lab")


@pytest.mark.parametrize("name", ["images", ".", ".."])
def test_host_names_that_would_clash_with_the_image_directory(name: str) -> None:
    with pytest.raises(rundir.HostError):
        rundir.host_name(name)


# --- one controller per image ------------------------------------------------------


def test_every_domu_disk_gets_a_device() -> None:
    spec = with_disk_devices(host(
        DomainSpec("d1", disks=(disk("d1.img"), disk("/srv/data.img", "xvdb", access="ro"))),
        DomainSpec("d2", disks=(disk("d2.img"),))), IMAGES)
    assert [(d.name, d.kind, d.image) for d in spec.devices] == [
        ("vbd-d1-xvda", "disk", f"{IMAGES}/d1.img"),
        ("vbd-d1-xvdb", "disk", "/srv/data.img"),
        ("vbd-d2-xvda", "disk", f"{IMAGES}/d2.img"),
    ]
    assert all((d.latency, d.fail_rate) == ("none", 0.0) for d in spec.devices)
    # the domains' targets are the devices' images: blkback matches `params` to them
    assert [k.target for d in spec.domains for k in d.disks] == [
        f"{IMAGES}/d1.img", "/srv/data.img", f"{IMAGES}/d2.img"]


def test_a_device_table_serving_the_image_replaces_the_implicit_one() -> None:
    slow = DeviceSpec("slow", image="d1.img", latency="hdd")
    spec = with_disk_devices(host(DomainSpec("d1", disks=(disk("./d1.img"),)),
                                  DomainSpec("d2", disks=(disk("d2.img"),)),
                                  devices=(slow,)), IMAGES)
    assert [(d.name, d.image, d.latency) for d in spec.devices] == [
        ("slow", f"{IMAGES}/d1.img", "hdd"), ("vbd-d2-xvda", f"{IMAGES}/d2.img", "none")]


def test_disks_sharing_an_image_share_its_device_and_cdroms_need_none() -> None:
    spec = with_disk_devices(host(
        DomainSpec("a", disks=(disk("base.img", access="ro"),
                               disk("", "hdc", access="ro", devtype="cdrom"))),
        DomainSpec("b", disks=(disk(f"{IMAGES}/base.img", access="ro"),))), IMAGES)
    assert [d.name for d in spec.devices] == ["vbd-a-xvda"]


def test_implicit_names_are_valid_and_unique() -> None:
    taken = {"vbd-d1-xvda"}
    assert implicit_name("d1", "xvda", taken) == "vbd-d1-xvda-2"
    assert implicit_name("Web.Server-1", "xvdb") == "vbd-web_server-1-xvdb"
    long = implicit_name("x" * 64, "xvdaaa255", {implicit_name("x" * 64, "xvdaaa255")})
    assert NAME_RE.match(long) and long.endswith("-xvdaaa255-2")
    # names that differ only in case or punctuation still get distinct devices
    spec = with_disk_devices(host(DomainSpec("D1", disks=(disk("a.img"),)),
                                  DomainSpec("d1", disks=(disk("b.img"),)),
                                  devices=(DeviceSpec("vbd-d1-xvda-2", image="c.img"),)),
                             IMAGES)
    names = [d.name for d in spec.devices]
    assert names == ["vbd-d1-xvda-2", "vbd-d1-xvda", "vbd-d1-xvda-3"]


def test_the_default_host_gives_each_domu_its_own_image() -> None:
    spec = with_disk_devices(default_host(), IMAGES)
    assert {d.name: d.image for d in spec.devices} == {
        "vbd-d1-xvda": f"{IMAGES}/d1.img", "vbd-d2-xvda": f"{IMAGES}/d2.img"}


# --- the launcher tells Xen which image a device serves --------------------------------


@pytest.mark.parametrize("image", ["/srv/a:b c.img", "/tmp/caf\u00e9.img", "/tmp/raw\udcff.img"])
def test_device_argument_round_trip(image: str) -> None:
    dev = DeviceSpec("disk0", image=image)
    secret = bytes(range(16))
    arg = device_arg(dev, secret, 9, 17)
    assert parse_device_arg(arg) == ("disk0", "disk", secret, 9, 17, image)


def test_device_argument_without_image() -> None:
    assert parse_device_arg("nic0:disk:00ff:5:16") == ("nic0", "disk", b"\0\xff", 5, 16, "")
    with pytest.raises(ValueError):
        parse_device_arg("a:b:c")


# --- the command line resolves the same way --------------------------------------------


def test_xl_block_attach_resolves_relative_targets(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XENOLAB_RUN_ROOT", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    images = rundir.image_dir("lab")
    wire = commands._disk_wire(disk("d3.img", "xvdb", access="ro"), "lab")
    assert wire == {"target": f"{images}/d3.img", "vdev": "xvdb", "format": "raw",
                    "access": "ro"}
    assert capsys.readouterr().err == ""
    (tmp_path / "here.img").write_bytes(b"")  # a file of that name here: say which one is used
    assert commands._disk_wire(disk("here.img"), "lab")["target"] == f"{images}/here.img"
    assert "image directory" in capsys.readouterr().err
    assert commands._disk_wire(disk(str(tmp_path / "here.img")), "lab")["target"] == str(
        tmp_path / "here.img")
    assert capsys.readouterr().err == ""

