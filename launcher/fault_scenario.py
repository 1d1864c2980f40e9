"""Fault scenarios: plain data parsed from TOML, and the timeline they expand to.

Rules:
1. A scenario is data (STYLE.md 12): which host, which workloads in which
   guests, which faults when, what is promised. Nothing here starts a
   process or reads a clock; launcher.fault_run instantiates it.
2. Random choices (a fault's time within `between`, a target from a list,
   the faults of `[random]`) are drawn from `random.Random(seed)` while the
   timeline is expanded, in file order, so the same seed gives the same run.
3. Times are seconds from t0, the moment every writer has acknowledged its
   first batch. A fault that lasts (`for`, `hold`) is two actions: the fault
   and its end (SIGCONT, fault mode "none", latency "none", a clean wire).
   A `wire` fault's target is a NIC device; it sets that NIC's link faults
   (drop, dup, reorder: 0..1; delay_ms; partition: devices.wirefaults).
4. `expect` says what the host can do today: "recovery" (I/O resumes by
   itself), "host-reboot" (the host goes down; the runner boots it again),
   "no-recovery" (the host has no recovery for it yet: the report must say
   so). Errors are ConfigErrors naming the file.
"""

import dataclasses
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from launcher.devspec import WIRE_KEYS, check_wire_settings
from launcher.hostspec import ConfigError

ACTIONS = ("kill", "stop", "cont", "disk", "latency", "rogue", "wire")
SIGNALS = ("KILL", "TERM", "STOP", "CONT")
DISK_MODES = ("eio", "hang", "none", "die")
ROGUE_OPS = ("connect", "bad-requests", "revoke-grant", "flood", "corrupt-index")
EXPECTS = ("recovery", "host-reboot", "no-recovery")
RANDOM_KINDS = ("kill-domu", "stop-domu", "stop-dom0", "stop-device", "disk-hang", "disk-eio",
                "latency", "kill-device", "kill-dom0", "kill-hypervisor")
DOM0 = "Domain-0"


@dataclass(frozen=True)
class Workload:
    domain: str
    program: str = "writer"
    path: str = "/data"
    batch: int = 8
    records: int = 0
    pause: float = 0.05
    args: tuple[str, ...] = ()  # for other programs (e.g. dd): their arguments

    def argv(self) -> list[str]:
        if self.program == "writer":
            return ["/bin/writer", self.path, str(self.batch), str(self.records), str(self.pause)]
        return [f"/bin/{self.program}", *self.args]

    def init_run(self) -> str:
        """The kernel command line word that makes init start it (at every boot)."""
        return "init.run=" + ",".join(self.argv())


@dataclass(frozen=True)
class FaultSpec:
    """A [[fault]] table; `at`/`target` may still be random (rule 2)."""

    action: str
    target: str | tuple[str, ...]
    at: float | None = None
    between: tuple[float, float] | None = None
    signal: str = "KILL"
    hold: float = 0.0  # `for` in the file
    mode: str = "hang"
    rate: float = 0.0
    spec: str = "fixed:50000"
    op: str = "flood"
    expect: str | None = None
    repeat: int = 1
    every: float = 1.0
    drop: float = 0.0  # wire: the link's faults
    dup: float = 0.0
    reorder: float = 0.0
    delay_ms: float = 0.0
    partition: bool = False




@dataclass(frozen=True)
class RandomSpec:
    count: int = 20
    start: float = 1.0
    interval: tuple[float, float] = (0.3, 1.0)
    hold: tuple[float, float] = (0.2, 0.8)
    kinds: tuple[str, ...] = RANDOM_KINDS[:7]  # the kinds that never end a run early
    targets: tuple[str, ...] = ()  # DomUs; default: every writer's domain


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    host: str = "default"  # "default", or a host TOML (absolute once loaded)
    duration: float = 5.0
    expect: str = "recovery"
    fsck: str = "clean"  # clean: e2fsck -fn must pass; report: recorded only
    on_host_crash: str = "reboot"  # reboot | stop
    verify_in_guest: bool = True
    recover_timeout: float = 10.0
    sequential: bool = False  # a fault waits until the previous one has recovered
    workloads: tuple[Workload, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    random: RandomSpec | None = None
    short: dict = field(default_factory=dict, compare=False)

    def shortened(self) -> "Scenario":
        """The version the test suite runs: the [short] table's values."""
        s = dict(self.short)
        rnd = self.random
        if rnd is not None and ("count" in s or "interval" in s):
            rnd = dataclasses.replace(rnd, count=s.pop("count", rnd.count),
                                      interval=tuple(s.pop("interval", rnd.interval)))
        return dataclasses.replace(self, random=rnd, **s)


@dataclass(frozen=True)
class Fault:
    """One fault of the expanded timeline."""

    index: int
    at: float
    action: str  # kill | stop | cont | disk | latency | rogue
    target: str
    detail: dict
    hold: float
    expect: str

    def label(self) -> str:
        d = self.detail
        text = {"kill": f"kill -{d.get('signal', 'KILL')}", "stop": "SIGSTOP",
                "cont": "SIGCONT", "disk": f"disk {d.get('mode')}"
                + (f" rate {d['rate']}" if d.get("rate") else ""),
                "latency": f"latency {d.get('spec')}", "rogue": f"rogue {d.get('op')}",
                "wire": "wire " + ", ".join(k if v is True else f"{k} {v}"
                                            for k, v in d.items() if v)}
        return text[self.action] + (f" for {self.hold:.2f} s" if self.hold else "")


@dataclass(frozen=True)
class Action:
    """What the runner does at `at`: a fault (`clears` False) or its end."""

    at: float
    fault: Fault
    clears: bool = False


# ---- parsing --------------------------------------------------------------------------

_TOP = {"scenario", "workload", "fault", "random", "short"}
_SCENARIO_KEYS = {"name", "description", "host", "duration", "expect", "fsck",
                  "on_host_crash", "verify_in_guest", "recover_timeout", "sequential"}
_WORKLOAD_KEYS = {"domain", "program", "path", "batch", "records", "pause", "args"}
_FAULT_KEYS = {"action", "target", "at", "between", "signal", "for", "mode", "rate", "spec",
               "op", "expect", "repeat", "every", *WIRE_KEYS}
_RANDOM_KEYS = {"count", "start", "interval", "hold", "kinds", "targets"}
_SHORT_KEYS = {"duration", "count", "interval", "recover_timeout"}


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read scenario: {e.strerror}", str(path)) from None
    return parse_scenario(text, str(path), path.parent)


def parse_scenario(text: str, source: str = "<scenario>", base: Path | None = None) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(e), source) from None
    try:
        return _scenario(data, base)
    except ConfigError as e:
        raise e.located(source) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad value: {e}", source) from None


def _keys(table: object, allowed: set[str], where: str) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where} "
                          f"(expected {', '.join(sorted(allowed))})")
    return table


def _one_of(what: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{what} {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _seconds(what: str, value: object) -> float:
    if type(value) not in (int, float) or value < 0:
        raise ConfigError(f"{what} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _pair(what: str, value: object) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{what} must be [LOW, HIGH]")
    lo, hi = (_seconds(what, v) for v in value)
    if hi < lo:
        raise ConfigError(f"{what}: {hi} is below {lo}")
    return lo, hi


def _scenario(data: dict, base: Path | None) -> Scenario:
    _keys(data, _TOP, "the top level")
    sc = dict(_keys(data.get("scenario", {}), _SCENARIO_KEYS, "[scenario]"))
    if "name" not in sc:
        raise ConfigError("[scenario] needs a name")
    host = sc.get("host", "default")
    if host != "default":
        sc["host"] = str((base or Path()) / host)
    for key in ("duration", "recover_timeout"):
        if key in sc:
            sc[key] = _seconds(key, sc[key])
    _one_of("expect", sc.get("expect", "recovery"), EXPECTS)
    _one_of("fsck", sc.get("fsck", "clean"), ("clean", "report"))
    _one_of("on_host_crash", sc.get("on_host_crash", "reboot"), ("reboot", "stop"))
    workloads = tuple(_workload(w) for w in _list(data, "workload"))
    if not any(w.program == "writer" for w in workloads):
        raise ConfigError("a scenario needs at least one [[workload]] with program = \"writer\"")
    faults = tuple(_fault(f, i) for i, f in enumerate(_list(data, "fault"), 1))
    rnd = _random(data["random"]) if "random" in data else None
    short = dict(_keys(data.get("short", {}), _SHORT_KEYS, "[short]"))
    return Scenario(**sc, workloads=workloads, faults=faults, random=rnd, short=short)


def _list(data: dict, key: str) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{key!r} must be an array of tables ([[{key}]])")
    return value


def _workload(t: object) -> Workload:
    t = dict(_keys(t, _WORKLOAD_KEYS, "[[workload]]"))
    if "domain" not in t:
        raise ConfigError("[[workload]] needs a domain")
    w = Workload(**{**t, "args": tuple(str(a) for a in t.get("args", ()))})
    for word in w.argv():
        if not word or any(c in word for c in ", \t\n"):
            raise ConfigError(f"workload argument {word!r}: no commas or spaces "
                              "(it travels on the kernel command line)")
    if type(w.batch) is not int or w.batch < 1 or type(w.records) is not int:
        raise ConfigError("workload batch must be an integer >= 1 and records an integer")
    _seconds("workload pause", w.pause)
    return w


def _fault(t: object, i: int) -> FaultSpec:
    t = dict(_keys(t, _FAULT_KEYS, f"[[fault]] {i}"))
    for key in ("action", "target"):
        if key not in t:
            raise ConfigError(f"[[fault]] {i} needs {key}")
    _one_of("action", t["action"], ACTIONS)
    target = t.pop("target")
    target = tuple(target) if isinstance(target, list) else str(target)
    if "at" in t and "between" in t or "at" not in t and "between" not in t:
        raise ConfigError(f"[[fault]] {i}: give either at = SECONDS or between = [LOW, HIGH]")
    if "at" in t:
        t["at"] = _seconds("at", t["at"])
    if "between" in t:
        t["between"] = _pair("between", t["between"])
    if "for" in t:
        t["hold"] = _seconds("for", t.pop("for"))
    t["signal"] = _one_of("signal", str(t.get("signal", "KILL")).upper().removeprefix("SIG"),
                          SIGNALS)
    _one_of("mode", t.get("mode", "hang"), DISK_MODES)
    _one_of("op", t.get("op", "flood"), ROGUE_OPS)
    if "expect" in t:
        _one_of("expect", t["expect"], EXPECTS)
    if type(t.get("repeat", 1)) is not int or t.get("repeat", 1) < 1:
        raise ConfigError("repeat must be an integer >= 1")
    if not 0 <= float(t.get("rate", 0)) <= 1:
        raise ConfigError("rate must be 0..1")
    _wire(t)
    return FaultSpec(target=target, **t)


def _wire(t: dict) -> None:
    check_wire_settings("[[fault]]", {k: t[k] for k in WIRE_KEYS if k in t})


def _random(t: object) -> RandomSpec:
    t = dict(_keys(t, _RANDOM_KEYS, "[random]"))
    for key in ("interval", "hold"):
        if key in t:
            t[key] = _pair(key, t[key])
    if "kinds" in t:
        t["kinds"] = tuple(_one_of("random kind", k, RANDOM_KINDS) for k in t["kinds"])
    if "targets" in t:
        t["targets"] = tuple(str(x) for x in t["targets"])
    return RandomSpec(**t)


# ---- the timeline -----------------------------------------------------------------------

def expand(sc: Scenario, seed: int, devices: dict[str, str]) -> list[Fault]:
    """The concrete faults, in time order (rule 2). `devices` maps each DomU
    to the disk device that serves its xvda."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    for spec in sc.faults:
        for n in range(spec.repeat):
            at = spec.at if spec.at is not None else rng.uniform(*spec.between)
            target = spec.target if isinstance(spec.target, str) else rng.choice(spec.target)
            faults.append(_make(spec, at + n * spec.every, _resolve(target, devices),
                                spec.expect or sc.expect))
    if sc.random is not None:
        faults += _random_faults(sc, rng, devices)
    faults.sort(key=lambda f: f.at)
    return [dataclasses.replace(f, index=i) for i, f in enumerate(faults, 1)]


def _resolve(target: str, devices: dict[str, str]) -> str:
    """`device:d1` names the disk device of d1's xvda."""
    if target.startswith("device:"):
        dom = target.split(":", 1)[1]
        if dom not in devices:
            raise ConfigError(f"target {target!r}: {dom} has no disk")
        return devices[dom]
    return target


def _make(spec: FaultSpec, at: float, target: str, expect: str) -> Fault:
    detail: dict = {}
    action = spec.action
    if action == "kill":
        detail["signal"] = spec.signal
    elif action == "disk":
        detail.update(mode=spec.mode, rate=spec.rate)
    elif action == "latency":
        detail["spec"] = spec.spec
    elif action == "rogue":
        detail["op"] = spec.op
    elif action == "wire":
        detail.update({k: getattr(spec, k) for k in WIRE_KEYS})
    return Fault(0, at, action, target, detail, spec.hold, expect)


def _random_faults(sc: Scenario, rng: random.Random, devices: dict[str, str]) -> list[Fault]:
    r = sc.random
    doms = list(r.targets) or sorted({w.domain for w in sc.workloads if w.program == "writer"})
    out, t = [], r.start
    for _ in range(r.count):
        kind = rng.choice(r.kinds)
        dom = rng.choice(doms)
        hold = round(rng.uniform(*r.hold), 3)
        spec = {
            "kill-domu": FaultSpec("kill", dom),
            "stop-domu": FaultSpec("stop", dom, hold=hold),
            "stop-dom0": FaultSpec("stop", DOM0, hold=hold),
            "stop-device": FaultSpec("stop", f"device:{dom}", hold=hold),
            "disk-hang": FaultSpec("disk", f"device:{dom}", mode="hang", hold=hold),
            "disk-eio": FaultSpec("disk", f"device:{dom}", mode="eio", rate=0.3, hold=hold),
            "latency": FaultSpec("latency", f"device:{dom}", spec="fixed:20000", hold=hold),
            "kill-device": FaultSpec("kill", f"device:{dom}"),
            "kill-dom0": FaultSpec("kill", DOM0),  # Xen allows 2 restarts in 30 s
            "kill-hypervisor": FaultSpec("kill", "hypervisor", expect="host-reboot"),
        }[kind]
        out.append(_make(spec, round(t, 3), _resolve(spec.target, devices),
                         spec.expect or sc.expect))
        t += spec.hold + rng.uniform(*r.interval)
    return out


def actions(faults: list[Fault]) -> list[Action]:
    """Each fault, and the end of each one that lasts (rule 3), in time order."""
    out = [Action(f.at, f) for f in faults]
    out += [Action(f.at + f.hold, f, clears=True) for f in faults
            if f.hold and f.action in ("stop", "disk", "latency", "wire")]
    return sorted(out, key=lambda a: (a.at, a.clears))
