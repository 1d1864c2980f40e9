"""`xl console DOM`: attach the terminal to a guest's PV console.

Output is long-polled from xenconsoled; keystrokes go to the console's in[]
ring as soon as they are typed (both are waited for at once). Ctrl-]
detaches, as in xl; the command also ends when the domain goes away.
"""

import os
import sys
import termios
import tty

import msgpack
import zmq

from launcher.client import ToolstackClient
from launcher.rundir import HostError

CTRL_RBRACKET = b"\x1d"
POLL_MS = 1000


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
    try:
        return _loop(reader, writer, dom, offset, fd, out)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        reader.close()
        writer.close()


def _loop(reader, writer, dom: str, offset: int, fd: int, out) -> int:
    poller = zmq.Poller()
    poller.register(reader.sock, zmq.POLLIN)
    poller.register(fd, zmq.POLLIN)
    _ask(reader, dom, offset)
    while True:
        for sock, _ in poller.poll():
            if sock is reader.sock:
                got = _answer(reader)
                out.write(got["data"])
                out.flush()
                if got.get("gone"):
                    return 0
                offset = got["offset"]
                _ask(reader, dom, offset)
                continue
            keys = os.read(fd, 1024)
            if not keys:
                poller.unregister(fd)  # stdin closed: keep showing output
                continue
            typed, detach = keys.split(CTRL_RBRACKET, 1)[0], CTRL_RBRACKET in keys
            if typed:
                writer.call("console_write", dom=dom, data=typed.replace(b"\r", b"\n"))
            if detach:
                return 0


def _ask(reader: ToolstackClient, dom: str, offset: int) -> None:
    reader.sock.send(msgpack.packb({"op": "console_read", "args": {
        "dom": dom, "offset": offset, "wait_ms": POLL_MS}}))


def _answer(reader: ToolstackClient) -> dict:
    reply = msgpack.unpackb(reader.sock.recv(), raw=False)
    if not reply.get("ok"):
        raise HostError(reply.get("error", "console error"))
    return reply["result"]
