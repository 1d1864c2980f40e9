"""Unit tests for the byte-stream rings (domains/kernel/bytering.py)."""

from __future__ import annotations

import mmap
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.kernel.bytering import (
    ByteStream,
    XenstoreControl,
    console_backend,
    console_guest,
    xenstore_guest,
    xenstore_server,
)
from domains.kernel.ring import RingError
from hypervisor.public import console, xs_wire

M = 0xFFFFFFFF
PAGE = 4096


def poke(buf, offset: int, value: int) -> None:
    """Test-only: the peer (or an attacker) stores an index."""
    struct.pack_into("<I", buf, offset, value & M)


def peek(buf, offset: int) -> int:
    return struct.unpack_from("<I", buf, offset)[0]


def small_stream(start: int = 0, size: int = 16):
    """A 16-byte ring at offset 8 with cons at 0 and prod at 4, both at ``start``."""
    buf = bytearray(8 + size + 8)
    poke(buf, 0, start)
    poke(buf, 4, start)
    return buf, ByteStream(buf, 8, size, 0, 4, peer="the peer")


# -- layout ---------------------------------------------------------------------


def test_xenstore_streams_use_the_xs_wire_offsets():
    page = bytearray(PAGE)
    guest, server = xenstore_guest(page), xenstore_server(page)
    assert guest.tx.size == guest.rx.size == xs_wire.XENSTORE_RING_SIZE
    assert guest.tx.write(b"ask") == 3
    assert page[xs_wire.REQ_OFFSET : xs_wire.REQ_OFFSET + 3] == b"ask"
    assert peek(page, xs_wire.REQ_PROD) == 3
    assert server.rx.read() == b"ask"
    assert peek(page, xs_wire.REQ_CONS) == 3
    assert server.tx.write(b"answer") == 6
    assert page[xs_wire.RSP_OFFSET : xs_wire.RSP_OFFSET + 6] == b"answer"
    assert peek(page, xs_wire.RSP_PROD) == 6
    assert guest.rx.read() == b"answer"
    assert peek(page, xs_wire.RSP_CONS) == 6


def test_console_streams_use_the_console_offsets():
    page = bytearray(PAGE)
    guest, backend = console_guest(page), console_backend(page)
    assert guest.tx.size == console.XENCONS_OUT_SIZE and guest.rx.size == console.XENCONS_IN_SIZE
    guest.tx.write(b"login: ")
    assert page[console.OUT_OFFSET : console.OUT_OFFSET + 7] == b"login: "
    assert peek(page, console.OUT_PROD) == 7
    assert backend.rx.read() == b"login: " and peek(page, console.OUT_CONS) == 7
    backend.tx.write(b"root\n")
    assert page[console.IN_OFFSET : console.IN_OFFSET + 5] == b"root\n"
    assert peek(page, console.IN_PROD) == 5
    assert guest.rx.read() == b"root\n" and peek(page, console.IN_CONS) == 5


def test_xenstore_control_words():
    page = bytearray(PAGE)
    ctl = XenstoreControl(page)
    ctl.server_features = xs_wire.XENSTORE_SERVER_FEATURE_RECONNECTION
    ctl.connection = xs_wire.XENSTORE_RECONNECT
    ctl.error = xs_wire.XENSTORE_ERROR_RINGIDX
    ctl.evtchn_port = 2**32 + 5  # masked to u32
    assert peek(page, xs_wire.SERVER_FEATURES) == 1
    assert peek(page, xs_wire.CONNECTION) == 1
    assert peek(page, xs_wire.ERROR) == 2
    assert peek(page, xs_wire.EVTCHN_PORT) == 5
    poke(page, xs_wire.CONNECTION, xs_wire.XENSTORE_CONNECTED)
    assert ctl.connection == 0 and ctl.error == 2 and ctl.server_features == 1
    ctl.release()


def test_bad_geometry_is_refused():
    buf = bytearray(64)
    with pytest.raises(ValueError, match="power of two"):
        ByteStream(buf, 0, 24, 32, 36)
    with pytest.raises(ValueError, match="aligned"):
        ByteStream(buf, 0, 16, 34, 40)
    with pytest.raises(ValueError, match="past the end"):
        ByteStream(buf, 56, 16, 0, 4)
    with pytest.raises(ValueError, match="writable"):
        ByteStream(bytes(64), 0, 16, 32, 36)


# -- producer and consumer -------------------------------------------------------


def test_write_accepts_only_what_fits():
    _, s = small_stream()
    assert s.writable() == 16 and s.readable() == 0
    assert s.write(b"x" * 20) == 16
    assert s.write(b"more") == 0 and s.writable() == 0
    assert s.read(5) == b"xxxxx"
    assert s.write(b"abcdefg") == 5
    assert s.readable() == 16
    assert s.read() == b"x" * 11 + b"abcde"
    assert s.read() == b"" and s.read(0) == b""


def test_read_returns_a_private_copy():
    buf, s = small_stream(start=2**32 - 3)
    s.write(b"hello")  # straddles the wrap of the array and of u32
    got = s.read()
    buf[8:24] = b"\xee" * 16
    assert type(got) is bytes and got == b"hello"


def test_discard_drops_everything_waiting():
    buf, s = small_stream(start=2**32 - 2)
    s.write(b"stale")
    assert s.discard() == 5
    assert s.readable() == 0 and peek(buf, 0) == 3


@settings(max_examples=300, deadline=None)
@given(
    start=st.one_of(st.integers(2**32 - 40, 2**32 - 1), st.integers(0, M)),
    data=st.binary(max_size=300),
    writes=st.lists(st.integers(1, 23), min_size=1, max_size=20),
    reads=st.lists(st.one_of(st.none(), st.integers(0, 23)), min_size=1, max_size=20),
)
def test_random_chunks_across_the_wrap_deliver_the_same_bytes(start, data, writes, reads):
    buf, s = small_stream(start)
    sent, received, turn = 0, bytearray(), 0
    while len(received) < len(data):
        chunk = writes[turn % len(writes)]
        sent += s.write(data[sent : sent + chunk])
        received += s.read(reads[turn % len(reads)])
        assert 0 <= s.readable() <= 16
        turn += 1
        if turn > 4 * len(writes) * len(reads):
            received += s.read()  # reads of 0 only: drain so we make progress
    assert bytes(received) == data
    assert peek(buf, 0) == peek(buf, 4) == (start + len(data)) & M


@settings(max_examples=100, deadline=None)
@given(message=st.binary(min_size=1, max_size=4000), start=st.integers(2**32 - 2048, M))
def test_xenstore_message_straddling_the_wrap(message, start):
    page = bytearray(PAGE)
    for off in (xs_wire.REQ_CONS, xs_wire.REQ_PROD):
        poke(page, off, start)
    guest, server = xenstore_guest(page), xenstore_server(page)
    sent, received = 0, bytearray()
    while len(received) < len(message):
        sent += guest.tx.write(message[sent:])
        received += server.rx.read(777)
    assert bytes(received) == message


# -- peers that lie --------------------------------------------------------------


@given(start=st.integers(0, M), lie=st.integers(17, M))
def test_consumer_refuses_a_prod_that_claims_too_much(start, lie):
    buf, s = small_stream(start)
    poke(buf, 4, start + lie)
    with pytest.raises(RingError, match="the peer broke check_indexes"):
        s.read()
    with pytest.raises(RingError):
        s.readable()
    assert peek(buf, 0) == start  # nothing consumed or published


@given(start=st.integers(0, M), ahead=st.integers(1, 2**32 - 17))
def test_producer_refuses_a_cons_ahead_of_prod(start, ahead):
    buf, s = small_stream(start)
    poke(buf, 0, start + ahead)  # consumer claims bytes never written
    with pytest.raises(RingError) as exc:
        s.write(b"data")
    assert exc.value.culprit == "the peer"
    assert peek(buf, 4) == start and buf[8:24] == bytes(16)


def test_named_constructors_blame_the_right_peer():
    page = bytearray(PAGE)
    poke(page, xs_wire.RSP_PROD, 5000)
    with pytest.raises(RingError, match="xenstored"):
        xenstore_guest(page).rx.read()
    poke(page, xs_wire.REQ_PROD, 5000)
    with pytest.raises(RingError, match="guest"):
        xenstore_server(page).rx.read()
    poke(page, console.OUT_PROD, 5000)
    with pytest.raises(RingError, match="guest"):
        console_backend(page).rx.read()


# -- real shared memory ----------------------------------------------------------


def test_console_over_one_mmap_seen_through_two_views():
    shm = mmap.mmap(-1, PAGE)
    guest = console_guest(memoryview(shm))
    backend = console_backend(memoryview(shm))
    text = bytes(range(256)) * 20  # 5120 bytes: wraps the 2048-byte out ring twice
    sent, seen = 0, bytearray()
    while len(seen) < len(text):
        sent += guest.tx.write(text[sent : sent + 1500])
        seen += backend.rx.read()
    assert bytes(seen) == text
    guest.release()
    backend.release()
    shm.close()  # raises BufferError if any view were still alive
