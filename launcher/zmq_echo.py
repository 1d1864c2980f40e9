"""The baseline's far end: a plain process that echoes N ZeroMQ messages.

Run as ``python -m launcher.zmq_echo ENDPOINT N``; it prints "ready" once
bound and exits after N messages, or after 10 s of silence.
"""

import sys

import zmq


def main() -> int:
    endpoint, n = sys.argv[1], int(sys.argv[2])
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)  # never outlive a dead parent for long
    sock.bind(endpoint)
    print("ready", flush=True)
    try:
        for _ in range(n):
            sock.send_multipart(sock.recv_multipart())
    except zmq.Again:
        pass
    finally:
        sock.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
