"""A guest kernel without a host, for socket tests: the real scheduler, system
calls, VFS and network glue over a fake event loop (call_soon, call_at on a clock
the test moves), a flat user memory, and the loopback stand-in stack."""

import time
import types

from domains.xenolinux import libc, loader, poll
from domains.xenolinux.net_glue import NetGlue
from domains.xenolinux.sched import Scheduler
from domains.xenolinux.syscalls import TABLE
from domains.xenolinux.task import Wait, wait_driver
from domains.xenolinux.vfs import CharDevice, OpenFile, Vfs
from tests.support.fakestack import FakeStack


class Clock:
    """The stack's and the fake kernel's clock: starts at the real monotonic time
    (poll computes its deadline from it) and moves only when a test says so."""

    def __init__(self):
        self.ns = time.monotonic_ns()

    def __call__(self):
        return self.ns


class Timer:
    def __init__(self, deadline, fn):
        self.deadline, self.fn, self.cancelled = deadline, fn, False

    def cancel(self):
        self.cancelled = True


class FakeKernel:
    """The event loop: call_soon and call_at, on a clock the test moves."""

    def __init__(self, clock):
        self.clock, self.ready, self.timers = clock, [], []

    def call_soon(self, fn):
        self.ready.append(fn)

    def call_soon_once(self, fn):
        if fn not in self.ready:
            self.ready.append(fn)

    def call_later(self, delay_s, fn):
        return self.call_at(self.clock.ns + int(delay_s * 1e9), fn)

    def call_at(self, deadline, fn):
        t = Timer(deadline, fn)
        self.timers.append(t)
        return t

    def live_timers(self):
        return [t for t in self.timers if not t.cancelled]

    def run(self, limit=100_000):
        for _ in range(limit):
            due = [t for t in self.live_timers() if t.deadline <= self.clock.ns]
            if not self.ready and not due:
                return
            for t in due:
                self.timers.remove(t)
                t.fn()
            if self.ready:
                self.ready.pop(0)()
        raise AssertionError("the kernel never went idle")

    def run_all(self, limit=10_000):
        """run(), and whenever only timers are left jump the clock to the next one
        (virtual time: a stack's retransmit or delayed-ACK timer fires at once)."""
        for _ in range(limit):
            self.run()
            live = self.live_timers()
            if not live:
                return
            self.clock.ns = max(self.clock.ns, min(t.deadline for t in live))
        raise AssertionError("timers never ran out")

    def advance(self, ns):
        self.clock.ns += ns
        self.run()


class FakeMm:
    """A flat user memory with brk (enough for libc's malloc)."""

    def __init__(self):
        self.aspace = types.SimpleNamespace(current=True, switch_to=lambda: None)
        self.frames, self.mem, self.brk = {}, bytearray(), 0x1000

    def load(self, addr, n):
        return bytes(self.mem[addr - 0x1000:addr - 0x1000 + n])

    def store(self, addr, data):
        self.mem[addr - 0x1000:addr - 0x1000 + len(data)] = data

    def set_brk(self, addr):
        if addr > self.brk:
            self.mem.extend(bytes(addr - self.brk))
            self.brk = addr
        return self.brk

    def destroy(self):
        pass


class Os:
    def __init__(self, stack_class=FakeStack):
        self.clock = Clock()
        self.k = FakeKernel(self.clock)
        self.stacks = []

        def factory(_now):
            s = stack_class(self.clock)
            self.stacks.append(s)
            return s
        self.net = NetGlue(self.k, lambda m: None, None, stack_factory=factory)
        self.vfs = Vfs({})
        self.waits = {Wait: wait_driver, poll.WaitAny: poll.driver(self.k)}
        self.sched = Scheduler(self.k, print, TABLE, self.waits)
        self.sched.os = self

    @property
    def stack(self):
        return self.stacks[0]

    def spawn(self, prog, name="p"):
        p = self.sched.new_process(None, name, [name], 2, "/")
        p.mm = FakeMm()
        p.coro = prog(types.SimpleNamespace(**libc.instantiate(p.mm.load, p.mm.store)))
        self.sched.start(p)
        return p


class Pipe(CharDevice):
    """Standard input (given bytes, then end of file) and output (kept)."""

    def __init__(self, data: bytes = b"") -> None:
        self.data, self.out = data, b""

    def read(self, n):
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk
        yield

    def write(self, data):
        self.out += data
        return len(data)
        yield


def program(os, path, argv, stdin=b""):
    """Run a guest program from domains/xenolinux/bin; (pcb, its stdout Pipe)."""
    import pathlib
    src = (pathlib.Path(__file__).resolve().parents[2] / "domains/xenolinux/bin" / path)
    code = loader.compile_program(src.read_bytes(), "/bin/" + path)
    p = os.sched.new_process(None, path, argv, 2, "/")
    p.mm = FakeMm()
    p.coro = loader.instantiate(code, argv, p.mm.load, p.mm.store, os.sched.preempt_due)
    out = Pipe()
    p.files.update({0: OpenFile(0, 0, Pipe(stdin)), 1: OpenFile(0, 1, out)})
    p.files[2] = p.files[1]
    p.files[1].refs = 2
    os.sched.start(p)
    return p, out
