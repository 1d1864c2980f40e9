"""hvc0 as a terminal: a line discipline over the PV console.

Rules:
1. Input arrives from the console's in[] ring. Canonical mode, as a Linux
   tty: characters are echoed, backspace edits the line, a line is handed to
   readers only when Enter completes it; Ctrl-D at the start of a line is
   end of file; Ctrl-C sends SIGINT's stand-in (SIGTERM) to the foreground.
2. Output gets ONLCR (each "\n" leaves as "\r\n"), so a terminal that
   `xl console` put in raw mode shows lines as a Linux tty would.
3. A reader with nothing to read sleeps on the tty's wait queue; a line
   wakes it (that wake-up is where the shell resumes).
"""

from collections.abc import Callable

from domains.xenolinux.task import WaitQueue
from domains.xenolinux.vfs import CharDevice

BACKSPACES = (b"\x7f", b"\x08")
CTRL_C, CTRL_D = b"\x03", b"\x04"
MAX_LINE = 4096


class Tty(CharDevice):
    name = "console"

    def __init__(self, console, on_interrupt: Callable[[], None] | None = None) -> None:
        self.console = console
        self.line = bytearray()
        self.ready: list[bytes] = []  # completed lines (b"" = end of file)
        self.readers = WaitQueue()
        self.on_interrupt = on_interrupt
        console.set_input(self.receive)

    def receive(self, data: bytes) -> None:
        echo = bytearray()
        for i in range(len(data)):
            self._key(data[i:i + 1], echo)
        if echo:
            self.console.write(bytes(echo))
        if self.ready:
            self.readers.wake_all()

    def _key(self, ch: bytes, echo: bytearray) -> None:
        if ch in (b"\r", b"\n"):
            echo += b"\r\n"
            self.ready.append(bytes(self.line) + b"\n")
            self.line.clear()
        elif ch in BACKSPACES:
            if self.line:
                self.line.pop()
                echo += b"\b \b"
        elif ch == CTRL_D and not self.line:
            self.ready.append(b"")
        elif ch == CTRL_C:
            self.line.clear()
            echo += b"^C\r\n"
            if self.on_interrupt is not None:
                self.on_interrupt()
        elif len(self.line) < MAX_LINE:
            self.line += ch
            echo += ch

    def read(self, n: int):
        while not self.ready:
            yield self.readers.wait()
        line = self.ready[0]
        if len(line) > n:
            self.ready[0] = line[n:]
            return line[:n]
        self.ready.pop(0)
        return line

    def write(self, data: bytes):
        self.console.write(data.replace(b"\n", b"\r\n"))
        return len(data)
        yield
