"""The floor of a 4-hop round trip: plain processes, no Xen in between.

`xenolab bench evtchn` times A -> R -> B -> R -> A, where R forwards frames
like the hypervisor's ROUTER and B answers each one like the echo guest,
with nothing else done on the way. The event channel's round trip crosses
the same four ZeroMQ hops, so the gap between the two is the model's own
work (hypercall dispatch, shared_info, the guests' event loops).

Run as ``python -m launcher.zmq_chain relay|peer ENDPOINT``; the relay binds
and prints "ready" once the peer has said hello (so no frame is forwarded
to a peer the ROUTER does not know yet); both exit on b"quit" or after 10 s
of silence.
"""

import sys

import zmq

FRONT, PEER = b"front", b"peer"  # routing ids: the bench's DEALER and the peer
QUIT = b"quit"


def relay(sock: zmq.Socket) -> None:
    while True:
        ident, frame = sock.recv_multipart()
        if frame == QUIT:
            sock.send_multipart([PEER, QUIT])
            return
        sock.send_multipart([PEER if ident == FRONT else FRONT, frame])


def peer(sock: zmq.Socket) -> None:
    sock.send(b"hello")  # the relay learns our routing id
    while (frame := sock.recv()) != QUIT:
        sock.send(frame)


def main() -> int:
    role, endpoint = sys.argv[1], sys.argv[2]
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.ROUTER if role == "relay" else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)  # never outlive a dead bench for long
    try:
        if role == "relay":
            sock.bind(endpoint)
            while sock.recv_multipart()[0] != PEER:
                pass
            print("ready", flush=True)
            relay(sock)
        else:
            sock.setsockopt(zmq.ROUTING_ID, PEER)
            sock.connect(endpoint)
            peer(sock)
    except zmq.Again:
        pass
    finally:
        sock.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
