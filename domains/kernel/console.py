"""The guest's PV console (hvc0): the ring page from start_info.

The guest produces `out` and consumes `in`; it notifies the console port
after writing. Output that does not fit waits for xenconsoled to drain the
ring (it notifies us when it has read).
"""

from collections.abc import Callable

from domains.kernel.bytering import console_guest

TYPEAHEAD = 4096  # input kept for a reader that is not there yet


class Console:
    def __init__(self, kernel, page, port: int) -> None:
        self.kernel, self.port = kernel, port
        self.out, self.inp = console_guest(page)
        self.backlog = b""
        self.typed = b""  # input that arrived before anyone reads the console
        self.on_input: Callable[[bytes], None] | None = None
        kernel.evtchn.on(port, lambda _p: self._pump())

    def write(self, text: str | bytes) -> None:
        self.backlog += text.encode() if isinstance(text, str) else text
        self._flush()

    def _flush(self) -> None:
        if not self.backlog:
            return
        n = self.out.write(self.backlog)
        if n:
            self.backlog = self.backlog[n:]
            self.kernel.evtchn.notify(self.port)

    def set_input(self, handler: Callable[[bytes], None]) -> None:
        """Who reads the console from now on; it gets what was typed before."""
        self.on_input = handler
        if self.typed:
            typed, self.typed = self.typed, b""
            handler(typed)

    def _pump(self) -> None:
        self._flush()
        data = self.inp.read()
        if data:
            self.kernel.evtchn.notify(self.port)
            if self.on_input is not None:
                self.on_input(data)
            else:
                self.typed = (self.typed + data)[-TYPEAHEAD:]  # a tty buffer, bounded
