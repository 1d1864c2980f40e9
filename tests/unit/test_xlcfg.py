"""xl.cfg files, disk specs and vif specs (xl.cfg(5), xl-disk/network-configuration(5))."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.hostspec import ConfigError, DiskSpec, DomainSpec, default_mac
from launcher.xlcfg import (
    Setting,
    build_domain,
    parse_disk_spec,
    parse_settings,
    parse_vif_spec,
    parse_xl_cfg,
)
from tests.unit.test_hostspec import domain_specs


def values(text: str) -> dict[str, object]:
    """KEY -> VALUE of `text`, syntax only."""
    return {s.key: s.value for s in parse_settings(text)}


# --- syntax ------------------------------------------------------------------


def test_statements_split_on_newlines_and_semicolons_with_comments() -> None:
    text = '# a comment\nname = "d1" ; memory=64 # trailing\n\n;;vcpus=2;\n'
    assert values(text) == {"name": "d1", "memory": 64, "vcpus": 2}


def test_settings_keep_their_line_and_source() -> None:
    settings = parse_settings('name="d1"\n\nmemory = 8; vcpus = 1', "d1.cfg")
    assert [(s.key, s.line, s.source) for s in settings] == [
        ("name", 1, "d1.cfg"),
        ("memory", 3, "d1.cfg"),
        ("vcpus", 3, "d1.cfg"),
    ]
    assert settings[1].where == "d1.cfg:3"


@pytest.mark.parametrize(
    ("literal", "value"),
    [("0", 0), ("42", 42), ("0x1F", 31), ("0X10", 16), ("010", 8), ("0777", 511), ("00", 0)],
)
def test_numbers_are_decimal_octal_or_hex(literal: str, value: int) -> None:
    assert values(f"n = {literal}") == {"n": value}


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'single'", "single"),
        ('"double"', "double"),
        ("'it''s'", None),  # two strings in a row: a syntax error, checked below
        (r'"a\"b"', 'a"b'),
        (r"'a\'b'", "a'b"),
        (r'"tab\tnl\n\\"', "tab\tnl\n\\"),
        (r'"\x41\101\,"', "AA,"),
        ('"it\'s"', "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        ("''", ""),
    ],
)
def test_strings_in_both_quote_styles(literal: str, value: str | None) -> None:
    if value is None:
        with pytest.raises(ConfigError, match="expected a newline or ';'"):
            parse_settings(f"s = {literal}")
    else:
        assert values(f"s = {literal}") == {"s": value}


def test_lists_nest_span_lines_and_allow_trailing_commas() -> None:
    text = "l = [ 1, 'two',\n  [ 3, [ \"four\" ], ],\n  # comment inside\n  [],\n]\nm=[]"
    assert values(text) == {"l": [1, "two", [3, ["four"]], []], "m": []}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "d1\n', "b.cfg:1: unterminated string"),
        ("a = 1\nb = 'x", "b.cfg:2: unterminated string"),
        ("a = 1\n\nb = 08", "b.cfg:3: invalid number '08'"),
        ("a = 12ab", "b.cfg:1: invalid number '12ab'"),
        ("a = -1", "b.cfg:1: unexpected character '-'"),
        ("a = 1.5", r"b.cfg:1: unexpected character '\.'"),
        ("a = 1 b = 2", "b.cfg:1: expected a newline or ';' after the value, found 'b'"),
        ("\na", "b.cfg:2: expected '=' after 'a', found the end of the file"),
        ("a 1", "b.cfg:1: expected '=' after 'a', found '1'"),
        ("a =\n1", "b.cfg:1: expected a value .*, found a newline"),
        ("a = ]", "b.cfg:1: expected a value .*, found ']'"),
        ("= 1", "b.cfg:1: expected a KEY=VALUE setting, found '='"),
        ("\n\nl = [1,\n 2\n", "b.cfg:3: list opened on line 3 is not closed"),
        ("l = [1 2]", "b.cfg:1: expected ',' or ']' in a list, found '2'"),
        ("l = [,]", "b.cfg:1: expected a value"),
        ("l = [1,,]", "b.cfg:1: expected a value"),
        (r"s = '\q'", r"b.cfg:1: invalid escape sequence '\\q'"),
        ("a = bare", "b.cfg:1: expected a value .*, found 'bare'"),
    ],
)
def test_syntax_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_settings(text, "b.cfg")
    assert "\n" not in str(info.value)


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        parse_xl_cfg(text)
    except ConfigError as e:
        assert "\n" not in str(e)


# --- meaning -----------------------------------------------------------------


def test_minimal_file_gets_xl_defaults() -> None:
    spec, warnings = parse_xl_cfg('name = "d1"')
    assert spec == DomainSpec("d1")
    assert warnings == []


def test_every_used_key() -> None:
    text = """
name = "web"
memory = 64
maxmem = 128
vcpus = 2
on_poweroff = "preserve"
on_reboot = "rename-restart"
on_crash = "coredump-restart"
on_watchdog = "soft-reset"
kernel = "xenolinux"
cmdline = "console=hvc0 init=/bin/sh"
type = "pv"
uuid = "6F9ADB3C-0D7E-4A5B-9C1E-2F3A4B5C6D7E"
disk = [ '/img,,xvda' ]
vif = [ 'mac=00:16:3e:00:00:01' ]
"""
    spec, warnings = parse_xl_cfg(text, "web.cfg")
    assert warnings == []
    assert spec == DomainSpec(
        name="web",
        memory_mib=64,
        maxmem_mib=128,
        vcpus=2,
        on_poweroff="preserve",
        on_reboot="rename-restart",
        on_crash="coredump-restart",
        on_watchdog="soft-reset",
        cmdline="console=hvc0 init=/bin/sh",
        uuid="6f9adb3c-0d7e-4a5b-9c1e-2f3a4b5c6d7e",
        disks=(DiskSpec("/img", "xvda"),),
        vifs=(parse_vif_spec("mac=00:16:3e:00:00:01", 0)[0],),
    )


def test_unused_keys_are_warnings_with_their_line() -> None:
    text = 'name = "d1"\nbootloader = "pygrub"\npool = "p"; on_soft_reset = "destroy"\n'
    spec, warnings = parse_xl_cfg(text, "d1.cfg")
    assert spec == DomainSpec("d1")
    assert warnings == [
        "d1.cfg:2: key 'bootloader' is not used by xenolab",
        "d1.cfg:3: key 'pool' is not used by xenolab",
        "d1.cfg:3: key 'on_soft_reset' is not used by xenolab",
    ]


def test_a_repeated_key_warns_and_the_last_wins() -> None:
    spec, warnings = parse_xl_cfg('name = "d1"\nmemory = 16\nmemory = 24\n', "d1.cfg")
    assert spec.memory_mib == 24
    assert warnings == ["d1.cfg:3: key 'memory' is set again; this value wins"]


def test_booleans_are_numbers_so_a_number_is_not_a_string() -> None:
    with pytest.raises(ConfigError, match="d1.cfg:1: kernel must be a string, not 1"):
        parse_xl_cfg('kernel = 1; name = "d1"', "d1.cfg")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("memory = 32", "b.cfg: mandatory key 'name' is missing"),
        ('name = "d1"\nmemory = 2', "b.cfg:2: memory 2 is out of range 4..4096"),
        ('name = "d1"\nmemory = 8192', "b.cfg:2: memory 8192 is out of range"),
        ('name = "d1"\nmemory = "32"', "b.cfg:2: memory must be an integer"),
        ('name = "d1"\nvcpus = 0', "b.cfg:2: vcpus 0 is out of range 1..16"),
        ('name = "d1"\nvcpus = 0x11', "b.cfg:2: vcpus 17 is out of range"),
        ('name = "d1"\non_crash = "reboot"', "b.cfg:2: on_crash 'reboot' is not one of"),
        ('name = "d1"\non_poweroff = 1', "b.cfg:2: on_poweroff must be a string"),
        ('\nname = "-d1"', "b.cfg:2: name '-d1' must be 1-64 characters"),
        ("name = 'a b'", "b.cfg:1: name 'a b'"),
        ("name = '7'", "b.cfg:1: name '7' must not be a number"),
        (f"name = '{'x' * 65}'", "b.cfg:1: name 'x+' must be 1-64"),
        ('name = "d1"\ntype = "hvm"', "b.cfg:2: type 'hvm' is not supported"),
        ('name = "d1"\ntype = "pvh"', "b.cfg:2: type 'pvh' is not supported"),
        ('name = "d1"\ntype = "xen"', "b.cfg:2: type 'xen' is not one of pv, pvh, hvm"),
        ('name = "d1"\nuuid = "123"', "b.cfg:2: uuid '123' is not a valid UUID"),
        ('name = "d1"\nmemory = 64\nmaxmem = 32', "b.cfg: domain 'd1': maxmem 32 must be at least"),
        ('name = "d1"\ndisk = "/img,,xvda"', "b.cfg:2: disk must be a list of strings"),
        ('name = "d1"\ndisk = [["/img,,xvda"]]', "b.cfg:2: disk must be a list of strings"),
        ('name = "d1"\ndisk = ["/img,qcow2,xvda"]', "b.cfg:2: .*only format=raw is supported"),
        ('name = "d1"\ndisk = ["/a,,xvda", "/b,,xvda"]', "b.cfg: domain 'd1': vdev 'xvda'"),
        ('name = "d1"\nvif = ["mac=zz"]', "b.cfg:2: vif spec 'mac=zz': mac 'zz'"),
    ],
)
def test_bad_values_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_xl_cfg(text, "b.cfg")


@pytest.mark.parametrize(
    ("text", "cmdline", "warned"),
    [
        ("extra = 'quiet'", "quiet", False),
        ("root = '/dev/xvda1'", "root=/dev/xvda1", False),
        ("root = '/dev/xvda1'; extra = 'quiet'", "root=/dev/xvda1 quiet", False),
        ("cmdline = 'a b'", "a b", False),
        ("cmdline = 'a'; extra = 'quiet'", "a", True),
    ],
)
def test_cmdline_root_and_extra_combine_like_xl(text: str, cmdline: str, warned: bool) -> None:
    spec, warnings = parse_xl_cfg(f"name = 'd1'; {text}")
    assert spec.cmdline == cmdline
    assert bool(warnings) == warned


def test_build_domain_takes_settings_from_anywhere() -> None:
    settings = [Setting("name", "d1", "h.toml", 4), Setting("vcpus", 99, "h.toml", 4)]
    with pytest.raises(ConfigError, match="h.toml:4: vcpus 99"):
        build_domain(settings)
    with pytest.raises(ConfigError, match="h.toml:7: mandatory key 'name'"):
        build_domain([], "h.toml", 7)


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("\r", "\\r").replace("\t", "\\t") + '"'


def _render(spec: DomainSpec) -> str:
    """`spec` written as an xl.cfg file, exercising every syntax feature."""
    lines = [f"{key} = {_quote(getattr(spec, key))}" for key in ("name", "kernel", "cmdline")]
    lines += [f"memory = {spec.memory_mib:#x}", f"vcpus = 0{spec.vcpus:o} # octal"]
    lines += [f"{k} = '{getattr(spec, k)}'" for k in ("on_poweroff", "on_reboot", "on_crash")]
    lines.append(f"on_watchdog = '{spec.on_watchdog}'; maxmem = {spec.max_memory_mib}")
    if spec.uuid:
        lines.append(f"uuid = {_quote(spec.uuid.upper())}")
    disks = [f"access={d.access}, vdev={d.vdev}, target={d.target}" for d in spec.disks]
    vifs = [",".join(f"{k}={v}" for k, v in _vif_keys(v).items()) for v in spec.vifs]
    lines.append("disk = [" + "".join(f"{_quote(d)}, " for d in disks) + "]")
    lines.append("vif = [\n" + ",\n".join(map(_quote, vifs)) + "\n]")
    return "\n".join(lines)


def _vif_keys(vif: object) -> dict[str, object]:
    keys = ("mac", "bridge", "ip", "mtu", "rate")
    return {k: getattr(vif, k) for k in keys if getattr(vif, k) is not None}


@given(domain_specs())
def test_rendered_specs_parse_back_to_themselves(spec: DomainSpec) -> None:
    parsed, warnings = parse_xl_cfg(_render(spec))
    assert parsed == dataclasses.replace(spec, maxmem_mib=spec.max_memory_mib)
    assert warnings == []


# --- disk specs --------------------------------------------------------------

VOLUME = DiskSpec("/dev/vg/guest-volume", "hda")


@pytest.mark.parametrize(
    "spec",
    [
        "/dev/vg/guest-volume,,hda",
        "/dev/vg/guest-volume,raw,hda,rw",
        "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
        "vdev=hda, target=/dev/vg/guest-volume",
        "hda, target=/dev/vg/guest-volume",  # a positional after target=... is part of it
        "raw:/dev/vg/guest-volume,hda,w",
        "phy:/dev/vg/guest-volume,hda,w",
        "file:/dev/vg/guest-volume,hda,rw",
        "tap:aio:/dev/vg/guest-volume,hda,w",
        "  /dev/vg/guest-volume , , hda ",
        "/dev/vg/guest-volume,,hda,",
    ],
)
def test_man_page_equivalent_disk_specs(spec: str) -> None:
    if spec.startswith("hda,"):
        with pytest.raises(ConfigError):  # hda fills target, then target= repeats it
            parse_disk_spec(spec)
        return
    assert parse_disk_spec(spec) == VOLUME


def test_target_swallows_the_rest_commas_included() -> None:
    disk = parse_disk_spec("vdev=xvda, access=ro, target=/images/a,b, c=d,e")
    assert (disk.target, disk.vdev, disk.access) == ("/images/a,b, c=d,e", "xvda", "ro")


@pytest.mark.parametrize(
    ("access", "expected"), [("r", "ro"), ("ro", "ro"), ("w", "rw"), ("rw", "rw")]
)
def test_access_aliases(access: str, expected: str) -> None:
    assert parse_disk_spec(f"/img,raw,xvda,{access}").access == expected
    assert parse_disk_spec(f"access={access},vdev=xvda,target=/img").access == expected


def test_cdroms_default_to_read_only_and_may_be_empty() -> None:
    assert parse_disk_spec("/iso,,hdc:cdrom").devtype == "cdrom"
    assert parse_disk_spec("/iso,,hdc,devtype=cdrom").access == "ro"
    assert parse_disk_spec("/iso,raw,hdc,cdrom") == DiskSpec("/iso", "hdc", "raw", "ro", "cdrom")
    empty = parse_disk_spec(",hdc:cdrom,r")
    assert (empty.target, empty.vdev, empty.access, empty.devtype) == ("", "hdc", "ro", "cdrom")
    assert parse_disk_spec("/iso,,hdc:cdrom,rw").access == "rw"


def test_backend_and_ignored_disk_options() -> None:
    warnings: list[str] = []
    disk = parse_disk_spec(
        "backend=1, backendtype=phy, script=block, discard, direct-io-safe, vdev=xvda, target=/i",
        warnings,
    )
    assert (disk.backend, disk.target) == ("1", "/i")
    assert warnings == [
        "disk key 'backendtype' is not used by xenolab",
        "disk key 'script' is not used by xenolab",
        "disk flag 'discard' is not used by xenolab",
        "disk flag 'direct-io-safe' is not used by xenolab",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/img", "vdev is mandatory"),
        ("/img,,", "vdev is mandatory"),
        ("", "vdev is mandatory"),
        ("/img,,vda", "vdev 'vda' is not a disk name"),
        ("/img,qcow2,xvda", "only format=raw is supported"),
        ("format=vhd,vdev=xvda,target=/img", "only format=raw is supported"),
        ("qcow2:/img,xvda", "only format=raw is supported"),
        ("/img,iso,xvda", "format 'iso' is not one of raw, qcow, qcow2, vhd, qed"),
        ("/img,,xvda,x", "access 'x' must be ro, r, rw or w"),
        ("/img,,xvda,rw,extra", "too many positional parameters"),
        ("vdev=xvda,vdev=xvdb,target=/img", "vdev specified more than once"),
        ("colour=red,vdev=xvda,target=/img", "unknown parameter 'colour'"),
        ("devtype=floppy,vdev=xvda,target=/img", "devtype 'floppy'"),
        ("vdev=xvda,target=", "target must not be empty"),
    ],
)
def test_bad_disk_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_disk_spec(spec)
    assert str(info.value).startswith(f"disk spec {spec!r}: ")


@given(st.text(max_size=40))
def test_any_disk_spec_parses_or_raises_config_error(spec: str) -> None:
    try:
        assert parse_disk_spec(spec).devid > 0
    except ConfigError:
        pass


# --- vif specs ---------------------------------------------------------------


def test_vif_defaults_and_devid_from_index() -> None:
    vif, warnings = parse_vif_spec("", 2)
    assert (vif.devid, vif.mac, vif.bridge, vif.mtu, vif.ip) == (2, None, "xenbr0", 1500, None)
    assert warnings == []


def test_vif_keys() -> None:
    spec = "mac=00:16:3E:74:3d:76, bridge=xenbr1,ip=10.0.0.2 10.0.0.3,vifname=web0,mtu=9000"
    spec += ",rate=10Mb/s"
    vif, warnings = parse_vif_spec(spec, 0)
    assert (vif.mac, vif.bridge, vif.ip) == ("00:16:3e:74:3d:76", "xenbr1", "10.0.0.2 10.0.0.3")
    assert (vif.vifname, vif.mtu, vif.rate, vif.rate_limit) == (
        "web0",
        9000,
        "10Mb/s",
        (62500, 50000),
    )
    assert warnings == []


def test_unknown_vif_keys_are_warnings() -> None:
    vif, warnings = parse_vif_spec("bridge=xenbr0,script=vif-bridge,model=e1000,bogus", 1)
    assert vif.bridge == "xenbr0"
    assert warnings == [
        "vif 1: key 'script' is not used by xenolab",
        "vif 1: key 'model' is not used by xenolab",
        "vif 1: key 'bogus' is not used by xenolab",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mac=00:16:3e:74:3d", "mac '00:16:3e:74:3d' is not six hex pairs"),
        ("mac=00-16-3e-74-3d-76", "is not six hex pairs"),
        ("mac=01:16:3e:74:3d:76", "multicast"),
        ("mtu=big", "mtu 'big' must be a number"),
        ("mtu=70000", "mtu 70000 is out of range"),
        ("ip=10.0.0.256", "ip '10.0.0.256' is not an IP address"),
        ("rate=10Mb", "rate '10Mb' is not like"),
        ("bridge=", "bridge must not be empty"),
    ],
)
def test_bad_vif_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_vif_spec(spec, 0)
    assert str(info.value).startswith(f"vif spec {spec!r}: ")


def test_vif_macs_are_filled_in_per_domain() -> None:
    spec, _ = parse_xl_cfg("name = 'd1'; vif = ['', 'bridge=xenbr0']")
    assert [v.mac for v in spec.vifs] == [default_mac("d1", 0), default_mac("d1", 1)]
    assert [v.devid for v in spec.vifs] == [0, 1]


def test_vif_warnings_carry_the_line() -> None:
    _, warnings = parse_xl_cfg("name = 'd1'\nvif = ['type=ioemu']", "d1.cfg")
    assert warnings == ["d1.cfg:2: vif 0: key 'type' is not used by xenolab"]


@given(st.text(max_size=40))
def test_any_vif_spec_parses_or_raises_config_error(spec: str) -> None:
    try:
        parse_vif_spec(spec, 0)
    except ConfigError:
        pass
