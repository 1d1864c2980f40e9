"""By-hand benchmark (not a test): two guest stacks back to back moving 10 MiB.

    PYTHONPATH=$PWD python -m tests.unit.net_bench

Both stacks run in this one process, so the figure is for sender and receiver together;
between two guests each side has its own process.
"""

import time

from tests.unit.net_fakes import Pair, tcp_transfer

MIB = 1 << 20


def bench(label: str, size: int = 10 * MIB, **kw) -> float:
    p = Pair(**kw)
    t = time.perf_counter()
    tcp_transfer(p, size, 1_000_000)
    dt = time.perf_counter() - t
    mbit = size * 8 / dt / 1e6
    print(f"{label:45s} {mbit:6.0f} Mbit/s  ({len(p.deva.sent)} frames a->b)")
    return mbit


if __name__ == "__main__":
    bench("TSO on (64 KiB frames, gso_size = MSS)", gso_ok=True)
    bench("TSO frames cut by the link with gso.segment", gso_ok=True, cut_gso=True)
    bench("TSO off (MSS-sized segments)", gso_ok=False)
