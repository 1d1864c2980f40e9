"""The guest kernel's sans-IO parts: tasks and wait queues, the loader's
timer ticks, the tty's line discipline, block merging, the scheduler."""

import errno
import types

import pytest

from domains.xenolinux import abi, loader
from domains.xenolinux.blockdev import runs
from domains.xenolinux.process import describe_status, exited, killed
from domains.xenolinux.sched import Scheduler
from domains.xenolinux.system import cmdline_opts
from domains.xenolinux.task import Mutex, Ready, Task, Wait, WaitQueue, wait_driver
from domains.xenolinux.tty import Tty


def run_task(gen, waits=None):
    out = []
    Task(gen, {Wait: wait_driver, **(waits or {})}, lambda v, e: out.append((v, e))).start()
    return out


def test_task_answers_at_once_without_recursion():
    class Now:
        pass

    def body():
        total = 0
        for _ in range(5000):  # deeper than Python's recursion limit
            total += yield Now()
        return total

    out = run_task(body(), {Now: lambda req, resume: Ready(1)})
    assert out == [(5000, None)]


def test_wait_queue_sleeps_until_woken_and_interrupt_gives_eintr():
    wq = WaitQueue()

    def sleeper():
        got = yield wq.wait()
        return got

    out = run_task(sleeper())
    assert out == []
    wq.wake_one("line")
    assert out == [("line", None)]

    out2 = []
    t = Task(sleeper(), {Wait: wait_driver}, lambda v, e: out2.append(e))
    t.start()
    assert t.interrupt()
    assert isinstance(out2[0], OSError) and out2[0].errno == errno.EINTR
    assert not wq.waiters


def test_mutex_serialises_two_tasks_in_fifo_order():
    m, log, gate = Mutex(), [], WaitQueue()

    def critical(name):
        yield from m.acquire()
        log.append(f"{name} in")
        yield gate.wait()
        log.append(f"{name} out")
        m.release()

    run_task(critical("a"))
    run_task(critical("b"))
    assert log == ["a in"]
    gate.wake_one()
    assert log == ["a in", "a out", "b in"]
    gate.wake_one()
    assert log[-1] == "b out"


def test_loader_puts_a_tick_in_every_loop_of_a_generator_only():
    code = loader.compile_program(b"""
def helper(n):
    while n:
        n -= 1
    return 5

def main(argv):
    x = helper(3)
    for i in range(3):
        x += i
    yield from printf("%d", x)
""", "/bin/t")
    ticks = []
    coro = loader.instantiate(code, ["t"], lambda *a: b"", lambda *a: None,
                              lambda: ticks.append(1) or True)
    first = coro.send(None)
    assert isinstance(first, abi.Preempt) and ticks  # the tick yields when due
    seen = [first]
    while not isinstance(seen[-1], abi.Syscall):
        seen.append(coro.send(None))
    assert seen[-1].name == "brk"  # printf's scratch buffer comes from malloc


@pytest.mark.parametrize("src", [b"def main(argv:\n", b"x = 1\n", b"def main(argv):\n  return 1\n",
                                 b"\xff\xfe"])
def test_loader_refuses_what_is_not_a_program(src):
    with pytest.raises(OSError) as err:
        code = loader.compile_program(src, "/bin/bad")
        loader.instantiate(code, ["bad"], None, None, lambda: False)
    assert err.value.errno == errno.ENOEXEC


def test_programs_get_no_import_or_open():
    code = loader.compile_program(b"import os\ndef main(argv):\n    yield\n", "/bin/x")
    with pytest.raises(ImportError):
        loader.instantiate(code, ["x"], None, None, lambda: False)


class FakeConsole:
    def __init__(self):
        self.out, self.handler = b"", None

    def set_input(self, fn):
        self.handler = fn

    def write(self, data):
        self.out += data


def test_tty_echoes_edits_and_hands_over_whole_lines():
    con = FakeConsole()
    tty = Tty(con)
    out = run_task(tty.read(100))
    con.handler(b"lz\x7fs -l")
    assert out == [] and con.out == b"lz\b \bs -l"
    con.handler(b"\r")
    assert out == [(b"ls -l\n", None)]
    con.handler(b"\x04")
    assert run_task(tty.read(100)) == [(b"", None)]


def test_block_runs_merge_consecutive_blocks_up_to_the_limit():
    assert runs([1, 2, 3, 7, 8, 20], 2) == [(1, 3), (7, 2), (20, 1)]
    assert runs(list(range(100)), 2) == [(0, 32), (32, 32), (64, 32), (96, 4)]


def test_cmdline_lists_init_programs():
    opts, run = cmdline_opts(
        "root=/dev/xvda vmmax=0x80000000 init.run=/bin/echo,hi init.run=/bin/ps")
    assert opts["vmmax"] == "0x80000000"
    assert run == [["/bin/echo", "hi"], ["/bin/ps"]]


def test_wait_status_encoding():
    assert describe_status(exited(3)) == "exit 3"
    assert describe_status(killed(11)) == "Segmentation fault (signal 11)"


# ---- the scheduler over a fake kernel ----------------------------------------------

class FakeKernel:
    def __init__(self):
        self.ready = []

    def call_soon_once(self, fn):
        if fn not in self.ready:
            self.ready.append(fn)

    def run(self, limit=10_000):
        for _ in range(limit):
            if not self.ready:
                return
            self.ready.pop(0)()


class FakeMm:
    def __init__(self):
        self.aspace = types.SimpleNamespace(current=True, switch_to=lambda: None)
        self.frames = {}

    def destroy(self):
        pass


def spawn(s, body, name="p"):
    p = s.new_process(None, name, [name], 2, "/")
    p.mm, p.coro = FakeMm(), body
    s.start(p)
    return p


def test_round_robin_shares_the_cpu_between_busy_processes(monkeypatch):
    import domains.xenolinux.sched as sched
    monkeypatch.setattr(sched, "QUANTUM_NS", 0)  # every tick ends the quantum
    k = FakeKernel()
    s = Scheduler(k, print, {"getpid": lambda os, p: p.pid}, {})
    order = []

    def busy(tag):
        for _ in range(3):
            order.append(tag)
            yield abi.Preempt()

    spawn(s, busy("a"))
    spawn(s, busy("b"))
    k.run()
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert all(p.status == exited(0) for p in s.procs.values())


def test_a_blocking_system_call_parks_the_process_until_woken():
    k, wq = FakeKernel(), WaitQueue()

    def sys_read(os, p):
        got = yield wq.wait()
        return got

    s = Scheduler(k, print, {"read": sys_read}, {Wait: wait_driver})
    got = []

    def prog():
        got.append((yield abi.Syscall("read")))

    p = spawn(s, prog())
    k.run()
    assert p.state.value == "S" and got == []
    wq.wake_one(42)
    k.run()
    assert got == [42] and p.status == exited(0)


def test_a_crashing_program_dies_alone_and_bad_syscalls_get_errno():
    k = FakeKernel()
    s = Scheduler(k, lambda m: None, {}, {})
    rc = []

    def bad():
        rc.append((yield abi.Syscall("no_such_call")))
        yield abi.Syscall("x", ())
        raise ValueError("oops")

    def good():
        yield abi.Preempt()

    a, b = spawn(s, bad()), spawn(s, good())
    k.run()
    assert rc == [-errno.ENOSYS]
    assert a.status == exited(127) and b.status == exited(0)


def test_a_released_mutex_goes_to_its_sleeper_not_to_whoever_asks_next():
    """No barging: a tight lock/unlock loop cannot starve a woken sleeper."""
    from domains.xenolinux.task import Mutex, wait_driver
    m, woken = Mutex(), []

    def sleeper(name):
        gen = m.acquire()
        w = next(gen)  # it sleeps on the lock
        wait_driver(w, lambda value, exc: woken.append(name))
        return gen

    assert list(m.acquire()) == []  # A takes the free lock at once
    b = sleeper("B")
    m.release()  # A lets go: handed to B, who has not run yet
    assert woken == ["B"] and m.held
    a_again = sleeper("A")  # A asks again at once: it must queue behind B
    with pytest.raises(StopIteration):
        b.send(None)  # B runs, holding the lock
    m.release()
    assert woken == ["B", "A"] and m.held
    with pytest.raises(StopIteration):
        a_again.send(None)
    m.release()
    assert not m.held


def test_a_sleeper_killed_after_the_hand_off_passes_the_mutex_on():
    from domains.xenolinux.task import Mutex, wait_driver
    m, woken = Mutex(), []
    assert list(m.acquire()) == []
    gens = []
    for name in ("B", "C"):
        gen = m.acquire()
        wait_driver(next(gen), lambda v, e, name=name: woken.append(name))
        gens.append(gen)
    m.release()  # to B ...
    gens[0].close()  # ... killed before it ran: C gets it
    assert woken == ["B", "C"] and m.held and m.handed is not None
