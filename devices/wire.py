"""The wire: a hub joining the NICs of xenolab hosts on one machine.

Every NIC whose host config names the same wire (`wire = "lab0"`) is on one
Ethernet segment: a frame one NIC sends reaches every other NIC on it
(a hub: no learning, no filtering; each NIC is promiscuous).

Design (why ZeroMQ over an abstract ipc address, elected hub):
1. The wire's address is a Linux abstract-namespace socket,
   `ipc://@xenolab-<uid>/wire/<name>`, like every other socket of the
   project (hypervisor.public.endpoints): an abstract socket has no file,
   so nothing is left behind when a host is shut down or killed, and
   nothing needs a port number (TCP on 127.0.0.1 would need a rendezvous
   for the port and could clash with the machine's own services).
2. Binding an abstract address is exclusive (EADDRINUSE), so the bind is
   the election: the first port on the wire that binds it runs the hub (a
   ROUTER in its own loop); the others fail and retry every HUB_RETRY_NS.
   If the hub's host dies, its address is free at once (the kernel drops
   an abstract socket with its last fd) and the next retry elects another.
3. Every port, the hub's own included, connects a DEALER to the address
   and says hello (an empty message) on connect (ZMQ_PROBE_ROUTER) and
   every HELLO_NS after, so a newly elected hub learns every port quickly.
   The hub forwards each frame to every port it knows except the sender;
   a port that is gone is forgotten (ROUTER_MANDATORY: EHOSTUNREACH).
4. Frames that meet a full queue are dropped, as on a congested segment:
   nothing blocks a NIC.
5. While no hub is elected, ZeroMQ holds a port's frames until the new
   hub comes up (at most SNDHWM of them): a short outage delays frames,
   the fault model (devices.wirefaults) is where loss is made on purpose.
Test code may use WirePort directly as a peer on a wire.
"""

import errno
import os
import re

import zmq

HUB_RETRY_NS = 300_000_000
HELLO_NS = 500_000_000
SNDHWM = 4096
WIRE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def wire_endpoint(name: str) -> str:
    if not WIRE_RE.match(name):
        raise ValueError(f"bad wire name {name!r} (letters, digits, '.', '_', '-')")
    return f"ipc://@xenolab-{os.getuid()}/wire/{name}"


class WireHub:
    """The elected forwarder (rule 3), polled by its owner's loop."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.peers: set[bytes] = set()
        self.forwarded = self.lost = 0

    def on_readable(self) -> None:
        while True:
            try:
                ident, frame = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            self.peers.add(ident)
            if frame:
                self._forward(ident, frame)

    def _forward(self, sender: bytes, frame: bytes) -> None:
        for peer in list(self.peers):
            if peer == sender:
                continue
            try:
                self.sock.send_multipart([peer, frame], zmq.NOBLOCK)
                self.forwarded += 1
            except zmq.Again:
                self.lost += 1  # rule 4
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                self.peers.discard(peer)

    def close(self) -> None:
        self.sock.close(0)


class WirePort:
    """One NIC's attachment to a wire: send, receive, and hub duty (rule 2)."""

    def __init__(self, ctx: zmq.Context, name: str) -> None:
        self.ctx, self.name, self.endpoint = ctx, name, wire_endpoint(name)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.PROBE_ROUTER, 1)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.sock.setsockopt(zmq.RCVHWM, SNDHWM)
        self.sock.connect(self.endpoint)
        self.hub: WireHub | None = None
        self.next_elect_ns = 0
        self.next_hello_ns = 0
        self.sent = self.received = self.lost = 0

    def tick(self, now_ns: int) -> None:
        """Timers: try to become the hub, say hello (rules 2, 3)."""
        if self.hub is None and now_ns >= self.next_elect_ns:
            self.next_elect_ns = now_ns + HUB_RETRY_NS
            self._try_hub()
        if now_ns >= self.next_hello_ns:
            self.next_hello_ns = now_ns + HELLO_NS
            self._send(b"")

    def next_deadline(self) -> int:
        return min(self.next_hello_ns, self.next_elect_ns if self.hub is None else 1 << 62)

    def _try_hub(self) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            if exc.errno != errno.EADDRINUSE:
                raise
            return
        self.hub = WireHub(sock)

    def send(self, frame: bytes) -> None:
        if frame and self._send(frame):
            self.sent += 1

    def _send(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.lost += 1  # rule 4
            return False

    def recv_all(self) -> list[bytes]:
        frames = []
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame:
                frames.append(frame)
        self.received += len(frames)
        return frames

    def sockets(self) -> list[zmq.Socket]:
        """What the owner's loop polls for input (the hub's socket may appear later)."""
        return [self.sock] + ([self.hub.sock] if self.hub is not None else [])

    def close(self) -> None:
        if self.hub is not None:
            self.hub.close()
            self.hub = None
        self.sock.close(0)
