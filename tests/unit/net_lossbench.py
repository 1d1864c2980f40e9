"""By-hand benchmark (not a test): 10 MiB between two guest stacks over a timed lossy path.

    PYTHONPATH=$PWD python -m tests.unit.net_lossbench [MiB]

The link of net_fakes cuts TSO frames into MSS-sized frames (gso.segment, as the bridge and
NIC do), then drops, duplicates and reorders each one; it has a one-way delay and a rate.
"sim" is the time on the path's clock (what the transfer would take if the CPU were free),
"cpu" the Python time both stacks spent; on a real host the two roughly add up.
"""

import sys
import time

from tests.unit.net_fakes import Pair, tcp_transfer

MIB = 1 << 20
MS = 1_000_000


def run(label: str, size: int, **kw) -> None:
    p = Pair(gso_ok=True, cut_gso=True, rate_bps=200_000_000, **kw)
    t0, w0 = p.clock.t, time.perf_counter()
    c = tcp_transfer(p, size, 10_000_000)
    sim, cpu = (p.clock.t - t0) / 1e9, time.perf_counter() - w0
    tcb = c.tcb
    print(
        f"{label:34s} sim {sim:6.2f} s  cpu {cpu:5.2f} s  timeouts {tcb.timeouts:4d}  "
        f"fast rexmits {tcb.fast_retransmits:5d}  dropped {p.link.dropped}"
    )


if __name__ == "__main__":
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    size = mib * MIB
    run("clean, RTT 10 ms", size, delay_ns=5 * MS)
    run("5% drop, RTT 10 ms", size, delay_ns=5 * MS, loss=0.05)
    for rtt in (10, 20):
        run(
            f"5% drop+dup+reorder, RTT {rtt} ms",
            size,
            delay_ns=rtt // 2 * MS,
            loss=0.05,
            dup=0.05,
            reorder=0.05,
        )
