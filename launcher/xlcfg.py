"""xl.cfg(5) files: the domain descriptions that `xl create` reads.

Rules:
1. Syntax is libxlu's: `KEY=VALUE` statements separated by newlines or ';',
   '#' comments, strings in '' or "" (with C escapes), numbers in decimal,
   octal (leading 0) or hex (0x) — booleans are numbers — and lists
   `[ ... ]`, possibly nested, spanning lines, trailing comma allowed.
2. Two steps: text -> `Setting`s (syntax only), then settings -> `DomainSpec`
   (meaning). The TOML host loader sends its [[domain]] tables through the
   second step, so both front ends accept the same keys the same way.
3. A key xenolab does not model is a warning, not an error: real xl.cfg files
   carry bootloader=, pool=, ... and should still boot. A bad value for a key
   the model uses is a `ConfigError` saying FILE:LINE: what is wrong.
4. A key set twice in one file: the last value wins (libxlu's rule), with a
   warning.
5. Disk and vif specs follow xl-disk-configuration(5) and
   xl-network-configuration(5). The model runs raw disks only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from launcher.hostspec import (
    MEMORY_RANGE_MIB,
    VCPUS_RANGE,
    ConfigError,
    DiskSpec,
    DomainSpec,
    VifSpec,
    check_action,
    check_int,
    check_name,
    check_text,
    check_uuid,
)


@dataclass(frozen=True)
class Setting:
    """One KEY=VALUE as written; `value` is a str, an int or a list of values."""

    key: str
    value: Any
    source: str = "<cfg>"
    line: int | None = None

    @property
    def where(self) -> str:
        """Where this setting was written, "FILE:LINE" or "FILE", for messages."""
        return self.source if self.line is None else f"{self.source}:{self.line}"


# --- tokens ------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "id", "num", "str", "nl", "eof", or the punctuation itself
    value: Any
    text: str
    line: int


_TOKEN_RE = re.compile(
    r"""
      (?P<skip>[ \t\r\f\v]+|\#[^\n]*)
    | (?P<nl>\n)
    | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<num>[0-9][0-9A-Za-z]*)
    | (?P<str>"(?:[^"\\\n]|\\[^\n])*"|'(?:[^'\\\n]|\\[^\n])*')
    | (?P<punct>[=;\[\],])
    """,
    re.VERBOSE,
)
_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def _tokenize(text: str, source: str) -> Iterator[_Token]:
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise ConfigError(_bad_char(text[pos]), source, line)
        if m.lastgroup != "skip":
            yield _make_token(m.lastgroup or "", m.group(), source, line)
        line += m.lastgroup == "nl"
        pos = m.end()
    yield _Token("eof", None, "", line)


def _bad_char(char: str) -> str:
    if char in "'\"":
        return "unterminated string"
    return f"unexpected character {char!r}"


def _make_token(group: str, text: str, source: str, line: int) -> _Token:
    try:
        if group == "num":
            return _Token("num", _number(text), text, line)
        if group == "str":
            return _Token("str", _ESCAPE_RE.sub(_unescape, text[1:-1]), text, line)
    except ConfigError as e:
        raise e.located(source, line) from None
    kind = text if group == "punct" else group
    return _Token(kind, text, text, line)


def _number(text: str) -> int:
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"0[0-7]*", text):
        return int(text, 8)  # a leading 0 means octal, as in C
    if re.fullmatch(r"[1-9][0-9]*", text):
        return int(text)
    raise ConfigError(f"invalid number {text!r}")


def _unescape(m: re.Match[str]) -> str:
    escape = m[1]
    if escape in _ESCAPES:
        return _ESCAPES[escape]
    if len(escape) == 3 and escape[0] == "x":
        return chr(int(escape[1:], 16))
    if escape[0] in "01234567":
        return chr(int(escape, 8))
    if escape.isalnum():
        raise ConfigError(f"invalid escape sequence '\\{escape}' in string")
    return escape  # \<punctuation> is the punctuation itself


# --- syntax ------------------------------------------------------------------


class _Parser:
    """Recursive descent over the token list; one instance per file."""

    def __init__(self, text: str, source: str):
        self._tokens = list(_tokenize(text, source))
        self._pos = 0
        self._source = source

    def settings(self) -> list[Setting]:
        found = []
        while self._peek().kind != "eof":
            if self._peek().kind in ("nl", ";"):
                self._pos += 1
            else:
                found.append(self._statement())
        return found

    def _statement(self) -> Setting:
        key = self._next()
        if key.kind != "id":
            raise self._fail(key, "expected a KEY=VALUE setting")
        if (equals := self._next()).kind != "=":
            raise self._fail(equals, f"expected '=' after {key.text!r}")
        value = self._value()
        if (end := self._peek()).kind not in ("nl", ";", "eof"):
            raise self._fail(end, "expected a newline or ';' after the value")
        return Setting(key.text, value, self._source, key.line)

    def _value(self) -> Any:
        token = self._next()
        if token.kind in ("num", "str"):
            return token.value
        if token.kind == "[":
            return self._list(token.line)
        raise self._fail(token, "expected a value (a string, a number or a list)")

    def _list(self, opened: int) -> list[Any]:
        items: list[Any] = []
        while True:
            if self._skip_newlines().kind == "]":
                self._pos += 1
                return items
            items.append(self._value())
            token = self._next_after_newlines()
            if token.kind == "]":
                return items
            if token.kind == "eof":
                raise ConfigError(
                    f"list opened on line {opened} is not closed", self._source, opened
                )
            if token.kind != ",":
                raise self._fail(token, "expected ',' or ']' in a list")

    def _skip_newlines(self) -> _Token:
        while self._peek().kind == "nl":
            self._pos += 1
        return self._peek()

    def _next_after_newlines(self) -> _Token:
        self._skip_newlines()
        return self._next()

    def _peek(self) -> _Token:
        return self._tokens[self._pos]

    def _next(self) -> _Token:
        token = self._tokens[self._pos]
        self._pos += token.kind != "eof"  # eof stays put for the error message
        return token

    def _fail(self, token: _Token, message: str) -> ConfigError:
        found = {"eof": "the end of the file", "nl": "a newline"}.get(token.kind, repr(token.text))
        return ConfigError(f"{message}, found {found}", self._source, token.line)


def parse_settings(text: str, source: str = "<cfg>") -> list[Setting]:
    """The KEY=VALUE settings of xl.cfg `text`, in file order (syntax only)."""
    return _Parser(text, source).settings()


# --- meaning -----------------------------------------------------------------


def _string_list(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings, like {key}=['...']")
    return value


def _check_type(value: Any) -> None:
    kind = check_text("type", value)
    if kind in ("pvh", "hvm"):
        raise ConfigError(f"type {kind!r} is not supported: xenolab models PV guests only")
    if kind != "pv":
        raise ConfigError(f"type {kind!r} is not one of pv, pvh, hvm")


def _ranged(what: str, bounds: tuple[int, int]) -> Callable[[Any], int]:
    return partial(check_int, what, lo=bounds[0], hi=bounds[1])


# key -> (DomainSpec field or None, check that returns the field's value)
_SIMPLE_KEYS: dict[str, tuple[str | None, Callable[[Any], Any]]] = {
    "name": ("name", check_name),
    "memory": ("memory_mib", _ranged("memory", MEMORY_RANGE_MIB)),
    "maxmem": ("maxmem_mib", _ranged("maxmem", MEMORY_RANGE_MIB)),
    "vcpus": ("vcpus", _ranged("vcpus", VCPUS_RANGE)),
    "on_poweroff": ("on_poweroff", partial(check_action, "on_poweroff")),
    "on_reboot": ("on_reboot", partial(check_action, "on_reboot")),
    "on_crash": ("on_crash", partial(check_action, "on_crash")),
    "on_watchdog": ("on_watchdog", partial(check_action, "on_watchdog")),
    "kernel": ("kernel", partial(check_text, "kernel")),
    "uuid": ("uuid", check_uuid),
    "type": (None, _check_type),
}
_CMDLINE_KEYS = ("cmdline", "root", "extra")
USED_KEYS = frozenset(_SIMPLE_KEYS) | {"disk", "vif", *_CMDLINE_KEYS}


def build_domain(
    settings: Iterable[Setting], source: str = "<cfg>", line: int | None = None
) -> tuple[DomainSpec, list[str]]:
    """The DomainSpec that `settings` describe, and warnings about unused keys.

    `source`/`line` place errors that belong to no one setting (no name).
    """
    chosen, warnings = _choose(settings)
    fields: dict[str, Any] = {}
    for setting in chosen.values():
        try:
            fields.update(_convert(setting, warnings))
        except ConfigError as e:
            raise e.located(setting.source, setting.line) from None
    fields.update(_cmdline(chosen, warnings))
    if "name" not in fields:
        raise ConfigError("mandatory key 'name' is missing", source, line)
    try:
        return DomainSpec(**fields), warnings
    except ConfigError as e:
        raise e.within(f"domain {fields['name']!r}").located(source, line) from None


def _choose(settings: Iterable[Setting]) -> tuple[dict[str, Setting], list[str]]:
    chosen: dict[str, Setting] = {}
    warnings = []
    for setting in settings:
        earlier = chosen.pop(setting.key, None)
        if earlier is not None and earlier.source == setting.source:
            warnings.append(f"{setting.where}: key {setting.key!r} is set again; this value wins")
        if setting.key in USED_KEYS:
            chosen[setting.key] = setting
        else:
            warnings.append(f"{setting.where}: key {setting.key!r} is not used by xenolab")
    return chosen, warnings


def _convert(setting: Setting, warnings: list[str]) -> dict[str, Any]:
    key, value = setting.key, setting.value
    if key in _SIMPLE_KEYS:
        field, check = _SIMPLE_KEYS[key]
        checked = check(value)
        return {} if field is None else {field: checked}
    if key == "disk":
        return {"disks": _disks(setting, warnings)}
    if key == "vif":
        return {"vifs": _vifs(setting, warnings)}
    check_text(key, value, empty_ok=True)  # root/extra/cmdline, combined later
    return {}


def _disks(setting: Setting, warnings: list[str]) -> tuple[DiskSpec, ...]:
    found: list[str] = []
    disks = tuple(parse_disk_spec(s, found) for s in _string_list("disk", setting.value))
    warnings.extend(f"{setting.where}: {w}" for w in found)
    return disks


def _vifs(setting: Setting, warnings: list[str]) -> tuple[VifSpec, ...]:
    vifs = []
    for index, spec in enumerate(_string_list("vif", setting.value)):
        vif, found = parse_vif_spec(spec, index)
        vifs.append(vif)
        warnings.extend(f"{setting.where}: {w}" for w in found)
    return tuple(vifs)


def _cmdline(chosen: dict[str, Setting], warnings: list[str]) -> dict[str, str]:
    # xl's rule: cmdline= wins over root= and extra=, which combine otherwise
    cmdline, root, extra = (chosen.get(k) for k in _CMDLINE_KEYS)
    if cmdline is not None:
        if root or extra:
            warnings.append(f"{cmdline.where}: ignoring root= and extra= in favour of cmdline=")
        return {"cmdline": cmdline.value}
    parts = ([f"root={root.value}"] if root else []) + ([extra.value] if extra else [])
    return {"cmdline": " ".join(parts)} if parts else {}


def parse_xl_cfg(text: str, source: str = "<cfg>") -> tuple[DomainSpec, list[str]]:
    """The DomU an xl.cfg file describes, and warnings (unused keys etc.).

    Raises ConfigError("FILE:LINE: reason") for bad syntax or a bad value.
    """
    return build_domain(parse_settings(text, source), source)


# --- disk specs (xl-disk-configuration(5)) -------------------------------------

_DISK_SLOTS = ("target", "format", "vdev", "access")  # the positional order
_DISK_PREFIX_RE = re.compile(r"(raw|qcow2?|vhd|tapdisk|tap2?|aio|ioemu|file|phy):")
_DISK_UNUSED_KEYS = {"backendtype", "script", "specification", "colo-host", "colo-port",
                     "colo-export", "active-disk", "hidden-disk"}  # fmt: skip
_DISK_UNUSED_FLAGS = {"direct-io-safe", "discard", "no-discard", "trusted", "untrusted"}
_ACCESS = {"ro": "ro", "r": "ro", "rw": "rw", "w": "rw"}


def parse_disk_spec(spec: str, warnings: list[str] | None = None) -> DiskSpec:
    """A `disk=` entry: positional `target,format,vdev,access` and/or key=value.

    `target=` must come last: it swallows the rest, commas included. Legacy
    prefixes (phy:, file:, raw:, ...) and `hdc:cdrom` are understood. Keys
    the model ignores are reported into `warnings` when a list is given.
    """
    parser = _DiskParser(warnings if warnings is not None else [])
    try:
        for param in _disk_params(spec):
            parser.feed(param)
        return parser.finish()
    except ConfigError as e:
        raise e.within(f"disk spec {spec!r}") from None


def _disk_params(spec: str) -> Iterator[str]:
    rest = spec.lstrip()
    while rest:
        if rest.startswith("target="):
            yield rest.rstrip()
            return
        param, _, rest = rest.partition(",")
        yield param.strip()
        rest = rest.lstrip()


class _DiskParser:
    """libxlu's disk-spec rules: a positional value fills the first unset slot."""

    def __init__(self, warnings: list[str]):
        self.slots: dict[str, str] = {}
        self.devtype: str | None = None
        self.backend = "0"
        self.had_prefix = False
        self.warnings = warnings

    def feed(self, param: str) -> None:
        param = self._strip_prefixes(param)
        if param == "cdrom":
            self.devtype = "cdrom"
        elif param in _DISK_UNUSED_FLAGS:
            self.warnings.append(f"disk flag {param!r} is not used by xenolab")
        elif "=" in param:
            self._keyword(*param.split("=", 1))
        else:
            self._positional(param)

    def _strip_prefixes(self, param: str) -> str:
        while m := _DISK_PREFIX_RE.match(param):
            self.had_prefix = True  # "phy:/dev/x,xvda,w" has no format field
            if m[1] in ("raw", "qcow", "qcow2", "vhd"):
                self._set("format", m[1])
            self.warnings.append(f"disk prefix '{m[0]}' is deprecated; use format= and target=")
            param = param[m.end() :]
        return param

    def _keyword(self, key: str, value: str) -> None:
        key, value = key.strip(), value.strip()
        if key in _DISK_SLOTS:
            self._set(key, value)
        elif key == "devtype":
            self.devtype = value
        elif key == "backend":
            self.backend = check_text("backend", value)
        elif key in _DISK_UNUSED_KEYS:
            self.warnings.append(f"disk key {key!r} is not used by xenolab")
        else:
            raise ConfigError(f"unknown parameter {key!r}")

    def _positional(self, value: str) -> None:
        free = [s for s in _DISK_SLOTS if s not in self.slots]
        if self.had_prefix and "format" in free:
            free.remove("format")
        if free[:1] == ["format"] and not self.slots["target"] and value.endswith(":cdrom"):
            self._set(free.pop(0), "")  # ",hdc:cdrom,r": an empty drive, no format
        if not free:
            raise ConfigError("too many positional parameters")
        self._set(free[0], value)

    def _set(self, slot: str, value: str) -> None:
        if slot in self.slots:
            raise ConfigError(f"{slot} specified more than once")
        if slot == "vdev" and value.endswith(":cdrom"):
            self.devtype, value = "cdrom", value.removesuffix(":cdrom")
        self.slots[slot] = value

    def finish(self) -> DiskSpec:
        if not self.slots.get("vdev"):
            raise ConfigError("vdev is mandatory (like xvda)")
        access = self.slots.get("access") or ("ro" if self.devtype == "cdrom" else "rw")
        if access not in _ACCESS:
            raise ConfigError(f"access {access!r} must be ro, r, rw or w")
        return DiskSpec(
            target=self.slots.get("target", ""),
            vdev=self.slots["vdev"],
            format=self.slots.get("format") or "raw",
            access=_ACCESS[access],
            devtype=self.devtype,
            backend=self.backend,
        )


# --- vif specs (xl-network-configuration(5)) ----------------------------------

_VIF_KEYS = ("mac", "bridge", "ip", "vifname", "mtu", "rate", "backend")


def parse_vif_spec(spec: str, index: int) -> tuple[VifSpec, list[str]]:
    """A `vif=` entry (comma-separated key=value) as the vif with devid `index`.

    Returns the spec and warnings for keys the model ignores (script=, model=...).
    """
    fields: dict[str, Any] = {"devid": index}
    warnings = []
    for param in filter(None, (p.strip() for p in spec.split(","))):
        key, equals, value = (part.strip() for part in param.partition("="))
        if equals and key in _VIF_KEYS:
            fields[key] = value  # the last one wins, as in xl
        else:
            warnings.append(f"vif {index}: key {key!r} is not used by xenolab")
    try:
        if "mtu" in fields:
            fields["mtu"] = _vif_mtu(fields["mtu"])
        return VifSpec(**fields), warnings
    except ConfigError as e:
        raise e.within(f"vif spec {spec!r}") from None


def _vif_mtu(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ConfigError(f"mtu {text!r} must be a number")
    return int(text)
