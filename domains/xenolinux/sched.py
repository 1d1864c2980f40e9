"""The process table and the round-robin scheduler.

Rules:
1. One run queue, round-robin, a time quantum of QUANTUM_NS. A process runs
   until it blocks in a system call, exits, or its quantum ends at a timer
   tick (a loop back-edge) or at a system call; then it goes to the tail.
2. The scheduler runs as one callback of the kernel's event loop per time
   slice, so upcalls (block completions, console input) are handled between
   slices. With nothing runnable the loop blocks in Xen (SCHEDOP_block).
3. A system call is a plain function (answers at once) or a generator (may
   sleep: it runs as a Task and the process is BLOCKED until it ends).
4. Signals are acted on when the process would next run in user mode;
   interruptible sleeps are cut short (EINTR) so that happens at once.
   SIGKILL, SIGTERM and SIGSEGV kill (no handlers in this model).
5. Exit: files closed, the address space torn down (its page tables
   unpinned through Xen), children given to init, the parent woken.
"""

import inspect
import time
import traceback
from collections import deque

from domains.xenolinux import trace as T
from domains.xenolinux.abi import ERRNO, Preempt, Syscall
from domains.xenolinux.process import SIGSEGV, Pcb, State, exited, killed
from domains.xenolinux.procmm import Segfault
from domains.xenolinux.task import Task, WaitQueue

QUANTUM_NS = 10_000_000
INIT_PID = 1


class Scheduler:
    def __init__(self, kernel, printk, handlers: dict, waits: dict) -> None:
        self.k, self.printk = kernel, printk
        self.os = None  # the XenoLinux that system calls act on
        self.procs: dict[int, Pcb] = {}
        self.runq: deque[Pcb] = deque()
        self.current: Pcb | None = None
        self.next_pid = INIT_PID
        self.deadline_ns = 0
        self.switches = 0
        self.child_exit: dict[int, WaitQueue] = {}
        self.waits = waits
        self.handlers = {name: (fn, inspect.isgeneratorfunction(fn))
                         for name, fn in handlers.items()}

    # ---- the process table ---------------------------------------------------

    def new_process(self, parent: Pcb | None, name: str, argv: list[str], cwd: int,
                    cwd_path: str) -> Pcb:
        p = Pcb(self.next_pid, parent.pid if parent else 0, name, list(argv), cwd, cwd_path,
                started_ns=time.monotonic_ns())
        self.next_pid += 1
        self.procs[p.pid] = p
        self.child_exit[p.pid] = WaitQueue()
        if parent is not None:
            parent.children.add(p.pid)
        p.trace_id = T.new_id()
        T.stamp(T.PCB_CREATE, p.trace_id, p.pid, p.ppid, name)
        return p

    def start(self, p: Pcb) -> None:
        p.state = State.RUNNABLE
        p.resume = None
        self.runq.append(p)
        self.k.call_soon_once(self.schedule)

    def preempt_due(self) -> bool:
        return time.monotonic_ns() >= self.deadline_ns

    # ---- one time slice ----------------------------------------------------

    def schedule(self) -> None:
        p = self._pick()
        if p is None:
            return
        self.current = p
        T.stamp(T.SCHED_IN, p.trace_id, p.pid, 0, p.name)
        t0 = time.monotonic_ns()
        self.deadline_ns = t0 + QUANTUM_NS
        try:
            self._run(p)
        finally:
            p.cpu_ns += time.monotonic_ns() - t0
            self.current = None
        if self.runq:
            self.k.call_soon_once(self.schedule)

    def _pick(self) -> Pcb | None:
        while self.runq:
            p = self.runq.popleft()
            if p.state is State.RUNNABLE:
                return p
        return None

    def _run(self, p: Pcb) -> None:
        value = p.resume
        if p.pending_step is not None:  # the rest of a system call, in p's context
            self._load_mm(p)
            step, p.pending_step = p.pending_step, None
            p.task.advance(*step)
            value = self._after_task(p)
            if p.state is not State.RUNNABLE:
                return
        while True:
            if p.pending:
                self.exit(p, killed(min(p.pending)))
                return
            self._load_mm(p)
            T.set_current(p.trace_id)  # user mode: its faults are the process's
            req = self._step(p, value)
            if req is None:
                return  # exited
            if isinstance(req, Preempt):
                value = None
            elif isinstance(req, Syscall):
                value = self._syscall(p, req)
                if p.state is not State.RUNNABLE:
                    return  # blocked or gone
            else:
                value = -ERRNO["ENOSYS"]
            if self.preempt_due():
                p.resume = value
                self.runq.append(p)
                return

    def _load_mm(self, p: Pcb) -> None:
        """Before user code runs: its page tables are the ones Xen has loaded."""
        if not p.mm.aspace.current:
            p.mm.aspace.switch_to()  # MMUEXT_NEW_BASEPTR
            self.switches += 1

    def _step(self, p: Pcb, value):
        """Run the program until its next yield; None once it has ended."""
        try:
            return p.coro.send(value)
        except StopIteration as stop:
            code = stop.value if isinstance(stop.value, int) else 0
            self.exit(p, exited(code))
        except Segfault as fault:
            self.printk(f"{p.name}[{p.pid}]: segfault: {fault} (SIGSEGV)")
            T.stamp(T.SIGNAL, p.trace_id, p.pid, SIGSEGV, str(fault)[:48])
            self.exit(p, killed(SIGSEGV))
        except Exception as err:  # a bug in the program: it dies, the kernel goes on
            where = traceback.extract_tb(err.__traceback__)[-1]
            self.printk(f"{p.name}[{p.pid}]: {type(err).__name__}: {err} "
                        f"(line {where.lineno}); killed")
            self.exit(p, exited(127))
        return None

    # ---- system calls --------------------------------------------------------

    def _syscall(self, p: Pcb, req: Syscall):
        entry = self.handlers.get(req.name)
        p.syscall_id = T.new_id()  # one flow per system call, 0 when tracing is off
        T.set_current(p.syscall_id)
        T.stamp(T.SYSCALL_ENTER, p.syscall_id, p.pid, 0, req.name)
        if entry is None:
            return self._ret(p, req, -ERRNO["ENOSYS"])
        fn, blocking = entry
        try:
            out = fn(self.os, p, *req.args)
        except TypeError:
            return self._ret(p, req, -ERRNO["EINVAL"])
        except OSError as err:
            return self._ret(p, req, -(err.errno or ERRNO["EIO"]))
        if not blocking:
            return self._ret(p, req, out)
        return self._run_task(p, req, out)

    def _ret(self, p: Pcb, req: Syscall, value):
        T.stamp(T.SYSCALL_EXIT, p.syscall_id, p.pid, value if isinstance(value, int) else 0,
                req.name)
        return value

    def _run_task(self, p: Pcb, req: Syscall, gen):
        task = Task(gen, self.waits, lambda v, e: self._task_done(p, v, e), p.syscall_id)
        task.defer = lambda v, e: self._task_wake(p, v, e)
        p.task, p.task_req, p.task_result = task, req, None
        try:
            task.start()
        except Exception as err:  # a kernel bug must not take the domain down
            self.printk(f"BUG: {req.name}: {type(err).__name__}: {err}")
            p.task = None
            return self._ret(p, req, -ERRNO["EIO"])
        return self._after_task(p)

    def _task_done(self, p: Pcb, value, exc) -> None:
        if exc is not None:
            value = -(getattr(exc, "errno", None) or ERRNO["EIO"])
            if not isinstance(exc, OSError):
                self.printk(f"BUG: {p.task_req.name}: {type(exc).__name__}: {exc}")
        p.task_result = (value,)

    def _after_task(self, p: Pcb):
        """The task ran as far as it could: its result, or p sleeps."""
        if p.task_result is not None:
            (value,), p.task, p.task_result = p.task_result, None, None
            return self._ret(p, p.task_req, value)
        if p.state is State.RUNNABLE:
            p.state = State.BLOCKED
            T.stamp(T.PROC_BLOCK, p.syscall_id, p.pid, 0, p.task_req.name)
        return None

    def _task_wake(self, p: Pcb, value, exc) -> None:
        """A wait of p's system call is over: p becomes runnable (wake_up)."""
        if p.state is not State.BLOCKED:
            return
        p.pending_step = (value, exc)
        T.stamp(T.PROC_WAKE, p.syscall_id, p.pid, 0, p.name)
        p.state = State.RUNNABLE
        self.runq.append(p)
        self.k.call_soon_once(self.schedule)

    # ---- signals and exit ----------------------------------------------------

    def signal(self, p: Pcb, sig: int) -> None:
        if not p.alive:
            return
        p.pending.add(sig)
        T.stamp(T.SIGNAL, p.trace_id, p.pid, sig, p.name)
        if p.state is State.BLOCKED and p.task is not None:
            p.task.interrupt()  # EINTR: it dies on its way back to user mode
        # A runnable process dies when next picked (rule 4); a process in a
        # block I/O (not interruptible) dies when the I/O has finished.

    def exit(self, p: Pcb, status: int) -> None:
        if not p.alive:
            return
        p.state, p.status = State.ZOMBIE, status
        T.stamp(T.PROC_EXIT, p.trace_id, p.pid, status, p.name)
        try:
            p.coro.close()
        except BaseException:  # noqa: BLE001 - whatever the program does on close
            pass
        self.close_files(p)
        if p.mm is not None:
            p.mm.destroy()  # unpins its tables (Xen first loads swapper_pg_dir)
            p.mm = None
        self._reparent(p)
        parent = self.procs.get(p.ppid)
        if parent is not None:
            self.child_exit[parent.pid].wake_all()
        else:
            self.reap(p)

    def close_files(self, p: Pcb) -> None:
        files = list(p.files.values())
        p.files.clear()
        for f in files:
            f.put()

    def _reparent(self, p: Pcb) -> None:
        init = self.procs.get(INIT_PID)
        for pid in p.children:
            child = self.procs.get(pid)
            if child is None:
                continue
            if init is None or init is p:
                child.ppid = 0
                if not child.alive:
                    self.reap(child)
                continue
            child.ppid = INIT_PID
            init.children.add(pid)
            if not child.alive:
                self.child_exit[INIT_PID].wake_all()
        p.children.clear()

    def reap(self, p: Pcb) -> None:
        self.procs.pop(p.pid, None)
        self.child_exit.pop(p.pid, None)
        parent = self.procs.get(p.ppid)
        if parent is not None:
            parent.children.discard(p.pid)
