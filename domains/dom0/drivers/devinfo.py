"""What every physical-device driver does alike with its controller's info page.

A controller answers "init" by filling the info page and storing its magic
word last, then raising its IRQ; until then the page is not to be read.
"""

import time
from collections.abc import Callable

from hypervisor.public.xen import Hypercall, SchedOp


def published_info(page: memoryview, magic: int, size: int,
                   unpack: Callable[[bytes], dict]) -> dict | None:
    """The info page's contents once the device has stored its magic; else None."""
    with page[:4].cast("I") as word:
        if word[0] != magic:
            return None
    return unpack(bytes(page[:size]))


def poll_irq_until(k, port: int, done: Callable[[], bool], timeout_s: float) -> bool:
    """Boot: SCHEDOP_poll on the IRQ's port until done() or the timeout."""
    deadline = time.monotonic_ns() + int(timeout_s * 1e9)
    while True:
        k.evtchn.clear(port)  # before the check: an IRQ after it pends the port again
        if done():
            return True
        left = deadline - time.monotonic_ns()
        if left <= 0:
            return False
        k.xen.call(Hypercall.sched_op, SchedOp.poll, {"ports": [port], "timeout_ns": left})
