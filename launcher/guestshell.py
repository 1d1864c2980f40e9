"""Driving a guest's shell through its console, as a user at `xl console`.

Commands are typed into the console's in[] ring through xenconsoled (the
toolstack's console_write), and the console log is read back with the
long-polling console_read until the command has finished: each command is
followed by `echo <marker>`, whose output appears after the next prompt.
"""

import itertools
import re
import time

from launcher.rundir import HostError

PROMPT_RE = re.compile(r"^(/\S* # )+")  # sh's prompt(s) at the start of a line


class GuestShell:
    def __init__(self, host, dom: str, timeout: float = 30.0) -> None:
        self.h, self.dom, self.timeout = host, dom, timeout
        self.offset, self.seq = 0, itertools.count()
        self.wait_for("# ")  # the first prompt: init ran sh

    def wait_for(self, marker: str, since: int | None = None, regex: bool = False) -> str:
        """Console output from `since` (default: where we stopped) to `marker`."""
        seen, deadline = "", time.monotonic() + self.timeout
        offset = self.offset if since is None else since
        found = (lambda: re.search(marker, seen)) if regex else (lambda: marker in seen)
        while not found():
            left = deadline - time.monotonic()
            if left <= 0:
                raise HostError(f"{self.dom}: no {marker!r} on the console; got {seen[-300:]!r}")
            got = self.h.xl("console_read", dom=self.dom, offset=offset,
                            wait_ms=int(min(left, 1.0) * 1000))
            # the tty's ONLCR "\r\n" read as "\n", as a terminal shows it
            text = got["data"].decode(errors="replace").replace("\r", "")
            seen, offset = seen + text, got["offset"]
            if got.get("gone"):
                raise HostError(f"{self.dom} is gone; its console said {seen[-300:]!r}")
        self.offset = offset
        return seen

    def type(self, text: str) -> None:
        self.h.xl("console_write", dom=self.dom, data=text.encode())

    def run(self, command: str) -> str:
        """What `command` printed (its lines, without the typed echo and prompt)."""
        done = f"__done_{next(self.seq)}__"
        start = self.offset
        self.type(f"{command}\necho {done}\n")
        # the marker echo's output, not its typed echo (which follows "echo ")
        out = self.wait_for(f"(?<!echo ){done}\n", since=start, regex=True)
        out = out.replace("\r", "")
        out = out[:re.search(f"(?<!echo ){done}", out).start()]
        lines = [x[len(PROMPT_RE.match(x).group(0)):] if PROMPT_RE.match(x) else x
                 for x in out.split("\n")]
        return "\n".join(x for x in lines if x not in (command, f"echo {done}", "")).strip("\n")
