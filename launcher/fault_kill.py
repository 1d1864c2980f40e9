"""`xenolab fault kill TARGET`: signal one process of a running host, precisely.

Rules:
1. Never by name (STYLE.md 13): the PID comes from the host's own records.
   The hypervisor from the run directory's PID record (launcher.rundir);
   a domain from the toolstack's `list` (each has its `pid`), or, when
   Domain-0 does not answer (it may be the one that is stopped), from the
   domain processes' titles; a device from its title
   `xenolab[<host>]: <name> (<kind> device)` among the host's processes.
2. Before the signal, the process must still belong to that host: its
   title names the host, and its parent is who starts it (Xen for a
   domain, the supervisor for a device), both from the PID record.
"""

import os
import re
import signal
from dataclasses import dataclass

import psutil

from launcher import rundir
from launcher.client import ToolstackClient
from launcher.rundir import HostError

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP,
           "CONT": signal.SIGCONT}
LIST_TIMEOUT_S = 2.0
DOMAIN_TITLE_RE = re.compile(r"^xenolab\[(?P<host>[^\]]+)\]: (?P<name>\S+) \(domid (?P<domid>\d+),")


@dataclass(frozen=True)
class Target:
    kind: str  # hypervisor | domain | device
    name: str
    pid: int
    parent: int | None  # the pid its parent must have (rule 2)

    def describe(self) -> str:
        return {"hypervisor": "the hypervisor", "domain": f"domain {self.name}",
                "device": f"device {self.name}"}[self.kind] + f" (pid {self.pid})"


def find(host: str, target: str) -> Target:
    """The process that `target` names on running host `host` (rule 1)."""
    rec = rundir.running(host)
    if rec is None:
        raise HostError(f"no running host '{host}'")
    if target in ("hypervisor", "xen", "Xen"):
        return Target("hypervisor", "hypervisor", rec.hypervisor, None)
    dom = _domain(host, target, rec.hypervisor)
    if dom is not None:
        return dom
    dev = _device(host, target, rec.supervisor)
    if dev is not None:
        return dev
    raise HostError(f"host '{host}' has no domain or device '{target}'")


def _domain(host: str, target: str, xen_pid: int) -> Target | None:
    try:
        with ToolstackClient(host) as c:
            infos = c.call("list", timeout_s=LIST_TIMEOUT_S)
        rows = [(d["name"], d["domid"], d["pid"]) for d in infos]
    except HostError:  # Domain-0 is stopped or gone: read the titles Xen's children carry
        rows = []
        for proc in _children(xen_pid):
            m = DOMAIN_TITLE_RE.match(_title(proc))
            if m and m["host"] == host:
                rows.append((m["name"], int(m["domid"]), proc.pid))
    for name, domid, pid in rows:
        if target in (name, str(domid)):
            return Target("domain", name, pid, xen_pid)
    return None


def _device(host: str, target: str, supervisor: int) -> Target | None:
    titles = {f"xenolab[{host}]: {target} ({kind} device)" for kind in ("disk", "nic")}
    for proc in rundir.host_processes(host):
        if _title(proc) in titles:
            return Target("device", target, proc.pid, supervisor)
    return None


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.Error:
        return []


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()).strip()
    except psutil.Error:
        return ""


def check(host: str, t: Target) -> psutil.Process:
    """The process, once it is shown to be still the host's (rule 2)."""
    try:
        proc = psutil.Process(t.pid)
        ok = f"xenolab[{host}]" in _title(proc) and proc.status() != psutil.STATUS_ZOMBIE
        if ok and t.parent is not None:
            ok = proc.ppid() == t.parent
    except psutil.Error:
        ok = False
    if not ok:
        raise HostError(f"{t.describe()} is no longer a process of host '{host}'")
    return proc


def send(host: str, target: str, sig: str = "KILL") -> Target:
    """Signal `target` of `host` with SIG (KILL, TERM, STOP or CONT)."""
    signum = SIGNALS.get(sig.upper().removeprefix("SIG"))
    if signum is None:
        raise HostError(f"bad signal {sig!r} (one of {', '.join(SIGNALS)})")
    t = find(host, target)
    check(host, t)
    try:
        os.kill(t.pid, signum)
    except ProcessLookupError:
        raise HostError(f"{t.describe()} is gone") from None
    return t


def cmd_kill(args, host: str) -> int:
    sig = args.signal.upper().removeprefix("SIG")
    t = send(host, args.target, sig)
    print(f"*** Sent SIG{sig} to {t.describe()} of host '{host}'", flush=True)
    return 0
