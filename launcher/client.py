"""Talking to a host's toolstack from the command line (xl -> libxl)."""

import msgpack
import zmq

from hypervisor.public.endpoints import toolstack_endpoint
from launcher import rundir
from launcher.rundir import HostError

DEFAULT_TIMEOUT_S = 15.0


class ToolstackClient:
    def __init__(self, host: str, check_running: bool = True) -> None:
        if check_running and rundir.running(host) is None:
            raise HostError(f"no running host '{host}' (start one with: xenolab up --host {host})")
        self.host = host
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(toolstack_endpoint(host))

    def call(self, op: str, timeout_s: float = DEFAULT_TIMEOUT_S, **args):
        self.sock.send(msgpack.packb({"op": op, "args": args}))
        if not self.sock.poll(int(timeout_s * 1000)):
            raise HostError(f"host '{self.host}' did not answer '{op}' in {timeout_s:.0f} s")
        reply = msgpack.unpackb(self.sock.recv(), raw=False)
        if not reply.get("ok"):
            raise HostError(reply.get("error", "unknown error"))
        return reply.get("result")

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
