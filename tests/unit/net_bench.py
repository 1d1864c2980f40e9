"""By-hand benchmark (not a test): two guest stacks back to back moving 10 MiB.

    PYTHONPATH=$PWD python -m tests.unit.net_bench

Both stacks run in this one process, so the figure is for sender and receiver together;
between two guests each side has its own process.
"""

import os
import time

from domains.xenolinux.net import SOCK_STREAM
from tests.unit.net_fakes import Pair

MIB = 1 << 20


def bench(label: str, size: int = 10 * MIB, **kw) -> float:
    p = Pair(**kw)
    srv = p.b.socket(SOCK_STREAM)
    srv.bind(("0.0.0.0", 80))
    srv.listen(1)
    c = p.a.socket(SOCK_STREAM)
    c.connect(("10.0.0.12", 80))
    p.run_until(srv.readable)
    s = srv.accept()
    data = os.urandom(size)
    sent, got = 0, bytearray()

    def done() -> bool:
        nonlocal sent
        if sent < len(data):
            sent += c.send(data[sent : sent + MIB])
        while r := s.recv(MIB):
            got.extend(r)
        return len(got) == len(data)

    t = time.perf_counter()
    p.run_until(done, 1_000_000)
    dt = time.perf_counter() - t
    assert got == data
    mbit = len(data) * 8 / dt / 1e6
    print(f"{label:45s} {mbit:6.0f} Mbit/s  ({len(p.deva.sent)} frames a->b)")
    return mbit


if __name__ == "__main__":
    bench("TSO on (64 KiB frames, gso_size = MSS)", gso_ok=True)
    bench("TSO frames cut by the link with gso.segment", gso_ok=True, cut_gso=True)
    bench("TSO off (MSS-sized segments)", gso_ok=False)
