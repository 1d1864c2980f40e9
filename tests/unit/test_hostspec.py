"""Host descriptions: validation, the wire form, TOML hosts and the default host."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.hostspec import (
    ACTIONS,
    ConfigError,
    DiskSpec,
    DomainSpec,
    HostSpec,
    VifSpec,
    default_host,
    default_mac,
    load_host_toml,
    parse_host_toml,
    parse_rate,
    vdev_devid,
)

# --- strategies (test_xlcfg reuses them) -----------------------------------

names = st.from_regex(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}", fullmatch=True).filter(
    lambda s: not s.isdigit()
)
paths = st.text(st.sampled_from("abcxyz/._-, 0123"), min_size=1, max_size=30).filter(
    lambda s: s.strip() == s and not s.startswith(("target=", ","))
)
macs = st.lists(st.integers(0, 255), min_size=3, max_size=3).map(
    lambda b: "00:16:3e:" + ":".join(f"{x:02x}" for x in b)
)


@st.composite
def disk_lists(draw: st.DrawFn) -> tuple[DiskSpec, ...]:
    """Disks with distinct vdevs, as DomainSpec requires."""
    letters = draw(st.lists(st.sampled_from("abcdefghijklmnopqrstuvwxyz"), unique=True, max_size=4))
    return tuple(
        DiskSpec(
            target=draw(paths),
            vdev=f"xvd{letter}",
            access=draw(st.sampled_from(["ro", "rw"])),
        )
        for letter in letters
    )


@st.composite
def vif_lists(draw: st.DrawFn) -> tuple[VifSpec, ...]:
    """Vifs numbered from 0, some with explicit MACs (distinct by construction)."""
    count = draw(st.integers(0, 3))
    return tuple(
        VifSpec(
            devid=i,
            mac=draw(st.none() | macs.map(lambda m, i=i: m[:-2] + f"{i:02x}")),
            bridge=draw(st.sampled_from(["xenbr0", "xenbr1", "br-lan"])),
            ip=draw(st.none() | st.just("10.0.0.2")),
            mtu=draw(st.integers(68, 9000)),
            rate=draw(st.none() | st.sampled_from(["10Mb/s", "1MB/s@20ms"])),
        )
        for i in range(count)
    )


@st.composite
def domain_specs(draw: st.DrawFn) -> DomainSpec:
    """Any valid DomainSpec."""
    memory = draw(st.integers(4, 4096))
    return DomainSpec(
        name=draw(names),
        memory_mib=memory,
        maxmem_mib=draw(st.none() | st.integers(memory, 4096)),
        vcpus=draw(st.integers(1, 16)),
        on_poweroff=draw(st.sampled_from(ACTIONS)),
        on_reboot=draw(st.sampled_from(ACTIONS)),
        on_crash=draw(st.sampled_from(ACTIONS)),
        on_watchdog=draw(st.sampled_from(ACTIONS)),
        kernel=draw(st.sampled_from(["xenolinux", "other"])),
        cmdline=draw(st.text(max_size=20)),
        disks=draw(disk_lists()),
        vifs=draw(vif_lists()),
        uuid=draw(st.none() | st.uuids().map(str)),
    )


# --- ConfigError -------------------------------------------------------------


def test_config_error_is_one_line_naming_file_and_line() -> None:
    assert str(ConfigError("bad", "h.toml", 3)) == "h.toml:3: bad"
    assert str(ConfigError("bad", "h.toml")) == "h.toml: bad"
    assert str(ConfigError("bad")) == "bad"
    assert str(ConfigError("bad").located("a", 1).located("b", 2)) == "a:1: bad"
    assert str(ConfigError("bad", "a", 1).within("disk")) == "a:1: disk: bad"


# --- DomainSpec validation ---------------------------------------------------


def test_domain_defaults_follow_xl() -> None:
    spec = DomainSpec("d1")
    assert (spec.memory_mib, spec.vcpus, spec.kernel) == (32, 1, "xenolinux")
    assert (spec.on_poweroff, spec.on_reboot, spec.on_crash) == ("destroy", "restart", "destroy")
    assert spec.on_watchdog == "destroy"
    assert spec.max_memory_mib == 32
    assert DomainSpec("d1", maxmem_mib=64).max_memory_mib == 64


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"memory_mib": 3}, "memory 3 is out of range 4..4096"),
        ({"memory_mib": 4097}, "memory 4097 is out of range"),
        ({"memory_mib": True}, "memory must be an integer"),
        ({"memory_mib": "32"}, "memory must be an integer"),
        ({"maxmem_mib": 16}, "maxmem 16 must be at least memory 32"),
        ({"vcpus": 0}, "vcpus 0 is out of range 1..16"),
        ({"vcpus": 17}, "vcpus 17 is out of range"),
        ({"on_crash": "reboot"}, "on_crash 'reboot' is not one of destroy, restart"),
        ({"on_watchdog": ""}, "on_watchdog must not be empty"),
        ({"kernel": ""}, "kernel must not be empty"),
        ({"uuid": "nope"}, "uuid 'nope' is not a valid UUID"),
        ({"disks": (DiskSpec("/a", "xvda"), DiskSpec("/b", "xvda"))}, "vdev 'xvda' is used twice"),
        ({"vifs": (VifSpec(0), VifSpec(0))}, "vif devid 0 is used twice"),
    ],
)
def test_bad_domain_fields_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DomainSpec("d1", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["", "-x", "a b", "a/b", "x" * 65, "123", "dé"]
)  # fmt: skip
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="name"):
        DomainSpec(name)


@pytest.mark.parametrize("name", ["d1", "a", "x" * 64, "web.example-1_b", "1a", "."])
def test_good_names_are_accepted(name: str) -> None:
    assert DomainSpec(name).name == name


def test_every_xl_action_is_accepted() -> None:
    for action in ACTIONS:
        assert DomainSpec("d1", on_crash=action).on_crash == action


def test_uuid_is_canonicalised() -> None:
    spec = DomainSpec("d1", uuid="{6F9ADB3C-0D7E-4A5B-9C1E-2F3A4B5C6D7E}")
    assert spec.uuid == "6f9adb3c-0d7e-4a5b-9c1e-2f3a4b5c6d7e"


def test_vifs_without_mac_get_a_stable_xen_mac() -> None:
    spec = DomainSpec("d1", vifs=[VifSpec(0), VifSpec(1, mac="00:16:3E:AA:BB:CC")])
    assert isinstance(spec.vifs, tuple)
    assert spec.vifs[0].mac == default_mac("d1", 0)
    assert spec.vifs[0].mac.startswith("00:16:3e:")
    assert spec.vifs[1].mac == "00:16:3e:aa:bb:cc"
    assert DomainSpec("d1", vifs=[VifSpec(0)]) == spec.__class__("d1", vifs=(VifSpec(0),))
    assert default_mac("d1", 0) != default_mac("d2", 0)


# --- devices -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("vdev", "devid"),
    [
        ("xvda", 51712),
        ("xvdb", 51728),
        ("xvda1", 51713),
        ("xvdp", 202 << 8 | 15 << 4),
        ("xvdq", 1 << 28 | 16 << 8),
        ("xvdaa", 1 << 28 | 26 << 8),
        ("xvda16", 1 << 28 | 16),
        ("sda", 8 << 8),
        ("sdb2", 8 << 8 | 1 << 4 | 2),
        ("hda", 3 << 8),
        ("hdb", 3 << 8 | 1 << 6),
        ("hdc", 22 << 8),
        ("hdd1", 22 << 8 | 1 << 6 | 1),
    ],
)
def test_vdev_numbers_follow_xen_vbd_interface(vdev: str, devid: int) -> None:
    assert vdev_devid(vdev) == devid
    assert DiskSpec("/img", vdev).devid == devid


@pytest.mark.parametrize("vdev", ["xvd", "vda", "xvdA", "hde", "sdq", "xvda256", "xvda "])
def test_bad_vdevs_are_refused(vdev: str) -> None:
    with pytest.raises(ConfigError, match="vdev"):
        DiskSpec("/img", vdev)


def test_disk_spec_rules() -> None:
    with pytest.raises(ConfigError, match="only format=raw is supported"):
        DiskSpec("/img", "xvda", format="qcow2")
    with pytest.raises(ConfigError, match="format 'iso'"):
        DiskSpec("/img", "xvda", format="iso")
    with pytest.raises(ConfigError, match="access"):
        DiskSpec("/img", "xvda", access="r")
    with pytest.raises(ConfigError, match="target must not be empty"):
        DiskSpec("", "xvda")
    assert DiskSpec("", "hdc", access="ro", devtype="cdrom").target == ""


def test_vif_spec_rules() -> None:
    assert VifSpec(0).ifname(3) == "vif3.0"
    assert VifSpec(1, vifname="web0").ifname(3) == "web0"
    assert VifSpec(0, rate="10Mb/s").rate_limit == (62500, 50000)
    assert VifSpec(0, rate="1MB/s@20ms").rate_limit == (20000, 20000)
    assert VifSpec(0).rate_limit is None
    for fields, message in [
        ({"mac": "00:16:3e:00:00"}, "mac"),
        ({"mac": "01:00:5e:00:00:01"}, "multicast"),
        ({"bridge": "a-very-long-bridge-name"}, "bridge"),
        ({"ip": "10.0.0.300"}, "ip"),
        ({"mtu": 10}, "mtu"),
        ({"rate": "fast"}, "rate"),
        ({"rate": "1B/s@1us"}, "less than a byte"),
    ]:
        with pytest.raises(ConfigError, match=message):
            VifSpec(0, **fields)  # type: ignore[arg-type]


def test_parse_rate_units() -> None:
    assert parse_rate("8b/s@1s") == (1, 1_000_000)
    assert parse_rate("1GB/s@100us") == (100_000, 100)
    assert parse_rate("5KB/s") == (250, 50_000)


# --- the wire form -----------------------------------------------------------


def _only_builtins(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _only_builtins(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_only_builtins(v) for v in value)
    return value is None or type(value) in (str, int, bool)


@given(domain_specs())
def test_wire_round_trip(spec: DomainSpec) -> None:
    wire = spec.to_wire()
    assert _only_builtins(wire)
    assert DomainSpec.from_wire(wire) == spec
    assert DomainSpec.from_wire(msgpack.unpackb(msgpack.packb(wire))) == spec


def test_from_wire_refuses_unknown_or_bad_fields() -> None:
    wire = DomainSpec("d1", disks=[DiskSpec("/img", "xvda")]).to_wire()
    with pytest.raises(ConfigError, match="unknown fields"):
        DomainSpec.from_wire({**wire, "colour": "red"})
    with pytest.raises(ConfigError, match="disk on the wire has unknown fields"):
        DomainSpec.from_wire({**wire, "disks": [{**wire["disks"][0], "x": 1}]})
    with pytest.raises(ConfigError, match="memory 0"):
        DomainSpec.from_wire({**wire, "memory_mib": 0})
    with pytest.raises(ConfigError, match="must be a dict"):
        DomainSpec.from_wire(["d1"])


# --- HostSpec ----------------------------------------------------------------


def test_host_lookup_and_with_domains() -> None:
    host = HostSpec().with_domains(DomainSpec("a"), DomainSpec("b"))
    assert host.domain("b").name == "b"
    assert host.domain_names == ("a", "b")
    with pytest.raises(KeyError, match="no domain 'c'"):
        host.domain("c")
    assert host.with_domains().domains == ()


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (lambda: HostSpec(domains=[DomainSpec("a"), DomainSpec("a")]), "domain name 'a'"),
        (lambda: HostSpec(domains=[DomainSpec("Domain-0")]), "reserved"),
        (lambda: HostSpec(memory_mib=96, domains=[DomainSpec("a", memory_mib=33)]), "97 MiB"),
        (lambda: HostSpec(cpus=0), "host cpus"),
        (lambda: HostSpec(dom0_memory_mib=2), "dom0 memory"),
        (lambda: HostSpec(dom0_vcpus=17), "dom0 vcpus"),
        (lambda: HostSpec(name="my host"), "host name"),
    ],
)
def test_bad_hosts_are_refused(host: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        host()  # type: ignore[operator]


def test_host_memory_may_be_used_exactly() -> None:
    host = HostSpec(memory_mib=96, domains=[DomainSpec("a", memory_mib=32)])
    assert host.memory_mib == 96


def test_duplicate_macs_across_domains_are_refused() -> None:
    vif = VifSpec(0, mac="00:16:3e:00:00:01")
    with pytest.raises(ConfigError, match="mac"):
        HostSpec(domains=[DomainSpec("a", vifs=[vif]), DomainSpec("b", vifs=[vif])])


# --- TOML hosts --------------------------------------------------------------

FULL_TOML = """\
[host]
name = "lab"
memory = 1024
cpus = 4

[dom0]
memory = 128
vcpus = 2

[[domain]]
name = "d1"
memory = 48
maxmem = 64
vcpus = 2
on_crash = "restart"
disk = ["format=raw, vdev=xvda, access=rw, target=/path/img"]
vif = ["bridge=xenbr0"]
cmdline = "console=hvc0"

[[domain]]
name = "d2"
"""


def test_toml_host_loads_every_field() -> None:
    host = load_host_toml(FULL_TOML)
    assert (host.name, host.memory_mib, host.cpus) == ("lab", 1024, 4)
    assert (host.dom0_memory_mib, host.dom0_vcpus) == (128, 2)
    d1 = host.domain("d1")
    assert (d1.memory_mib, d1.maxmem_mib, d1.vcpus, d1.on_crash) == (48, 64, 2, "restart")
    assert d1.disks == (DiskSpec("/path/img", "xvda"),)
    assert d1.vifs[0].bridge == "xenbr0" and d1.vifs[0].devid == 0
    assert d1.cmdline == "console=hvc0"
    assert host.domain("d2") == DomainSpec("d2")
    assert host.warnings == ()


def test_toml_defaults_when_tables_are_missing() -> None:
    host = parse_host_toml('[[domain]]\nname = "x"\n')
    assert (host.name, host.memory_mib, host.cpus, host.dom0_memory_mib) == ("default", 2048, 2, 64)
    assert parse_host_toml("").domains == ()


def test_toml_domain_from_xl_cfg_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "d2.cfg").write_text('name = "d2"\nmemory = 40\nvcpus = 2\npool = "x"\n')
    toml = tmp_path / "host.toml"
    toml.write_text('[[domain]]\nconfig = "cfg/d2.cfg"\nvcpus = 3\n')
    host = load_host_toml(toml)
    d2 = host.domain("d2")
    assert (d2.memory_mib, d2.vcpus) == (40, 3)  # the TOML table overrides the file
    assert host.warnings == (f"{tmp_path / 'cfg' / 'd2.cfg'}:4: key 'pool' is not used by xenolab",)
    assert load_host_toml(str(toml)) == host


def test_toml_unknown_domain_keys_are_warnings() -> None:
    host = parse_host_toml('[[domain]]\nname = "d1"\nbootloader = "pygrub"\n', "h.toml")
    assert host.warnings == ("h.toml:1: key 'bootloader' is not used by xenolab",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[host]\nram = 5\n",
            r"h.toml: unknown key 'ram' in \[host\] \(expected name, memory, cpus\)",
        ),
        ("[dom0]\ncpus = 1\n", r"h.toml: unknown key 'cpus' in \[dom0\]"),
        ("[guests]\n", "h.toml: unknown key 'guests' in top level"),
        ("host = 1\n", "h.toml: 'host' must be a table"),
        ("domain = 1\n", "h.toml: 'domain' must be an array of tables"),
        ('[host]\nmemory = 100\n[[domain]]\nname="a"\nmemory=64\n', "h.toml: .*need 128 MiB, more"),
        ('[[domain]]\nname="a"\n[[domain]]\nname="a"\n', "h.toml: domain name 'a' is used twice"),
        ("[host]\nname = \n", r"h.toml:2: Invalid value \(column 8\)"),
        ("\n[[domain]]\nmemory = 32\n", "h.toml:2: mandatory key 'name' is missing"),
        ('[[domain]]\nname = "x"\n[[domain]]\nname="y"\nvcpus = 99\n', "h.toml:3: vcpus 99"),
        ('[[domain]]\nname = "x"\nmemory = true\n', "h.toml:1: memory must be an integer"),
        ('[[domain]]\nname = "x"\ndisk = "/img,,xvda"\n', "h.toml:1: disk must be a list"),
        ('[[domain]]\nconfig = "nope.cfg"\n', "h.toml:1: cannot read config 'nope.cfg'"),
        ("[[domain]]\nconfig = 3\n", "h.toml:1: config must be a path"),
    ],
)
def test_toml_errors_name_the_file(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_host_toml(text, "h.toml")
    assert "\n" not in str(info.value)


def test_toml_errors_inside_an_xl_cfg_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "d.cfg").write_text('name = "d"\n\nmemory = 1\n')
    (tmp_path / "h.toml").write_text('[[domain]]\nconfig = "d.cfg"\n')
    with pytest.raises(ConfigError, match=r"d\.cfg:3: memory 1 is out of range"):
        load_host_toml(tmp_path / "h.toml")


def test_missing_toml_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read host description"):
        load_host_toml(tmp_path / "absent.toml")


# --- the default host --------------------------------------------------------


def test_default_host() -> None:
    host = default_host()
    assert (host.name, host.dom0_memory_mib) == ("default", 64)
    assert host.domain_names == ("d1", "d2")
    for spec in host.domains:
        assert (spec.memory_mib, spec.vcpus, spec.on_crash) == (32, 1, "restart")
        assert spec.disks == (DiskSpec(f"{spec.name}.img", "xvda"),)  # its own image
        n = spec.name[-1]
        assert spec.vifs == (VifSpec(0, f"00:16:3e:00:00:1{n}", "xenbr0", f"10.0.0.1{n}"),)
        assert spec.cmdline == f"ip=10.0.0.1{n}::10.0.0.1:255.255.255.0:{spec.name}:eth0:off"
    assert host.warnings == ()


def test_default_host_file_is_the_default_host() -> None:
    shipped = Path(__file__).parents[2] / "launcher" / "default_host.toml"
    assert load_host_toml(shipped) == default_host()
    assert dataclasses.replace(default_host()) == default_host()
