"""One run directory per host: the PID record, logs, consoles, toolstack state.

Rules:
1. The directory is <root>/<host>, where root is $XENOLAB_RUN_ROOT or
   /tmp/xenolab-<uid>. Sockets are abstract (no files; see
   hypervisor.public.endpoints).
2. pids.json names the supervisor and the hypervisor with their start
   times, so a stale record is never mistaken for a live host and a reused
   pid is never killed (STYLE.md 13).
3. Disk images live apart, in <root>/images/<host>: the run directory is
   replaced at every boot, the images (what the guests wrote) are not.
   Hence no host may be called "images".
"""

import json
import os
import re
import shutil
from dataclasses import dataclass

import psutil

HOST_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
IMAGES = "images"


class HostError(Exception):
    """A problem with a host as a whole; the CLI prints it as one line."""


def run_root() -> str:
    return os.environ.get("XENOLAB_RUN_ROOT") or f"/tmp/xenolab-{os.getuid()}"


def host_name(name: str | None) -> str:
    name = name or os.environ.get("XENOLAB_HOST") or "default"
    if not HOST_RE.match(name) or name in (".", ".."):
        raise HostError(f"bad host name {name!r} (letters, digits, '.', '_', '-')")
    if name == IMAGES:
        raise HostError(f"host name {name!r} is reserved (<run root>/{IMAGES} holds disk images)")
    return name


def path(host: str) -> str:
    return os.path.join(run_root(), host)


def image_dir(host: str) -> str:
    """Where the host's disk images live (rule 3): relative disk targets and
    [[device]] images resolve here."""
    return os.path.join(run_root(), IMAGES, host)


@dataclass(frozen=True)
class PidRecord:
    supervisor: int
    supervisor_started: float
    hypervisor: int
    hypervisor_started: float

    def alive(self, which: str = "hypervisor") -> psutil.Process | None:
        pid, started = getattr(self, which), getattr(self, f"{which}_started")
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except psutil.Error:
            pass
        return None


def write_pids(rundir: str, record: PidRecord) -> None:
    tmp = os.path.join(rundir, "pids.json.tmp")
    with open(tmp, "w") as f:
        json.dump(record.__dict__, f)
    os.replace(tmp, os.path.join(rundir, "pids.json"))


def read_pids(rundir: str) -> PidRecord | None:
    try:
        with open(os.path.join(rundir, "pids.json")) as f:
            return PidRecord(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def running(host: str) -> PidRecord | None:
    """The host's PID record if its hypervisor is alive."""
    rec = read_pids(path(host))
    return rec if rec is not None and rec.alive() else None


def prepare(host: str) -> str:
    """A fresh run directory (a stale one of a dead host is replaced)."""
    d = path(host)
    if running(host):
        raise HostError(f"host '{host}' is already running (xenolab down --host {host})")
    if os.path.isdir(d):
        shutil.rmtree(d)
    for sub in ("logs", "console", "auto", "libxl"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    return d


def remove_pids(rundir: str) -> None:
    try:
        os.unlink(os.path.join(rundir, "pids.json"))
    except FileNotFoundError:
        pass


def host_processes(host: str) -> list[psutil.Process]:
    """Every live process titled as part of this host (for teardown and tests)."""
    tag = f"xenolab[{host}]"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or ())
            if tag in cmd and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found
