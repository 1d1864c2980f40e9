"""Host descriptions: plain, frozen data that the launcher instantiates.

Rules:
1. A description is data only. Nothing here starts a process, opens a socket
   or reads a clock; the launcher turns a `HostSpec` into processes
   (Mininet's Topo vs Mininet split).
2. Every spec validates itself when constructed, so a spec built in Python,
   parsed from xl.cfg or TOML, or received over the wire obeys the same
   limits. Failures are `ConfigError`s; the parsers add FILE:LINE.
3. Units and names follow xl: memory in MiB, xl.cfg key names in messages,
   devids as Xen numbers them (xvda = 51712; a vif's devid is its index).
4. Specs cross process boundaries as `to_wire()` dicts of builtins
   (msgpack-able, no pickle) and come back through `from_wire()`.
5. A vif without a MAC gets a deterministic one in Xen's 00:16:3e range,
   derived from the domain name and devid, so runs are reproducible where xl
   would pick a random one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import os
import re
import tomllib
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hypervisor.public import blkif

MEMORY_RANGE_MIB = (4, 4096)
VCPUS_RANGE = (1, 16)
ACTIONS = (
    "destroy", "restart", "rename-restart", "preserve",
    "coredump-destroy", "coredump-restart", "soft-reset",
)  # fmt: skip
DISK_FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed")
DOM0_NAME = "Domain-0"
DEFAULT_HOST_RESOURCE = "default_host.toml"

_NAME_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}")
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # Linux IFNAMSIZ is 16 with the NUL
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_RATE_RE = re.compile(r"([0-9]+)([KMG]?)([Bb])/s(?:@([0-9]+)(us|ms|s))?")
_RATE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}
_INTERVAL_US = {"us": 1, "ms": 1000, "s": 1_000_000}


class ConfigError(Exception):
    """A host or domain description breaks a rule.

    `str()` is one line: "FILE:LINE: reason", "FILE: reason" or "reason".
    """

    def __init__(self, reason: str, source: str | None = None, line: int | None = None):
        super().__init__(reason, source, line)
        self.reason, self.source, self.line = reason, source, line

    def __str__(self) -> str:
        if self.source is None:
            return self.reason
        if self.line is None:
            return f"{self.source}: {self.reason}"
        return f"{self.source}:{self.line}: {self.reason}"

    def located(self, source: str, line: int | None = None) -> ConfigError:
        """This error placed in `source` (at `line`), unless it already has a place."""
        if self.source is not None:
            return self
        return ConfigError(self.reason, source, line)

    def within(self, context: str) -> ConfigError:
        """This error with `context` (what was being parsed) before the reason."""
        return ConfigError(f"{context}: {self.reason}", self.source, self.line)


# --- field checks, shared by the specs and the parsers ----------------------


def check_int(what: str, value: object, lo: int, hi: int) -> int:
    """`value` if it is an int (not a bool) in lo..hi, else ConfigError."""
    if type(value) is not int:
        raise ConfigError(f"{what} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{what} {value} is out of range {lo}..{hi}")
    return value


def check_text(what: str, value: object, *, empty_ok: bool = False) -> str:
    """`value` if it is a string (non-empty unless `empty_ok`)."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, not {value!r}")
    if not value and not empty_ok:
        raise ConfigError(f"{what} must not be empty")
    return value


def check_name(value: object, what: str = "name") -> str:
    """A domain name as xl accepts it: [A-Za-z0-9_.-], no leading '-', <= 64."""
    name = check_text(what, value)
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} must be 1-64 characters from [A-Za-z0-9_.-], not starting with '-'"
        )
    if name.isdigit():  # xl commands take a domid or a name; a number would be ambiguous
        raise ConfigError(f"{what} {name!r} must not be a number (it reads as a domid)")
    return name


def check_action(what: str, value: object) -> str:
    """One of xl's on_poweroff/on_reboot/on_crash/on_watchdog actions."""
    action = check_text(what, value)
    if action not in ACTIONS:
        raise ConfigError(f"{what} {action!r} is not one of {', '.join(ACTIONS)}")
    return action


def check_uuid(value: object) -> str:
    """A UUID in canonical (lower-case, hyphenated) form."""
    text = check_text("uuid", value)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ConfigError(f"uuid {text!r} is not a valid UUID") from None


def check_mac(value: object) -> str:
    """A unicast MAC address, lower-cased."""
    mac = check_text("mac", value).lower()
    if not _MAC_RE.fullmatch(mac):
        raise ConfigError(f"mac {value!r} is not six hex pairs like 00:16:3e:74:3d:76")
    if int(mac[:2], 16) & 1:
        raise ConfigError(f"mac {value!r} is a multicast address")
    return mac


def default_mac(domain: str, devid: int) -> str:
    """The MAC a vif gets when its spec names none: stable per (domain, devid)."""
    tail = hashlib.sha256(f"{domain}/{devid}".encode()).digest()[:3]
    return "00:16:3e:" + ":".join(f"{b:02x}" for b in tail)


def parse_rate(rate: str) -> tuple[int, int]:
    """An xl vif `rate` ("10Mb/s", "1MB/s@20ms") as (bytes per interval, interval µs).

    Like libxl, the interval defaults to 50 ms and K/M/G are powers of 1000.
    """
    m = _RATE_RE.fullmatch(rate)
    if m is None:
        raise ConfigError(f"rate {rate!r} is not like 10Mb/s or 1MB/s@20ms")
    bits_or_bytes = 8 if m[3] == "b" else 1
    bytes_per_s = int(m[1]) * _RATE_UNITS[m[2]] // bits_or_bytes
    interval_us = int(m[4]) * _INTERVAL_US[m[5]] if m[4] else 50_000
    per_interval = bytes_per_s * interval_us // 1_000_000
    if per_interval == 0:
        raise ConfigError(f"rate {rate!r} allows less than a byte per interval")
    return per_interval, interval_us


def vdev_devid(vdev: str) -> int:
    """The Xen virtual-device number of `vdev` (xen-vbd-interface(7))."""
    try:
        return blkif.vdev_devid(vdev)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _from_fields(cls: type, data: object, what: str) -> Any:
    """Build dataclass `cls` from a wire dict, refusing unknown fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} on the wire must be a dict, not {type(data).__name__}")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"{what} on the wire has unknown fields {sorted(unknown)}")
    return cls(**data)


# --- devices -----------------------------------------------------------------


@dataclass(frozen=True)
class DiskSpec:
    """One `disk=` entry (xl-disk-configuration(5)); backed by Dom0 by default."""

    target: str
    vdev: str
    format: str = "raw"
    access: str = "rw"
    devtype: str | None = None
    backend: str = "0"

    def __post_init__(self) -> None:
        check_text("target", self.target, empty_ok=self.devtype == "cdrom")
        vdev_devid(self.vdev)
        if self.format not in DISK_FORMATS:
            raise ConfigError(f"format {self.format!r} is not one of {', '.join(DISK_FORMATS)}")
        if self.format != "raw":
            raise ConfigError(f"only format=raw is supported, not {self.format!r}")
        if self.access not in ("ro", "rw"):
            raise ConfigError(f"access {self.access!r} must be 'ro' or 'rw'")
        if self.devtype not in (None, "cdrom"):
            raise ConfigError(f"devtype {self.devtype!r} must be 'cdrom' or unset")
        check_text("backend", self.backend)

    @property
    def devid(self) -> int:
        """Xen's number for this disk: the <devid> in .../device/vbd/<devid>."""
        return vdev_devid(self.vdev)


@dataclass(frozen=True)
class VifSpec:
    """One `vif=` entry (xl-network-configuration(5)); `devid` is its list index.

    `mac=None` means "not chosen yet": a `DomainSpec` fills in `default_mac`.
    `rate` is kept as written; `rate_limit` gives the numbers netback needs.
    """

    devid: int
    mac: str | None = None
    bridge: str = "xenbr0"
    ip: str | None = None
    vifname: str | None = None
    mtu: int = 1500
    rate: str | None = None
    backend: str = "0"

    def __post_init__(self) -> None:
        check_int("vif devid", self.devid, 0, 255)
        if self.mac is not None:
            object.__setattr__(self, "mac", check_mac(self.mac))
        _check_ifname("bridge", self.bridge)
        if self.vifname is not None:
            _check_ifname("vifname", self.vifname)
        if self.ip is not None:
            _check_ips(self.ip)
        check_int("mtu", self.mtu, 68, 65535)
        if self.rate is not None:
            parse_rate(check_text("rate", self.rate))
        check_text("backend", self.backend)

    @property
    def rate_limit(self) -> tuple[int, int] | None:
        """(bytes per interval, interval µs), or None when unlimited."""
        return None if self.rate is None else parse_rate(self.rate)

    def ifname(self, domid: int) -> str:
        """The backend interface name in Dom0: `vifname` or vif<domid>.<devid>."""
        return self.vifname or f"vif{domid}.{self.devid}"


def _check_ifname(what: str, value: object) -> None:
    if not _IFNAME_RE.fullmatch(check_text(what, value)):
        raise ConfigError(f"{what} {value!r} is not a network interface name")


def _check_ips(value: object) -> None:
    # xl allows several addresses separated by spaces
    for address in check_text("ip", value).split():
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"ip {address!r} is not an IP address") from None


# --- domains -----------------------------------------------------------------


@dataclass(frozen=True)
class DomainSpec:
    """One DomU, as an xl.cfg file describes it (xl.cfg(5) names in messages)."""

    name: str
    memory_mib: int = 32
    maxmem_mib: int | None = None
    vcpus: int = 1
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    kernel: str = "xenolinux"
    cmdline: str = ""
    disks: tuple[DiskSpec, ...] = ()
    vifs: tuple[VifSpec, ...] = ()
    uuid: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        self._check_memory()
        check_int("vcpus", self.vcpus, *VCPUS_RANGE)
        for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog"):
            check_action(key, getattr(self, key))
        check_text("kernel", self.kernel)
        check_text("cmdline", self.cmdline, empty_ok=True)
        if self.uuid is not None:
            object.__setattr__(self, "uuid", check_uuid(self.uuid))
        self._normalise_devices()

    def _check_memory(self) -> None:
        check_int("memory", self.memory_mib, *MEMORY_RANGE_MIB)
        if self.maxmem_mib is not None:
            check_int("maxmem", self.maxmem_mib, *MEMORY_RANGE_MIB)
            if self.maxmem_mib < self.memory_mib:
                raise ConfigError(
                    f"maxmem {self.maxmem_mib} must be at least memory {self.memory_mib}"
                )

    def _normalise_devices(self) -> None:
        # frozen: tuples in, and MACs chosen now, so equal specs stay equal
        disks, vifs = tuple(self.disks), tuple(self.vifs)
        _check_unique("vdev", [d.vdev for d in disks])
        _check_unique("disk devid", [d.devid for d in disks])
        _check_unique("vif devid", [v.devid for v in vifs])
        vifs = tuple(
            v if v.mac else dataclasses.replace(v, mac=default_mac(self.name, v.devid))
            for v in vifs
        )
        _check_unique("mac", [v.mac for v in vifs])
        object.__setattr__(self, "disks", disks)
        object.__setattr__(self, "vifs", vifs)

    @property
    def max_memory_mib(self) -> int:
        """The balloon ceiling: maxmem, or memory when maxmem is unset."""
        return self.maxmem_mib if self.maxmem_mib is not None else self.memory_mib

    def to_wire(self) -> dict[str, Any]:
        """This spec as a dict of builtins (lists, not tuples), msgpack-able."""
        wire = dataclasses.asdict(self)
        wire["disks"], wire["vifs"] = list(wire["disks"]), list(wire["vifs"])
        return wire

    @classmethod
    def from_wire(cls, data: object) -> DomainSpec:
        """The spec `to_wire()` produced; validated again like any spec."""
        if not isinstance(data, dict):
            raise ConfigError(f"domain on the wire must be a dict, not {type(data).__name__}")
        fields = dict(data)
        fields["disks"] = tuple(_from_fields(DiskSpec, d, "disk") for d in data.get("disks", ()))
        fields["vifs"] = tuple(_from_fields(VifSpec, v, "vif") for v in data.get("vifs", ()))
        return _from_fields(cls, fields, "domain")


def _check_unique(what: str, values: list[Any]) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{what} {value!r} is used twice")
        seen.add(value)


# --- hosts -------------------------------------------------------------------


@dataclass(frozen=True)
class HostSpec:
    """A whole machine: its CPUs and RAM, Domain-0's share, and the DomUs.

    `warnings` holds what the loader noticed but did not refuse (unused keys);
    it is not part of the description, so it takes no part in equality.
    """

    name: str = "default"
    cpus: int = 2
    memory_mib: int = 2048
    dom0_memory_mib: int = 64
    dom0_vcpus: int = 1
    domains: tuple[DomainSpec, ...] = ()
    devices: tuple[Any, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        check_name(self.name, "host name")
        check_int("host cpus", self.cpus, 1, 64)
        check_int("host memory", self.memory_mib, 16, 65536)
        check_int("dom0 memory", self.dom0_memory_mib, *MEMORY_RANGE_MIB)
        check_int("dom0 vcpus", self.dom0_vcpus, *VCPUS_RANGE)
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        self._check_domains()

    def _check_domains(self) -> None:
        names = [d.name for d in self.domains]
        if DOM0_NAME in names:
            raise ConfigError(f"domain name {DOM0_NAME!r} is reserved for the control domain")
        _check_unique("domain name", names)
        _check_unique("mac", [v.mac for d in self.domains for v in d.vifs])
        used = self.dom0_memory_mib + sum(d.memory_mib for d in self.domains)
        if used > self.memory_mib:
            raise ConfigError(
                f"Domain-0 ({self.dom0_memory_mib} MiB) and the domains need {used} MiB, "
                f"more than the host's {self.memory_mib} MiB"
            )

    @property
    def domain_names(self) -> tuple[str, ...]:
        """The DomU names, in boot order."""
        return tuple(d.name for d in self.domains)

    def domain(self, name: str) -> DomainSpec:
        """The DomU called `name`; KeyError if there is none."""
        for spec in self.domains:
            if spec.name == name:
                return spec
        raise KeyError(f"no domain {name!r} in host {self.name!r}")

    def with_domains(self, *domains: DomainSpec) -> HostSpec:
        """A copy of this host running exactly `domains` (validated again)."""
        return dataclasses.replace(self, domains=domains)


# --- TOML host files ---------------------------------------------------------

_HOST_KEYS = {"name": "name", "memory": "memory_mib", "cpus": "cpus"}
_DOM0_KEYS = {"memory": "dom0_memory_mib", "vcpus": "dom0_vcpus"}
_TOML_ERROR_RE = re.compile(r"(.*) \(at line (\d+), column (\d+)\)")


def load_host_toml(path_or_text: str | os.PathLike[str]) -> HostSpec:
    """A host from a TOML file, or from TOML text (a str with a newline in it).

    `config = "d2.cfg"` in a [[domain]] is read relative to the file's folder
    (relative to the working directory when given text). Relative disk
    targets and [[device]] images are not: they name files in the host's
    image directory (launcher.devspec, rule 1).
    """
    if isinstance(path_or_text, str) and "\n" in path_or_text:
        return parse_host_toml(path_or_text)
    path = Path(path_or_text)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read host description: {e.strerror}", str(path)) from None
    return parse_host_toml(text, str(path), path.parent)


def parse_host_toml(text: str, source: str = "<toml>", base_dir: Path | None = None) -> HostSpec:
    """A host from TOML `text`; `source` names it in errors and warnings."""
    data = _toml_loads(text, source)
    _check_keys(data, ("host", "dom0", "domain", "device"), source, "top level")
    fields = _table_fields(data, "host", _HOST_KEYS, source)
    fields.update(_table_fields(data, "dom0", _DOM0_KEYS, source))
    domains, warnings = _load_domains(data.get("domain", []), text, source, base_dir)
    from launcher.devspec import parse_devices  # devspec imports this module
    devices = parse_devices(data.get("device", []), source)
    try:
        return HostSpec(**fields, domains=tuple(domains), devices=devices,
                        warnings=tuple(warnings))
    except ConfigError as e:
        raise e.located(source) from None


@functools.cache
def default_host() -> HostSpec:
    """The host `xenolab` boots without a configuration (launcher/default_host.toml)."""
    resource = resources.files("launcher").joinpath(DEFAULT_HOST_RESOURCE)
    return parse_host_toml(resource.read_text(encoding="utf-8"), DEFAULT_HOST_RESOURCE)


def _toml_loads(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_ERROR_RE.fullmatch(str(e))
        if m is None:
            raise ConfigError(str(e), source) from None
        raise ConfigError(f"{m[1]} (column {m[3]})", source, int(m[2])) from None


def _check_keys(table: dict[str, Any], allowed: Collection[str], source: str, where: str) -> None:
    for key in table:
        if key not in allowed:
            expected = ", ".join(allowed)
            raise ConfigError(f"unknown key {key!r} in {where} (expected {expected})", source)


def _table_fields(
    data: dict[str, Any], name: str, keys: dict[str, str], source: str
) -> dict[str, Any]:
    # [host] and [dom0] describe the machine: a typo there is an error
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{name!r} must be a table ([{name}])", source)
    _check_keys(table, keys, source, f"[{name}]")
    return {keys[key]: value for key, value in table.items()}


def _load_domains(
    entries: object, text: str, source: str, base_dir: Path | None
) -> tuple[list[DomainSpec], list[str]]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("'domain' must be an array of tables ([[domain]])", source)
    lines = [n for n, row in enumerate(text.splitlines(), 1) if _is_domain_header(row)]
    domains, warnings = [], []
    for index, table in enumerate(entries):
        line = lines[index] if len(lines) == len(entries) else None
        spec, found = _load_domain(table, source, line, base_dir)
        domains.append(spec)
        warnings.extend(found)
    return domains, warnings


def _is_domain_header(row: str) -> bool:
    return re.match(r"\s*\[\[\s*domain\s*\]\]", row) is not None


def _load_domain(
    table: dict[str, Any], source: str, line: int | None, base_dir: Path | None
) -> tuple[DomainSpec, list[str]]:
    # xlcfg imports this module (ConfigError, the specs), hence the late import
    from launcher import xlcfg

    settings: list[xlcfg.Setting] = []
    if "config" in table:
        settings += _config_settings(table["config"], source, line, base_dir)
    # keys written in the TOML table override the xl.cfg file's
    settings += [xlcfg.Setting(k, v, source, line) for k, v in table.items() if k != "config"]
    return xlcfg.build_domain(settings, source, line)


def _config_settings(
    config: object, source: str, line: int | None, base_dir: Path | None
) -> list[Any]:
    from launcher import xlcfg

    if not isinstance(config, str) or not config:
        raise ConfigError(f"config must be a path to an xl.cfg file, not {config!r}", source, line)
    path = (base_dir or Path()) / config
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {config!r}: {e.strerror}", source, line) from None
    return xlcfg.parse_settings(text, str(path))
