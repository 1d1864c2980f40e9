"""`xenolab demo`: the embedded default host explains itself, from real traces.

Rules:
1. The demo boots its own host (named "demo", tracing on), drives d1's
   shell through the console like a user at `xl console`, and reads back
   the trace records every process wrote. Nothing it prints is scripted:
   each numbered step is a record some process stamped while it worked.
2. Sections: 1 launching foo; 2 foo's fopen and fwrite (where foo blocks,
   where it resumes); 3 process protection; 4 foo over the network (a TCP
   message to an echo server in d2 and its reply: netfront, grants, event
   channels, netback, the bridge; where foo and echod block and resume);
   5 why virtualize. Sections 1 and 2 share one run of foo.
3. It ends with the paths of the trace files: Chrome trace-event JSON for
   Perfetto or chrome://tracing, and the raw per-process records.
"""

import os
import re
import shutil
import time

from hypervisor.public import trace as T
from launcher import rundir, trace
from launcher.devspec import resolve_disks
from launcher.guestshell import GuestShell
from launcher.host import Host
from launcher.hostspec import default_host
from launcher.rundir import HostError

HOST = "demo"
SECTIONS = {1: "A user launches foo in d1", 2: "foo: fopen(\"bar\"), then fwrite",
            3: "Process protection", 4: "foo over the network: d1 -> d2 and back",
            5: "Why virtualize"}
NOISE = {T.CONSOLE_WRITE}
PROMPT = re.compile(r"/\S* # ")  # console chatter: every prompt and echo would show


def run(sections: list[int], out_json: str, say=print) -> int:
    # fresh images: /bin holds this version's programs, and every run starts alike
    shutil.rmtree(rundir.image_dir(rundir.host_name(HOST)), ignore_errors=True)
    h = Host(default_host(), name=HOST, progress=lambda m: say(f"*** {m}"), trace=True)
    h.start()
    try:
        demo = Demo(h, say)
        for n in sections:
            say(f"\n=== {n}. {SECTIONS[n]} ===")
            getattr(demo, f"section_{n}")()
    finally:
        say("\n*** Shutting the demo host down")
        h.down()
    events = trace.load(h.trace_dir)
    trace.write_chrome(events, out_json)
    say(f"\nTrace files:\n  {os.path.abspath(out_json)}   (Chrome trace-event JSON: "
        f"open in https://ui.perfetto.dev or chrome://tracing)\n  {h.trace_dir}/   (the raw "
        f"records, one file per process; `xenolab trace --host {HOST}` converts them)")
    return 0


class Demo:
    def __init__(self, h: Host, say) -> None:
        self.h, self.say = h, say
        GuestShell(h, "d2")  # both guests at their prompts: nothing else is booting
        self.sh = GuestShell(h, "d1")
        self.foo: list | None = None  # the events of the run of foo
        self.d1_disks = {d.name for d in h.spec.devices if "/d1." in d.image
                         or d.image.endswith("d1.img")}

    # ---- reading the records ------------------------------------------------

    def _events(self, since_ns: int) -> list:
        return [e for e in trace.load(self.h.trace_dir) if e.t_ns >= since_ns]

    def _steps(self, events: list, marks: dict | None = None) -> None:
        doms = {e.domid: e.proc.actor for e in events if e.domid is not None}
        for i, e in enumerate(events, 1):
            line = trace.describe(e, doms)
            mark = (marks or {}).get(id(e), "")
            self.say(f"{i:4}. {line}{'   <== ' + mark if mark else ''}")

    def _run_foo(self) -> list:
        if self.foo is None:
            self.sh.run("cd /home")
            t0 = time.monotonic_ns()
            out = self.sh.run("foo")
            self.foo_output = out
            self.foo = [e for e in self._events(t0) if self._about_d1(e)]
        return self.foo

    def _about_d1(self, e) -> bool:
        """d1's own records, and those of Xen, Domain-0 and devices acting for it."""
        if e.point in NOISE or e.domid not in (None, 0, 1):
            return False
        if e.proc.is_device:
            return e.who in self.d1_disks
        point = T.Point(e.point) if e.point in T.Point._value2member_map_ else None
        names_a_domain = point is not None and "{adom}" in point.text
        return not names_a_domain or e.a in (0, 1)

    @staticmethod
    def _pid_of(events: list, name: str) -> int:
        for e in events:
            if e.point == T.PCB_CREATE and e.s == name:
                return e.a
        raise HostError(f"no process {name} in the trace")

    # ---- the sections -------------------------------------------------------

    def section_1(self) -> None:
        events = self._run_foo()
        pid = self._pid_of(events, "foo")
        born = next(i for i, e in enumerate(events) if e.point == T.PCB_CREATE and e.a == pid)
        sh = events[born].b
        line_read = max(i for i, e in enumerate(events[:born])
                        if e.point == T.SYSCALL_EXIT and e.a == sh and e.s == "read")
        start = max(i for i, e in enumerate(events[:line_read])
                    if e.point == T.PROC_WAKE and e.a == sh)
        end = next(i for i, e in enumerate(events)
                   if e.point == T.SCHED_IN and e.a == pid)
        self.say("The shell (sh) read the line 'foo' from the console and spawns it:")
        part = events[start:end + 1]
        self._steps(part, {id(part[-1]): "foo starts running"})

    def section_2(self) -> None:
        events = self._run_foo()
        pid = self._pid_of(events, "foo")
        start = next(i for i, e in enumerate(events)
                     if e.point == T.SYSCALL_ENTER and e.a == pid and e.s == "open")
        end = next(i for i, e in enumerate(events)
                   if e.point == T.SYSCALL_EXIT and e.a == pid and e.s == "write")
        part = events[start:end + 1]
        marks = {}
        for e in part:
            if e.point == T.PROC_BLOCK and e.a == pid:
                marks[id(e)] = "foo BLOCKS"
            elif e.point == T.PROC_WAKE and e.a == pid:
                marks[id(e)] = "foo RESUMES"
        self.say("foo opens \"bar\" (O_SYNC) and fwrite()s 4096 bytes from its heap:")
        self._steps(part, marks)
        self.say(f"\nd1's console: {self.foo_output.strip()}")

    def section_3(self) -> None:
        sh = self.sh
        self.say("Two processes store different values at the same virtual address:")
        sh.run("memtest 111 0.3 &")
        self._console(self._also(sh.run("memtest 222 0.3"), "read 111"), "memtest")
        self.say("\nA process touches the kernel's region above VMMAX, another an "
                 "unmapped address, while a third keeps running:")
        out = sh.run("memtest 7 0.5 &")
        for where in ("kernel", "unmapped"):
            out += "\n" + sh.run(f"segv {where}")
        self._console(self._also(out, "read 7"), "")
        self.say("\nThe guest kernel itself asks Xen for forbidden page-table updates:")
        t0 = time.monotonic_ns()
        self._console(sh.run("mmuprobe"), "mmuprobe")
        self._steps(self._refusals(self._events(t0)))

    @staticmethod
    def _refusals(events: list) -> list:
        """Each refused mmu_update: the guest's request, then Xen's answer."""
        out = []
        for i, e in enumerate(events):
            if e.point == T.XEN_MMU_UPDATE and "REFUSED" in e.s:
                asked = [x for x in events[:i] if x.point == T.MMU_UPDATE and x.domid == e.a]
                out += asked[-1:] + [e]
        return out

    def _also(self, out: str, marker: str) -> str:
        """`out`, plus what a background process prints later, up to `marker`."""
        return out if marker in out else out + self.sh.wait_for(marker)

    def _console(self, out: str, keep: str) -> None:
        for line in PROMPT.sub("\n", out.replace("\r", "")).split("\n"):
            line = line.strip()
            if line and (not keep or keep in line or "segfault" in line
                         or "Segmentation" in line):
                self.say(f"    d1$ {line}")

    def section_4(self) -> None:
        d2 = GuestShell(self.h, "d2")
        d2.type("echod -n 1 &\n")
        d2.wait_for("echod: listening on port 7")
        t0 = time.monotonic_ns()
        out = self.sh.run("foo -n d2")
        d2.wait_for("echod: echoed")
        doms = {d["name"]: d["domid"] for d in self.h.xl("list")}
        events = [e for e in self._events(t0) if self._about_net(e, doms["d1"], doms["d2"])]
        foo, echod = self._pid_of(events, "foo"), self._last_pid(events, "echod", doms["d2"])
        events = [e for e in events if self._net_step(e, doms, foo, echod)]
        mine = [(e.domid, e.a) == (doms["d1"], foo) for e in events]
        start = next(i for i, e in enumerate(events)
                     if mine[i] and e.point == T.SYSCALL_ENTER and e.s == "connect")
        end = max(i for i, e in enumerate(events)
                  if mine[i] and e.point == T.SYSCALL_EXIT and e.s == "recv")
        part = events[start:end + 1]
        marks = {}
        for e in part:
            who = "foo" if e.domid == doms["d1"] else "echod"
            if e.point == T.PROC_BLOCK:
                marks[id(e)] = f"{who} BLOCKS ({e.s}: waiting for the network)"
            elif e.point == T.PROC_WAKE:
                marks[id(e)] = f"{who} RESUMES"
        self.say("d2 runs the echo server echod; in d1, foo connects to d2:7 over TCP, sends "
                 "a message and reads the reply:")
        self._steps(part, marks)
        self.say(f"\nd1's console: {out.strip()}")

    def _about_net(self, e, d1: int, d2: int) -> bool:
        if e.point in NOISE or e.proc.is_device:
            return False
        if e.domid not in (None, 0, d1, d2):
            return False
        point = T.Point(e.point) if e.point in T.Point._value2member_map_ else None
        return point is None or "{adom}" not in point.text or e.a in (0, d1, d2)

    @staticmethod
    def _net_step(e, doms: dict, foo: int, echod: int) -> bool:
        """foo's and echod's own steps, the network path's, and Xen's work for
        them: not the shells, not the consoles, not the disks."""
        per_process = {T.PCB_CREATE, T.PROC_EXEC, T.SCHED_IN, T.PROC_BLOCK, T.PROC_WAKE,
                       T.PROC_EXIT, T.SYSCALL_ENTER, T.SYSCALL_EXIT, T.PAGE_FAULT}
        if e.point in per_process:
            return (e.domid, e.a) in ((doms["d1"], foo), (doms["d2"], echod))
        if e.point in (T.XEN_HYPERCALL, T.HYPERCALL):
            return "console" not in e.s and "sched_op" not in e.s
        return e.point not in (T.KERNEL_BLOCK, T.KERNEL_WAKE, T.BLKFRONT_SUBMIT,
                               T.BLKFRONT_RESPONSE, T.BLKBACK_DISPATCH, T.BLKBACK_RESPONSE,
                               T.DRIVER_DOORBELL, T.DRIVER_IRQ, T.XEN_PIRQ, T.RING_PUSH,
                               T.BCACHE_MISS, T.BLOCK_READ, T.BLOCK_WRITE, T.EXT2_LOOKUP)

    @staticmethod
    def _last_pid(events: list, name: str, domid: int) -> int:
        pids = [e.a for e in events if e.domid == domid and e.point in (T.SYSCALL_ENTER,
                                                                          T.PROC_WAKE)
                and e.s in ("accept", "recv", name)]
        if not pids:
            raise HostError(f"no process {name} in the trace")
        return pids[0]

    def section_5(self) -> None:
        self.say("Consolidation: one machine, several operating systems, each with its "
                 "own memory and CPU time:")
        self._list()
        self.say("\nIsolation: d2 is destroyed; d1 goes on:")
        self.h.xl("destroy", dom="d2")
        self.say(f"    d1$ echo still here -> {self.sh.run('echo still here').strip()}")
        self._list()
        self.say("\nFlexibility: the toolstack pauses and unpauses d1, and creates d2 again:")
        self.h.xl("pause", dom="d1")
        self._list()
        self.h.xl("unpause", dom="d1")
        spec = next(d for d in self.h.spec.domains if d.name == "d2")
        self.h.xl("create", spec=resolve_disks(spec, self.h.image_dir).to_wire(), timeout_s=30)
        self.h.xl("wait_booted", doms=["d2"], timeout_ms=30_000, timeout_s=35)
        self._list()

    def _list(self) -> None:
        self.say(f"    {'Name':<12}{'ID':>4}{'Mem(MiB)':>10}{'State':>8}{'CPU(s)':>9}")
        for d in self.h.xl("list"):
            self.say(f"    {d['name']:<12}{d['domid']:>4}{d['memory_kib'] // 1024:>10}"
                     f"{d['state_letters']:>8}{d['cpu_time_ns'] / 1e9:>9.2f}")
