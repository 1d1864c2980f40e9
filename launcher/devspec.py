"""Hardware in a host description: `[[device]]` tables (DeviceSpec).

A device exists before Xen boots (the launcher starts it first) and is
assigned to Domain-0. Kinds: "disk" (an image file behind a controller) and
"nic" (an Ethernet controller: `wire = NAME` joins every NIC of any host on
this machine that names the same wire; `tap = IFNAME` [`tap_netns = NS`]
joins a Linux TAP interface; `bridge` is the Dom0 bridge its driver is a
port of, default "xenbr0"; `drop`, `dup`, `reorder` (0..1), `delay_ms` and
`partition` are the link's initial faults, devices.wirefaults).

Rules:
1. Images. A disk target or a [[device]] image that is a relative path
   names a file in the host's image directory (launcher.rundir.image_dir),
   wherever it is written: a TOML host description, an xl.cfg file, `xl
   create` or `xl block-attach`. An absolute path is used as it is.
   `resolve_image` applies this; paths are normalised, never followed
   through symlinks, because blkback matches a vbd's `params` to a
   device's image as strings.
2. One controller per image. Every DomU disk of a host description is
   served by a disk device: a [[device]] whose image is the disk's target,
   or else an implicit one that `with_disk_devices` adds, named
   `vbd-<domain>-<vdev>` (lower-cased, shortened and numbered to stay a
   valid, unique device name), with no latency and no faults. Disks that
   share a target share its device.
3. Everything here is data: the launcher creates missing images and starts
   the devices.
"""

import dataclasses
import itertools
import os
import re
from dataclasses import dataclass

from hypervisor.public.nicdev import NicDevError, check_wire
from launcher.hostspec import ConfigError, DomainSpec, HostSpec, check_int, check_text

WIRE_KEYS = ("drop", "dup", "reorder", "delay_ms", "partition")


def check_wire_settings(where: str, values: dict) -> None:
    """A link's faults, by the rules the NIC itself applies (nicdev "wire")."""
    try:
        check_wire(values)
    except NicDevError as exc:
        raise ConfigError(f"{where}: {exc}") from None

KINDS = ("disk", "nic")
NAME_MAX = 31
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")  # NAME_MAX characters
IMPLICIT_PREFIX = "vbd"
LATENCY_RE = re.compile(r"^(none|fixed:[0-9]+|hdd(:[0-9]+)?)$")
HDD_RPM = (1000, 20000)
ON_CRASH = ("wait", "fail")
WIRE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
TAP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str = "disk"
    image: str = ""
    latency: str = "none"  # none | fixed:USEC | hdd | hdd:RPM (devices.latency)
    fail_rate: float = 0.0  # EIO on this fraction of commands
    seed: int = 0
    on_crash: str = "wait"  # Dom0's driver, when the device dies: "wait" or "fail" its commands
    # kind "nic" only:
    wire: str = ""
    tap: str = ""
    tap_netns: str = ""
    bridge: str = "xenbr0"
    mac: str = ""
    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay_ms: float = 0.0
    partition: bool = False

    def __post_init__(self) -> None:
        check_text("device name", self.name)
        for key in ("kind", "image", "latency"):
            check_text(f"device {self.name}: {key}", getattr(self, key), empty_ok=True)
        if type(self.fail_rate) not in (int, float):
            raise ConfigError(f"device {self.name}: fail_rate must be a number")
        check_int(f"device {self.name}: seed", self.seed, 0, 2**63 - 1)
        if not NAME_RE.match(self.name):
            raise ConfigError(f"device name {self.name!r}: lower-case letters, digits, '-', '_'")
        if self.kind not in KINDS:
            kinds = ', '.join(KINDS)
            raise ConfigError(f"device {self.name}: unknown kind {self.kind!r} ({kinds})")
        if self.kind == "disk" and not self.image:
            raise ConfigError(f"device {self.name}: a disk needs image = PATH")
        check_latency(self.latency, f"device {self.name}: ")
        if self.on_crash not in ON_CRASH:
            raise ConfigError(f"device {self.name}: on_crash must be one of "
                              f"{', '.join(ON_CRASH)}, not {self.on_crash!r}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ConfigError(f"device {self.name}: fail_rate must be within 0..1")
        self._check_nic()

    def _check_nic(self) -> None:
        where = f"device {self.name}"
        for key in ("wire", "tap", "tap_netns", "bridge", "mac"):
            check_text(f"{where}: {key}", getattr(self, key), empty_ok=True)
        check_wire_settings(where, {k: getattr(self, k) for k in WIRE_KEYS})
        if self.kind != "nic":
            if self.wire or self.tap or self.tap_netns or self.mac:
                raise ConfigError(f"{where}: wire, tap, tap_netns and mac are for a nic")
            return
        if self.image:
            raise ConfigError(f"{where}: a nic has no image")
        if self.wire and not WIRE_RE.match(self.wire):
            raise ConfigError(f"{where}: wire {self.wire!r}: letters, digits, '.', '_', '-'")
        if self.tap and not TAP_RE.match(self.tap) or self.tap_netns and not self.tap:
            raise ConfigError(f"{where}: tap must be an interface name (up to 15 characters)"
                              " and tap_netns needs a tap")
        if self.mac and not MAC_RE.match(self.mac):
            raise ConfigError(f"{where}: mac must be like 00:16:3e:00:00:01")

    def argv(self) -> list[str]:
        """The device process's own options (the launcher adds the platform ones)."""
        if self.kind == "nic":
            argv = ["--seed", str(self.seed), "--drop", str(self.drop), "--dup", str(self.dup),
                    "--reorder", str(self.reorder), "--delay-ms", str(self.delay_ms)]
            for key in ("wire", "tap", "tap_netns", "mac"):
                if getattr(self, key):
                    argv += [f"--{key.replace('_', '-')}", getattr(self, key)]
            return argv + (["--partition"] if self.partition else [])
        return ["--image", os.path.abspath(self.image), "--latency", self.latency,
                "--fail-rate", str(self.fail_rate), "--seed", str(self.seed)]


def check_latency(spec: str, where: str = "") -> str:
    """A disk latency model as devices.latency reads it, else ConfigError."""
    m = LATENCY_RE.match(spec)
    if not m or m[2] and not HDD_RPM[0] <= int(m[2][1:]) <= HDD_RPM[1]:
        raise ConfigError(f"{where}latency must be none, fixed:USEC, hdd or "
                          f"hdd:RPM ({HDD_RPM[0]}..{HDD_RPM[1]}), not {spec!r}")
    return spec


def parse_devices(tables: object, source: str) -> tuple[DeviceSpec, ...]:
    """DeviceSpecs from `[[device]]` tables; relative images stay relative (rule 1)."""
    if not isinstance(tables, list):
        raise ConfigError("[[device]] must be an array of tables").located(source)
    out = []
    for t in tables:
        if not isinstance(t, dict):
            raise ConfigError("[[device]] must be a table").located(source)
        keys = [f.name for f in dataclasses.fields(DeviceSpec)]
        for key in t:
            if key not in keys:
                raise ConfigError(f"unknown key {key!r} in [[device]] "
                                  f"(expected {', '.join(keys)})").located(source)
        try:
            out.append(DeviceSpec(**t))
        except ConfigError as exc:
            raise exc.located(source) from None
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise ConfigError("duplicate device names").located(source)
    return tuple(out)


# --- images and the implicit per-disk devices --------------------------------


def resolve_image(path: str, image_dir: str) -> str:
    """The absolute path of a disk target or device image (rule 1); "" stays ""."""
    if not path:
        return path  # an empty cdrom drive
    return os.path.normpath(os.path.join(image_dir, path))  # join keeps an absolute path


def resolve_disks(dom: DomainSpec, image_dir: str) -> DomainSpec:
    """`dom` with every disk target resolved against `image_dir`."""
    disks = tuple(dataclasses.replace(d, target=resolve_image(d.target, image_dir))
                  for d in dom.disks)
    return dom if disks == dom.disks else dataclasses.replace(dom, disks=disks)


def with_disk_devices(spec: HostSpec, image_dir: str) -> HostSpec:
    """`spec` with images resolved (rule 1) and a device for every DomU disk (rule 2).

    The result's `devices` are the [[device]]s first, in order, then the
    implicit ones in the order of the domains and their disks.
    """
    devices = [dataclasses.replace(d, image=resolve_image(d.image, image_dir))
               for d in spec.devices]
    served = {d.image for d in devices if d.kind == "disk"}
    taken = {d.name for d in devices}
    domains = []
    for dom in spec.domains:
        dom = resolve_disks(dom, image_dir)
        for disk in dom.disks:
            if disk.target and disk.target not in served:
                name = implicit_name(dom.name, disk.vdev, taken)
                devices.append(DeviceSpec(name=name, kind="disk", image=disk.target))
                served.add(disk.target)
                taken.add(name)
        domains.append(dom)
    return dataclasses.replace(spec, domains=tuple(domains), devices=tuple(devices))


def implicit_name(domain: str, vdev: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """`vbd-<domain>-<vdev>` as a valid device name not in `taken` (rule 2)."""
    slug = re.sub(r"[^a-z0-9_-]", "_", domain.lower())
    for n in itertools.count(1):
        suffix = f"-{vdev}" + (f"-{n}" if n > 1 else "")
        room = NAME_MAX - len(IMPLICIT_PREFIX) - 1 - len(suffix)
        name = f"{IMPLICIT_PREFIX}-{slug[:room]}{suffix}"
        if name not in taken:
            return name
    raise AssertionError("unreachable")
