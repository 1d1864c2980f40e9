"""Kernel tasks: system-call bodies that may sleep, run as generators.

Rules:
1. A system call that can block is a generator. It yields a wait object
   (a block request of the filesystem or a WaitQueue wait) and is
   resumed with that wait's result, or has OSError thrown in.
2. `Waits` maps a wait object's type to the driver that arms it. A driver
   either answers at once (returns Ready(value)) or keeps `resume` and calls
   it later from the event loop. Tasks never recurse: an immediate answer is
   fed back in a loop.
3. An interruptible wait (a WaitQueue: sleep, wait, tty read) can be cancelled: the task then
   gets OSError(EINTR), as a signal does to a sleeping Linux process. Block
   I/O is not interruptible (the D state): it finishes first.
"""

import errno
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from domains.xenolinux import trace as T


@dataclass(frozen=True)
class Ready:
    value: object = None


@dataclass(eq=False)
class Wait:
    queue: "WaitQueue"
    resume: Callable | None = None

    def cancel(self) -> None:
        """Interrupt this wait with EINTR (a signal arrived)."""
        if self.resume is not None and self in self.queue.waiters:
            self.queue.waiters.remove(self)
            resume, self.resume = self.resume, None
            resume(None, OSError(errno.EINTR, "interrupted"))


class WaitQueue:
    """Linux's wait_queue_head_t: sleepers woken in FIFO order."""

    def __init__(self) -> None:
        self.waiters: deque[Wait] = deque()

    def wait(self) -> Wait:
        return Wait(self)

    def wake_one(self, value=None) -> bool:
        while self.waiters:
            w = self.waiters.popleft()
            if w.resume is not None:
                resume, w.resume = w.resume, None
                resume(value, None)
                return True
        return False

    def wake_all(self, value=None) -> None:
        while self.wake_one(value):
            pass


class Mutex:
    """A sleeping lock (the filesystem's, like the old big kernel lock).

    Released with sleepers, it is handed to the first of them (FIFO), as
    Linux's mutex hands off to a starving waiter: otherwise a process that
    takes it again and again (a tight write-fsync loop) could keep a woken
    one, which runs only at its next turn, out for ever."""

    def __init__(self) -> None:
        self.held = False
        self.queue = WaitQueue()
        self.handed: Wait | None = None  # the sleeper it was handed to, not yet running

    def acquire(self):
        if not self.held:
            self.held = True
            return
        w = self.queue.wait()
        try:
            yield w
        except BaseException:  # interrupted (EINTR) or killed while it slept
            if self.handed is w:
                self.handed = None
                self.release()  # it was ours already: pass it on
            raise
        self.handed = None  # held since the hand-off

    def release(self) -> None:
        while self.queue.waiters:
            w = self.queue.waiters.popleft()
            if w.resume is not None:
                self.handed = w  # stays held: nobody can take it in between
                resume, w.resume = w.resume, None
                resume(None, None)
                return
        self.held = False


Resume = Callable[[object, BaseException | None], None]
Driver = Callable[[object, Resume], Ready | None]


class Task:
    """Runs one generator to the end; `done(value, exc)` is called once."""

    def __init__(self, gen, waits: dict[type, Driver], done: Callable, trace_id: int = 0):
        self.gen, self.waits, self.done = gen, waits, done
        self.current: object = None  # the wait it sleeps in, if any
        self.trace_id = trace_id
        # Set by the scheduler for system calls: a wake-up only makes the
        # process runnable; the rest of the call runs when it is scheduled.
        self.defer: Callable | None = None

    def start(self) -> None:
        self.advance(None, None)

    def step(self, value, exc) -> None:
        """What a driver calls when the wait it armed is over."""
        if self.defer is not None:
            self.defer(value, exc)
        else:
            self.advance(value, exc)

    def advance(self, value, exc) -> None:
        """Run the generator until it sleeps again or ends."""
        while True:
            self.current = None
            T.set_current(self.trace_id)  # what runs below stamps with our id
            try:
                req = self.gen.throw(exc) if exc is not None else self.gen.send(value)
            except StopIteration as stop:
                self.done(stop.value, None)
                return
            except OSError as err:
                self.done(None, err)
                return
            value, exc = None, None
            driver = self.waits.get(type(req))
            if driver is None:
                exc = OSError(errno.EINVAL, f"kernel: cannot wait on {type(req).__name__}")
                continue
            self.current = req
            answer = driver(req, self.step)
            if answer is None:
                return  # asleep: the driver calls step() later
            value = answer.value

    def interrupt(self) -> bool:
        """Cancel an interruptible wait; False if it is not in one."""
        if isinstance(self.current, Wait) and self.current.resume is not None:
            self.current.cancel()
            return True
        return False


def wait_driver(req: Wait, resume: Resume) -> None:
    req.resume = resume
    req.queue.waiters.append(req)
    return None
