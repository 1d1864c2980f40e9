"""What every physical-device driver does alike with its controller's info page.

A controller answers "init" by filling the info page and storing its magic
word last, then raising its IRQ; until then the page is not to be read.
`InfoPageDriver` is that bring-up for any driver: it reads the page once
the magic is there, refuses a failed init, and calls `_info_ready()` once.
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


class InfoPageDriver:
    """Mixin. The driver has k, port, info_page, info (None until valid),
    error and a `ready` property, and names its interface's INFO_MAGIC,
    INFO_SIZE and unpack_info."""

    INFO_MAGIC: int
    INFO_SIZE: int
    unpack_info: Callable[[bytes], dict]

    def wait_ready(self, timeout_s: float) -> bool:
        """Boot: SCHEDOP_poll on our IRQ's port until the info page is valid."""
        poll_irq_until(self.k, self.port, lambda: self._check_info() or bool(self.error),
                       timeout_s)
        return self.ready

    def _check_info(self) -> bool:
        if self.info is not None:
            return True
        info = published_info(self.info_page, self.INFO_MAGIC, self.INFO_SIZE,
                              self.unpack_info)
        if info is None:
            return False
        if info["init_status"] != 0:
            self.error = f"device refused init ({info['init_status']})"
            return False
        self.info = info
        self._info_ready()
        return True

    def _info_ready(self) -> None:
        """The info page just became valid (after init or a device reset)."""
