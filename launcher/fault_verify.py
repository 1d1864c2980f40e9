"""After a fault experiment: what is on the disk images, and what was left behind.

Rules:
1. Images are read only once the host is down (no device has them open):
   `debugfs -R 'cat PATH' IMAGE` for a file's bytes, `e2fsck -fn IMAGE` for
   the filesystem (read-only: -n answers no to every repair).
2. Nothing of a host may survive it (DESIGN.md §1): no process titled
   `xenolab[<host>]`, no socket file in its run directory, no PID record,
   nothing new in /dev/shm. `leaks` lists each one found, as text.
"""

import os
import pathlib
import subprocess

import psutil

from launcher import rundir


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def leaks(host: str, shm_before: set[str]) -> list[str]:
    found = [f"process {p.pid} ({' '.join(p.cmdline()).strip()[:60]})"
             for p in _quiet_procs(host)]
    d = pathlib.Path(rundir.path(host))
    if d.exists():
        found += [f"socket file {p}" for p in d.rglob("*") if p.is_socket()]
        if (d / "pids.json").exists():
            found.append(f"PID record {d / 'pids.json'}")
    found += [f"/dev/shm/{name}" for name in sorted(shm_entries() - shm_before)]
    return found


def _quiet_procs(host: str) -> list:
    out = []
    for p in rundir.host_processes(host):
        if p.pid == os.getpid():
            continue
        try:
            p.cmdline()
            out.append(p)
        except psutil.Error:  # gone while we looked: not a leak
            continue
    return out


def read_file(image: str, path: str) -> bytes | None:
    """The bytes of `path` inside the ext2 `image`; None if it is not there."""
    res = subprocess.run(["debugfs", "-R", f"cat {path}", image], capture_output=True,
                         timeout=60)
    if res.returncode != 0 or b"File not found" in res.stderr:
        return None
    return res.stdout


def fsck(image: str) -> dict:
    """e2fsck -fn: {"clean": bool, "code": exit status, "summary": last lines}."""
    res = subprocess.run(["e2fsck", "-fn", image], capture_output=True, text=True, timeout=60)
    lines = [x for x in (res.stdout + res.stderr).splitlines() if x.strip()]
    return {"clean": res.returncode == 0, "code": res.returncode,
            "summary": lines[-1] if res.returncode == 0 else "; ".join(lines[-4:])}
