"""Reassembly: overlapping, duplicated, reordered segments around the 2**32 wrap come out
as the original stream; sequence comparisons wrap."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from domains.xenolinux.net.tcpbuf import MOD, RecvBuffer, SendBuffer, seq_diff, seq_le, seq_lt


def test_sequence_comparisons_wrap():
    assert seq_lt(MOD - 1, 0) and seq_lt(MOD - 10, 5) and not seq_lt(5, MOD - 10)
    assert seq_le(7, 7) and seq_diff(3, MOD - 2) == 5 and seq_diff(MOD - 2, 3) == -5


@settings(max_examples=200, deadline=None)
@given(st.integers(0, MOD - 1), st.integers(1, 20_000), st.integers(0, 2**32))
def test_reassembly_yields_the_stream(isn, size, seed):
    rng = random.Random(seed)
    stream = rng.randbytes(size)
    segs = []
    for _ in range(rng.randint(1, 60)):
        a = rng.randrange(size)
        segs.append((a, stream[a : a + rng.randint(1, 3000)]))
    off = 0
    while off < size:  # make sure every byte is covered at least once
        n = rng.randint(1, 2000)
        segs.append((off, stream[off : off + n]))
        off += n
    rng.shuffle(segs)
    buf, rcv_nxt = RecvBuffer(1 << 20), isn
    for off, data in segs:
        seq = (isn + off) % MOD
        skip = seq_diff(rcv_nxt, seq)  # what Tcb._data does before insert
        if skip >= len(data):
            continue
        if skip > 0:
            data, seq = data[skip:], rcv_nxt
        rcv_nxt = buf.insert(rcv_nxt, seq, data)
    assert buf.read(size + 1) == stream
    assert rcv_nxt == (isn + size) % MOD and not buf.ooo and buf.ooo_bytes == 0


def test_send_buffer_capacity():
    b = SendBuffer(10)
    assert b.write(b"x" * 15) == 10 and b.space() == 0 and b.write(b"y") == 0
    assert b.peek(2, 3) == b"xxx"
    b.drop(4)
    assert len(b) == 6 and b.write(b"z" * 5) == 4
