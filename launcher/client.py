"""Talking to a host's toolstack from the command line (xl -> libxl).

A request that Domain-0 was handling when it died is lost with it. Real xl
would hang or fail; here the client notices the restart (the Domain-0
process it was talking to is gone, or is younger than the request) and
sends a read-only request again to the new toolstack, or says in one line
that a changing one may not have been done.
"""

import os
import time

import msgpack
import psutil
import zmq

from hypervisor.public.endpoints import toolstack_endpoint
from launcher import rundir
from launcher.rundir import HostError

DEFAULT_TIMEOUT_S = 15.0
SLICE_S = 0.5  # how often a waiting client looks whether Domain-0 is still there
READ_ONLY = frozenset({"list", "info", "dmesg", "console_read", "wait_booted", "block_list",
                       "network_list", "wait_gone", "xs_read", "xs_wait", "xs_ls",
                       "phys_info"})


def started_at(proc: psutil.Process) -> float:
    """When the process started, on CLOCK_MONOTONIC (psutil's create_time is
    wall-clock from a whole-second boot time: too coarse to order events)."""
    with open(f"/proc/{proc.pid}/stat") as f:
        ticks = int(f.read().rpartition(")")[2].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def dom0_process(host: str) -> psutil.Process | None:
    prefix = f"xenolab[{host}]: Domain-0 (domid 0,"
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"]
        if cmd and cmd[0].startswith(prefix):
            return p
    return None


def _started_before(proc: psutil.Process, t: float) -> bool:
    """Surely started before t: the start time is counted in clock ticks, and
    a Domain-0 restarted within the tick of a send must count as new."""
    try:
        return started_at(proc) + 1 / os.sysconf("SC_CLK_TCK") < t
    except (OSError, ValueError, IndexError):
        return False  # gone


class ToolstackClient:
    def __init__(self, host: str, check_running: bool = True) -> None:
        if check_running and rundir.running(host) is None:
            raise HostError(f"no running host '{host}' (start one with: xenolab up --host {host})")
        self.host = host
        self.ctx = zmq.Context.instance()
        self.sock = self._connect()
        self.next_id = 0

    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(toolstack_endpoint(self.host))
        return sock

    def call(self, op: str, timeout_s: float = DEFAULT_TIMEOUT_S, **args):
        self.next_id += 1
        rid = self.next_id
        request = msgpack.packb({"op": op, "args": args, "id": rid})
        deadline = time.monotonic() + timeout_s
        self.sock.send(request)
        sent, dom0 = time.monotonic(), None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HostError(f"host '{self.host}' did not answer '{op}' in {timeout_s:.0f} s")
            if self.sock.poll(int(min(SLICE_S, left) * 1000)):
                reply = msgpack.unpackb(self.sock.recv(), raw=False)
                if reply.get("id", rid) == rid:
                    break
                continue  # the answer to a request we gave up on or sent twice
            dom0 = dom0 or dom0_process(self.host)
            if dom0 is None:
                continue  # between two Domain-0s
            if dom0.is_running() and _started_before(dom0, sent):
                continue  # the Domain-0 that has our request is still busy with it
            if op not in READ_ONLY:
                raise HostError(f"Domain-0 restarted while handling '{op}'; it may not have "
                                f"been done: check with 'xenolab xl list'")
            if not dom0.is_running():
                dom0 = None  # wait for the new one, then ask it again
                continue
            # A new Domain-0 that never saw it. A new connection: the old one
            # may still hold what the dead Domain-0's session left behind.
            self.sock.close(0)
            self.sock = self._connect()
            self.sock.send(request)
            sent = time.monotonic()
        if not reply.get("ok"):
            raise HostError(reply.get("error", "unknown error"))
        return reply.get("result")

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
