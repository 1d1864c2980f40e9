"""`xl console DOM`: attach the terminal to a guest's PV console.

Output is long-polled from xenconsoled; keystrokes go to the console's in[]
ring. Ctrl-] detaches, as in xl.
"""

import os
import select
import sys
import termios
import tty

from launcher.client import ToolstackClient

CTRL_RBRACKET = b"\x1d"
POLL_MS = 250


def attach(host: str, dom: str, out=None) -> int:
    out = out or sys.stdout.buffer
    reader, writer = ToolstackClient(host), ToolstackClient(host)
    first = reader.call("console_read", dom=dom, offset=0)
    dom = str(first["domid"])  # follow this domain, not a later one of the same name
    offset = max(0, first["offset"] - 2048)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        tty.setraw(fd)
    stdin_open = True
    try:
        while True:
            got = reader.call("console_read", dom=dom, offset=offset, wait_ms=POLL_MS)
            out.write(got["data"])
            out.flush()
            offset = got["offset"]
            if got.get("gone"):
                return 0
            if stdin_open:
                stdin_open = _forward_keys(writer, dom, fd)
                if stdin_open is None:
                    return 0
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        reader.close()
        writer.close()


def _forward_keys(writer: ToolstackClient, dom: str, fd: int):
    """Send what was typed; False once stdin is closed, None on Ctrl-]."""
    if not select.select([fd], [], [], 0)[0]:
        return True
    data = os.read(fd, 1024)
    if not data:
        return False
    if CTRL_RBRACKET in data:
        data = data.split(CTRL_RBRACKET, 1)[0]
        if data:
            writer.call("console_write", dom=dom, data=data)
        return None
    writer.call("console_write", dom=dom, data=data.replace(b"\r", b"\n"))
    return True
