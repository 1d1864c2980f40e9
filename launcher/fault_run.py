"""`xenolab fault run`: boot a host, run workloads, apply a timeline of faults, verify.

Rules:
1. The runner is the host's supervisor (it boots a launcher.host.Host in its
   own process) and an observer: it learns what the guests do from the
   console logs xenconsoled keeps in the run directory (every line of a
   domain, across its restarts), whose writer lines carry the guest's
   CLOCK_MONOTONIC (launcher.fault_records). It reads no guest memory.
2. Workloads start from the kernel command line (`init.run=`), so a guest
   that the toolstack restarts (on_crash = "restart"), or that boots again
   after a host crash, starts them again; a writer resumes after its file's
   last intact record.
3. Recovery is the host's business: the runner applies faults, waits and
   measures. The one thing it does itself is what the machine's owner does
   when the hypervisor is gone (`on_host_crash = "reboot"`): it cleans up,
   checks that nothing was left, and boots the host again on the same images.
4. After the run: each writer is stopped and its file read through the
   guest (/bin/reader), the host is shut down in order, then the images are
   read with debugfs and checked with e2fsck, and leftovers are looked for
   (launcher.fault_verify).
"""

import dataclasses
import itertools
import os
import select
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from launcher import fault_kill, fault_verify, rundir
from launcher.devspec import check_latency
from launcher.fault_records import LineSplitter, LoadLog, WriterLog, parse_line, parse_reader, scan
from launcher.fault_report import build_report
from launcher.fault_rogue import Rogue
from launcher.fault_scenario import DOM0, WIRE_KEYS, Fault, Scenario, actions, expand
from launcher.guestshell import GuestShell
from launcher.host import Host
from launcher.hostspec import ConfigError, HostSpec, default_host, load_host_toml
from launcher.rundir import HostError

FIRST_ACK_TIMEOUT_S = 30.0
POLL_S = 0.05
XL_TIMEOUT_S = 5.0
SHELL_TIMEOUT_S = 20.0
_runs = itertools.count()


@dataclass
class Applied:
    """A fault as it happened: when (host clock), on what, with what result."""

    fault: Fault
    affected: list[tuple[str, str]]
    t_ns: int | None = None
    clear_ns: int | None = None
    error: str = ""
    result: str = ""
    target: fault_kill.Target | None = None


@dataclass
class Crash:
    t_ns: int
    code: int | None
    leaks: list[str]
    reboot_s: float | None = None


def host_spec(sc: Scenario) -> HostSpec:
    """The scenario's host with each workload on its guest's command line (rule 2)."""
    base = default_host() if sc.host == "default" else load_host_toml(sc.host)
    names = {d.name for d in base.domains}
    for w in sc.workloads:
        if w.domain not in names:
            raise ConfigError(f"workload domain {w.domain!r} is not a DomU of the host "
                              f"({', '.join(sorted(names))})")
    doms = []
    for d in base.domains:
        runs = " ".join(w.init_run() for w in sc.workloads if w.domain == d.name)
        doms.append(dataclasses.replace(d, cmdline=f"{d.cmdline} {runs}".strip()))
    if any(d.kernel.startswith("tests.") for d in doms):
        _test_kernels_importable()
    return base.with_domains(*doms)


def _test_kernels_importable() -> None:
    """A test kernel (the malicious frontend) runs from the source checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "tests" / "kernels").is_dir():
        raise ConfigError("this scenario runs a test kernel (tests.kernels...), which needs "
                          "the source checkout of xenolab")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(root) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *paths])


def disk_devices(spec: HostSpec) -> dict[str, str]:
    """Each DomU -> the disk device serving its xvda (spec resolved by Host)."""
    by_image = {d.image: d.name for d in spec.devices}
    return {d.name: by_image[k.target] for d in spec.domains for k in d.disks
            if k.vdev == "xvda" and k.target in by_image}


class Runner:
    def __init__(self, sc: Scenario, seed: int = 1, name: str | None = None,
                 progress=None, keep: bool = False) -> None:
        self.sc, self.seed, self.keep = sc, seed, keep
        self.name = rundir.host_name(name or f"fault-{os.getpid()}-{next(_runs)}")
        self.say = progress or (lambda msg: None)
        self.spec = host_spec(sc)
        self.logs = {(w.domain, w.path): WriterLog(w.domain, w.path)
                     for w in sc.workloads if w.program == "writer"}
        self.loads = [LoadLog(w.domain, w.args[0]) for w in sc.workloads
                      if w.program == "blkload" and w.args]
        self.h: Host | None = None
        self.xen_fd: int | None = None
        self.tails: dict[str, list] = {}
        self.crashes: list[Crash] = []
        self.gone = False  # down for good (on_host_crash = "stop")
        self.rogues: dict[str, Rogue] = {}
        self.applied: list[Applied] = []
        self.shift = 0.0
        self.t0 = self.end_ns = 0
        self.shm: set[str] = set()

    # ---- the run ---------------------------------------------------------------------

    def run(self) -> dict:
        self.shm = fault_verify.shm_entries()
        guest: dict = {}
        try:
            self._boot()
            devices = disk_devices(self.h.spec)
            faults = expand(self.sc, self.seed, devices)
            self.applied = [Applied(f, self._affected(f, devices)) for f in faults]
            self.t0 = self._wait_first_acks()
            self.say(f"Writers running; {len(faults)} faults over {self.sc.duration:g} s")
            self._play()
            self._finish()
            guest = self._guest_reads()
        finally:
            self._shutdown()
        leaks = fault_verify.leaks(self.name, self.shm)
        images, fsck = self._image_checks()
        report = build_report(self, guest, images, fsck, leaks)
        if not self.keep:
            shutil.rmtree(rundir.image_dir(self.name), ignore_errors=True)
            shutil.rmtree(rundir.path(self.name), ignore_errors=True)
        return report

    def _boot(self) -> None:
        t = time.monotonic()
        self.h = Host(self.spec, self.name).start()
        self.xen_fd = os.pidfd_open(self.h.xen.pid)
        self.tails.clear()  # a new run directory: consoles start again
        self.rogues.clear()
        self.say(f"Host '{self.name}' up in {time.monotonic() - t:.2f} s")

    def _affected(self, f: Fault, devices: dict[str, str]) -> list[tuple[str, str]]:
        """The writers a fault should stall: its domain's, its disk's, or all."""
        keys = list(self.logs)
        if f.target in {w[0] for w in keys}:
            return [k for k in keys if k[0] == f.target]
        doms = {d for d, dev in devices.items() if dev == f.target}
        return [k for k in keys if k[0] in doms] or keys

    def _wait_first_acks(self) -> int:
        deadline = time.monotonic_ns() + int(FIRST_ACK_TIMEOUT_S * 1e9)
        if not self._wait(deadline, lambda: all(log.acked for log in self.logs.values())):
            raise HostError(f"the writers acknowledged no batch in {FIRST_ACK_TIMEOUT_S:.0f} s "
                            f"(see {rundir.path(self.name)}/console)")
        return time.monotonic_ns()

    def _play(self) -> None:
        by_index = {a.fault.index: a for a in self.applied}
        prev: Applied | None = None
        for act in actions([a.fault for a in self.applied]):
            a = by_index[act.fault.index]
            if act.clears and (a.t_ns is None or a.error):
                continue
            due = self.t0 + int((act.at + self.shift) * 1e9)
            if self.sc.sequential and not act.clears and prev is not None and prev.t_ns:
                start = (prev.clear_ns or prev.t_ns) + int(self.sc.recover_timeout * 1e9)
                self._wait(max(due, start), lambda p=prev: self._recovered(p))
                late = time.monotonic_ns() - due
                if late > 0:  # the rest of the timeline moves with it
                    self.shift += late / 1e9
                    due += late
            self._wait(due)
            if self.gone:
                a.error = a.error or "not applied: the host is down"
                continue
            self._apply(act.clears, a)
            if not act.clears:
                prev = a

    def _finish(self) -> None:
        if not self.gone:
            self._wait(self.t0 + int((self.sc.duration + self.shift) * 1e9))
            done = [a for a in self.applied if a.t_ns and not a.error]
            if done and not self.gone:
                last = max(a.clear_ns or a.t_ns for a in done)
                self._wait(last + int(self.sc.recover_timeout * 1e9),
                           lambda: self.gone or all(self._recovered(a) for a in done))
        self._pump()
        self.end_ns = time.monotonic_ns()

    def _recovered(self, a: Applied) -> bool:
        return all(any(t > a.t_ns for t in self.logs[k].times("ack")) for k in a.affected)

    # ---- faults ----------------------------------------------------------------------

    def _apply(self, clears: bool, a: Applied) -> None:
        f = a.fault
        what = f"end of fault {f.index}" if clears else f"fault {f.index}: {f.label()}"
        t = time.monotonic_ns()
        try:
            t = self._do(clears, a)
        except (HostError, ConfigError, OSError) as exc:
            if clears:
                a.error = f"could not end it: {exc}"
            else:
                a.error = f"not applied: {exc}"
        if clears:
            a.clear_ns = t
        else:
            a.t_ns = t
        rel = (t - self.t0) / 1e9
        self.say(f"{rel:7.2f} s  {what} on {f.target}" + (f" ({a.error})" if a.error else "")
                 + (f": {a.result}" if a.result and not clears else ""))

    def _do(self, clears: bool, a: Applied) -> int:
        """Apply (or end) the fault; the host time it took effect."""
        f = a.fault
        if f.action in ("kill", "stop", "cont"):
            if clears:
                fault_kill.check(self.name, a.target)
                t = time.monotonic_ns()
                os.kill(a.target.pid, signal.SIGCONT)
                return t
            sig = {"kill": f.detail.get("signal", "KILL"), "stop": "STOP", "cont": "CONT"}
            a.target = self._find(f.target)
            fault_kill.check(self.name, a.target)
            t = time.monotonic_ns()
            os.kill(a.target.pid, fault_kill.SIGNALS[sig[f.action]])
            return t
        t = time.monotonic_ns()
        if f.action == "disk":
            mode, rate = ("none", 0.0) if clears else (f.detail["mode"], f.detail["rate"])
            self.h.xl("phys_fault", dev=f.target, mode=mode, rate=rate, timeout_s=XL_TIMEOUT_S)
        elif f.action == "latency":
            spec = check_latency("none" if clears else f.detail["spec"])
            self.h.xl("phys_latency", dev=f.target, spec=spec, timeout_s=XL_TIMEOUT_S)
        elif f.action == "wire":
            clean = {k: (False if k == "partition" else 0.0) for k in WIRE_KEYS}
            self.h.xl("nic_wire", dev=f.target, **(clean if clears else f.detail),
                      timeout_s=XL_TIMEOUT_S)
        elif f.action == "rogue":
            rogue = self.rogues.setdefault(f.target, Rogue(self.h, f.target))
            a.result = rogue.do(f.detail["op"])
            if not self.h.alive():
                a.result += "; the host went down"
        return t

    def _find(self, target: str) -> fault_kill.Target:
        """The target's process; a DomU that is rebooting is waited for."""
        deadline = time.monotonic_ns() + int(self.sc.recover_timeout * 1e9)
        while True:
            try:
                return fault_kill.find(self.name, target)
            except HostError:
                if target in ("hypervisor", DOM0) or time.monotonic_ns() > deadline:
                    raise
            self._wait(time.monotonic_ns() + int(0.1e9))
            if self.gone:
                raise HostError("the host is down")

    # ---- watching ----------------------------------------------------------------------

    def _wait(self, deadline_ns: int, cond=None) -> bool:
        """Pump the consoles until `cond()` or the deadline; handle a host crash."""
        while True:
            self._pump()
            if cond is not None and cond():
                return True
            if not self.gone and not self.h.alive():
                self._crashed()
                continue
            left = (deadline_ns - time.monotonic_ns()) / 1e9
            if left <= 0:
                return False
            if self.gone:
                time.sleep(min(left, POLL_S))
            else:
                select.select([self.xen_fd], [], [], min(left, POLL_S))

    def _pump(self) -> None:
        folder = os.path.join(rundir.path(self.name), "console")
        for dom in {k[0] for k in self.logs} | {x.dom for x in self.loads}:
            tail = self.tails.setdefault(dom, [0, LineSplitter()])
            try:
                with open(os.path.join(folder, f"{dom}.log"), "rb") as f:
                    f.seek(tail[0])
                    data = f.read()
            except FileNotFoundError:
                continue
            tail[0] += len(data)
            for line in tail[1].feed(data):
                if any(x.feed(line) for x in self.loads if x.dom == dom):
                    continue
                ev = parse_line(dom, line)
                if ev is not None and (dom, ev.path) in self.logs:
                    self.logs[dom, ev.path].add(ev)

    def _crashed(self) -> None:
        """The hypervisor is gone: clean up, look for leftovers, maybe boot again (rule 3)."""
        t, code = time.monotonic_ns(), self.h.xen.returncode
        self._pump()
        self.h.kill()
        self._close_xen()
        crash = Crash(t, code, fault_verify.leaks(self.name, self.shm))
        self.crashes.append(crash)
        left = f"; left behind: {', '.join(crash.leaks)}" if crash.leaks else "; nothing left"
        self.say(f"{(t - self.t0) / 1e9:7.2f} s  the host went down (hypervisor exited {code})"
                 + left)
        if self.sc.on_host_crash != "reboot":
            self.gone = True
            return
        t1 = time.monotonic()
        self._boot()
        crash.reboot_s = time.monotonic() - t1

    def _close_xen(self) -> None:
        if self.xen_fd is not None:
            os.close(self.xen_fd)
            self.xen_fd = None

    # ---- verification ------------------------------------------------------------------

    def _guest_reads(self) -> dict:
        """Each writer stopped (kill PID in its shell), its file read by /bin/reader."""
        out: dict = {}
        if self.gone or not self.h.alive():
            return {k: {"error": "the host is down"} for k in self.logs}
        if not self.sc.verify_in_guest:
            return {k: {"error": "skipped (verify_in_guest = false)"} for k in self.logs}
        for dom in sorted({k[0] for k in self.logs}):
            keys = [k for k in self.logs if k[0] == dom]
            try:
                self.h.xl("console_write", dom=dom, data=b"\n", timeout_s=XL_TIMEOUT_S)
                sh = GuestShell(self.h, dom, timeout=SHELL_TIMEOUT_S)
                for k in keys:
                    starts = [e for e in self.logs[k].events if e.kind == "start"]
                    if starts:
                        sh.run(f"kill {starts[-1].pid}")
                self._pump()
                for k in keys:
                    got = parse_reader(sh.run(f"reader {k[1]}")).get(k[1])
                    out[k] = {"scan": got} if got else {"error": "no reader line"}
            except HostError as exc:
                for k in keys:
                    out.setdefault(k, {"error": str(exc)})
        return out

    def _shutdown(self) -> None:
        if self.h is None:
            return
        self._pump()
        if self.h.alive():
            self._destroy_diskless()
            self.h.down()
        else:
            self.h.kill()
        self._close_xen()

    def _destroy_diskless(self) -> None:
        """A guest whose disk device is dead cannot sync: pull its plug rather
        than wait for its shutdown to time out."""
        devices = self.h.firmware.devices if self.h.firmware is not None else []
        dead = {d.spec.name for d in devices if d.proc.poll() is not None}
        for dom, dev in disk_devices(self.h.spec).items():
            if dev in dead:
                try:
                    self.h.xl("destroy", dom=dom, timeout_s=XL_TIMEOUT_S)
                    self.say(f"{dom}'s disk device {dev} is dead: {dom} destroyed")
                except HostError:
                    pass

    def _image_checks(self) -> tuple[dict, dict]:
        images = {d.name: k.target for d in self.h.spec.domains for k in d.disks
                  if k.vdev == "xvda"} if self.h else {}
        scans, fsck = {}, {}
        for dom, path in self.logs:
            img = images.get(dom)
            if img is None or not os.path.exists(img):
                scans[dom, path] = {"error": "no image"}
                continue
            data = fault_verify.read_file(img, path)
            scans[dom, path] = ({"error": f"{path} not in {img}"} if data is None
                                else {"scan": scan(data)})
            if img not in fsck:
                fsck[img] = fault_verify.fsck(img)
        return scans, fsck
