"""Plain processes for the benches' baselines: ZeroMQ with nothing on top.

Roles (``python -m launcher.zmq_peers ROLE ENDPOINT [N]``):
- echo ENDPOINT N: a ROUTER that sends N frames back (the 2-hop round trip
  every bench reports beside its own).
- relay ENDPOINT / peer ENDPOINT: the floor of the event channel's 4 hops.
  The bench times FRONT -> relay -> peer -> relay -> FRONT, where the relay
  forwards frames like the hypervisor's ROUTER and the peer answers each one
  like the echo guest, with nothing else done on the way; the gap between
  that and `bench evtchn` is the model's own work (hypercall dispatch,
  shared_info, the guests' event loops).

The echo and the relay bind and print "ready" (the relay once the peer has
said hello, so nothing is forwarded to a peer the ROUTER does not know yet).
Every role exits when done, on b"quit", or after 10 s of silence.
"""

import sys

import zmq

FRONT, PEER = b"front", b"peer"  # routing ids: the bench's DEALER and the peer
QUIT = b"quit"


def echo(sock: zmq.Socket, endpoint: str, n: int) -> None:
    sock.bind(endpoint)
    print("ready", flush=True)
    for _ in range(n):
        sock.send_multipart(sock.recv_multipart())


def relay(sock: zmq.Socket, endpoint: str) -> None:
    sock.bind(endpoint)
    while sock.recv_multipart()[0] != PEER:
        pass
    print("ready", flush=True)
    while True:
        ident, frame = sock.recv_multipart()
        if frame == QUIT:
            sock.send_multipart([PEER, QUIT])
            return
        sock.send_multipart([PEER if ident == FRONT else FRONT, frame])


def peer(sock: zmq.Socket, endpoint: str) -> None:
    sock.setsockopt(zmq.ROUTING_ID, PEER)
    sock.connect(endpoint)
    sock.send(b"hello")  # the relay learns our routing id
    while (frame := sock.recv()) != QUIT:
        sock.send(frame)


def main() -> int:
    role, endpoint = sys.argv[1], sys.argv[2]
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.DEALER if role == "peer" else zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)  # never outlive a dead bench for long
    try:
        if role == "echo":
            echo(sock, endpoint, int(sys.argv[3]))
        elif role == "relay":
            relay(sock, endpoint)
        else:
            peer(sock, endpoint)
    except zmq.Again:
        pass
    finally:
        sock.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
