"""Hardware in a host description: `[[device]]` tables (DeviceSpec).

A device exists before Xen boots (the launcher starts it first) and is
assigned to Domain-0. Kinds: "disk" (an image file behind a controller).
"""

import os
import re
from dataclasses import dataclass

from launcher.hostspec import ConfigError

KINDS = ("disk",)
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
LATENCY_RE = re.compile(r"^(none|hdd|fixed:\d+)$")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str = "disk"
    image: str = ""
    latency: str = "none"  # none | fixed:USEC | hdd
    fail_rate: float = 0.0  # EIO on this fraction of commands
    seed: int = 0

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ConfigError(f"device name {self.name!r}: lower-case letters, digits, '-', '_'")
        if self.kind not in KINDS:
            kinds = ', '.join(KINDS)
            raise ConfigError(f"device {self.name}: unknown kind {self.kind!r} ({kinds})")
        if self.kind == "disk" and not self.image:
            raise ConfigError(f"device {self.name}: a disk needs image = PATH")
        if not LATENCY_RE.match(self.latency):
            raise ConfigError(f"device {self.name}: latency must be none, hdd or fixed:USEC")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ConfigError(f"device {self.name}: fail_rate must be within 0..1")

    def argv(self) -> list[str]:
        """The device process's own options (the launcher adds the platform ones)."""
        return ["--image", os.path.abspath(self.image), "--latency", self.latency,
                "--fail-rate", str(self.fail_rate), "--seed", str(self.seed)]


def parse_devices(tables: object, source: str, base_dir: str | None) -> tuple[DeviceSpec, ...]:
    if not isinstance(tables, list):
        raise ConfigError("[[device]] must be an array of tables").located(source)
    out = []
    for t in tables:
        if not isinstance(t, dict):
            raise ConfigError("[[device]] must be a table").located(source)
        t = dict(t)
        if base_dir and t.get("image") and not os.path.isabs(t["image"]):
            t["image"] = os.path.join(base_dir, t["image"])
        try:
            out.append(DeviceSpec(**t))
        except TypeError as exc:
            raise ConfigError(f"[[device]]: {exc}").located(source) from None
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise ConfigError("duplicate device names").located(source)
    return tuple(out)
