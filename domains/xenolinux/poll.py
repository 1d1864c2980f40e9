"""poll(2): sleep until one of several files is ready, or a timeout.

Rules:
1. A file is asked for its readiness mask (POLLIN/POLLOUT/POLLERR): a socket
   asks its Sock, the console tty has a line or not, other files are always
   ready (as regular files are in Linux).
2. Waiting is one WaitAny: a waiter on each file's wait queue plus a kernel
   timer; the first to fire removes the others and resumes the task. It is an
   interruptible wait (a signal gives EINTR), like every WaitQueue sleep.
3. The caller then asks every file again: a wake-up is a hint, not a promise.
"""

import errno
from dataclasses import dataclass, field

from domains.xenolinux import abi
from domains.xenolinux.task import Wait, WaitQueue
from domains.xenolinux.tty import Tty

TIMEOUT = "timeout"


def readiness(f) -> tuple[int, WaitQueue | None]:
    """(mask, the queue to sleep on) of one OpenFile."""
    dev = f.dev
    if dev is not None and hasattr(dev, "poll"):
        return dev.poll(), dev.wq
    if isinstance(dev, Tty):
        return (abi.POLLIN if dev.ready else 0) | abi.POLLOUT, dev.readers
    return abi.POLLIN | abi.POLLOUT, None


@dataclass(eq=False)
class WaitAny(Wait):
    """Sleep on several wait queues at once (Linux's poll_table), with a deadline."""

    queues: tuple = ()
    deadline_ns: int | None = None
    _waits: list = field(default_factory=list)
    _timer: object = None

    def fire(self, value, exc) -> None:
        if self.resume is None:
            return
        resume, self.resume = self.resume, None
        for w in self._waits:
            w.resume = None
            if w in w.queue.waiters:
                w.queue.waiters.remove(w)
        if self._timer is not None:
            self._timer.cancel()
        resume(value, exc)

    def cancel(self) -> None:
        self.fire(None, OSError(errno.EINTR, "interrupted"))


def wait_any(queues, deadline_ns: int | None) -> WaitAny:
    return WaitAny(WaitQueue(), queues=tuple(queues), deadline_ns=deadline_ns)


def driver(kernel):
    """The WaitAny driver for a Task's waits table (it needs the kernel's timers)."""
    def arm(req: WaitAny, resume):
        req.resume = resume
        for q in req.queues:
            w = Wait(q, req.fire)
            q.waiters.append(w)
            req._waits.append(w)
        if req.deadline_ns is not None:
            req._timer = kernel.call_at(req.deadline_ns, lambda: req.fire(TIMEOUT, None))
        return None
    return arm
