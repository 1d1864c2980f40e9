"""Unit tests for the ring.h core (domains/kernel/ring.py)."""

from __future__ import annotations

import dataclasses
import mmap
import pickle
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.kernel.ring import BackRing, FrontRing, RingError, full_barrier
from hypervisor.public.ring import REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD, SRING_HEADER_SIZE

M = 0xFFFFFFFF
E = 16  # a small entry, so a tiny buffer holds a ring of 8
SMALL = SRING_HEADER_SIZE + 8 * E + 5  # the spare bytes must not grow the ring

# Starting points for the shared indices: 0, just below 2^32, and anywhere.
starts = st.one_of(
    st.just(0),
    st.integers(2**32 - 20, 2**32 - 1),
    st.integers(0, M),
)


def poke(buf, offset: int, value: int) -> None:
    """Test-only: the peer (or an attacker) stores a header field."""
    struct.pack_into("<I", buf, offset, value & M)


def peek(buf, offset: int) -> int:
    return struct.unpack_from("<I", buf, offset)[0]


def make_pair(start: int = 0, nbytes: int = SMALL, entry_size: int = E):
    """A front and a back ring over one buffer, all indices at ``start``."""
    buf = bytearray(nbytes)
    front = FrontRing(buf, entry_size)
    if start:
        for off, value in ((REQ_PROD, start), (RSP_PROD, start)):
            poke(buf, off, value)
        for off in (REQ_EVENT, RSP_EVENT):
            poke(buf, off, start + 1)
        front.attach(start, start)
    back = BackRing(buf, entry_size)
    back.attach(start, start)
    return buf, front, back


def req(n: int, size: int = E) -> bytes:
    return n.to_bytes(4, "little") * (size // 4)


# -- layout and initialisation ------------------------------------------------


@pytest.mark.parametrize(
    ("nbytes", "entry_size", "expected"),
    [(4096, 112, 32), (8192, 112, 64), (16384, 112, 128), (65536, 112, 512),
     (4096, 12, 256), (4096, 8, 256), (4096, 16, 128), (SMALL, E, 8)],
)  # fmt: skip
def test_ring_size_matches_xen(nbytes, entry_size, expected):
    assert FrontRing(bytearray(nbytes), entry_size).size == expected
    assert BackRing(bytearray(nbytes), entry_size).size == expected


def test_front_init_is_shared_ring_init():
    buf = bytearray(b"\xff" * 4096)
    FrontRing(buf, 112)
    assert buf[:16] == struct.pack("<IIII", 0, 1, 0, 1)
    assert buf[16:SRING_HEADER_SIZE] == bytes(48)  # pvt and __pad zeroed
    assert buf[SRING_HEADER_SIZE:] == b"\xff" * (4096 - SRING_HEADER_SIZE)  # slots untouched


def test_front_without_init_and_back_leave_the_page_alone():
    header = struct.pack("<IIIII", 5, 9, 3, 4, 0xABCD) + b"\xaa" * 44
    buf = bytearray(header + bytes(4096 - 64))
    front = FrontRing(buf, 112, init=False)
    back = BackRing(buf, 112)
    assert buf[:64] == header
    assert (front.req_prod_pvt, front.rsp_cons) == (0, 0)
    assert (back.rsp_prod_pvt, back.req_cons) == (0, 0)


def test_bad_buffers_are_refused():
    with pytest.raises(ValueError):
        FrontRing(bytes(4096), 112)  # read-only
    with pytest.raises(ValueError):
        BackRing(bytearray(SRING_HEADER_SIZE + 111), 112)  # not one entry
    with pytest.raises(ValueError):
        FrontRing(bytearray(4096), 0)


def test_indices_are_published_as_little_endian_u32_at_xen_offsets():
    buf, front, back = make_pair(start=2**32 - 1)
    front.put_request(req(1))
    front.push_requests()
    assert peek(buf, REQ_PROD) == 0  # wrapped
    back.take_requests()
    back.final_check_for_requests()
    assert peek(buf, REQ_EVENT) == 1
    back.put_response(req(2))
    back.push_responses()
    assert peek(buf, RSP_PROD) == 0
    front.take_responses()
    front.final_check_for_responses()
    assert peek(buf, RSP_EVENT) == 1


def test_statistics_is_a_frozen_snapshot():
    _, front, back = make_pair(start=7)
    front.put_request(req(1))
    stats = front.statistics()
    assert stats.size == 8 and stats.req_prod == 7 and stats.req_prod_pvt == 8
    assert stats.rsp_cons == 7 and stats.req_cons is None and not stats.halted
    assert back.statistics().req_cons == 7 and back.statistics().rsp_prod_pvt == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.req_prod = 1  # type: ignore[misc]


# -- round trips ---------------------------------------------------------------


def test_round_trip_in_order_through_one_buffer():
    _, front, back = make_pair()
    for i in range(5):
        front.put_request(req(i))
    assert front.free_requests() == 3 and not front.full()
    assert front.unconsumed_responses() == 0
    assert back.unconsumed_requests() == 0  # not pushed yet
    assert front.push_requests() is True
    assert back.unconsumed_requests() == 5
    assert back.get_request() == req(0)
    assert back.take_requests(max_n=2) == [req(1), req(2)]
    assert back.take_requests() == [req(3), req(4)]
    for i in range(5):
        back.put_response(req(100 + i))
    assert back.push_responses() is True
    assert front.get_response() == req(100)
    assert front.take_responses() == [req(100 + i) for i in range(1, 5)]
    assert front.free_requests() == 8 and front.outstanding_requests() == 0


def test_short_response_fills_a_prefix_of_the_union_slot():
    _, front, back = make_pair()
    front.put_request(req(7))
    front.push_requests()
    back.take_requests()
    back.put_response(b"\x01\x02")
    back.push_responses()
    assert front.get_response() == b"\x01\x02" + req(7)[2:]  # rest of the union as left


def test_local_misuse_raises_without_halting():
    _, front, back = make_pair()
    for i in range(8):
        front.put_request(req(i))
    assert front.full()
    with pytest.raises(RingError, match="RING_FULL") as exc:
        front.put_request(req(9))
    assert exc.value.culprit == "local"
    with pytest.raises(RingError):
        FrontRing(bytearray(SMALL), E).put_request(b"x" * (E + 1))
    with pytest.raises(RingError):
        FrontRing(bytearray(SMALL), E).put_request(b"")
    with pytest.raises(RingError, match="no unconsumed request"):
        back.get_request()
    with pytest.raises(RingError, match="no consumed request"):
        back.put_response(req(0))
    with pytest.raises(RingError, match="no unconsumed response"):
        front.get_response()
    assert front.error is None and back.error is None


def test_request_cons_overflow_uses_u32_arithmetic():
    _, _, back = make_pair()
    back.attach(rsp_prod_pvt=2**32 - 2, req_cons=2**32 - 2)
    assert not back.request_cons_overflow((2**32 - 2 + 7) & M)
    assert back.request_cons_overflow((2**32 - 2 + 8) & M)
    assert not back.request_cons_overflow(2**32 - 2)


# -- copy, then validate (XSA-155) --------------------------------------------


def test_copied_request_and_response_ignore_later_writes():
    buf, front, back = make_pair()
    front.put_request(req(1))
    front.push_requests()
    got = back.get_request()
    buf[SRING_HEADER_SIZE : SRING_HEADER_SIZE + E] = b"\xee" * E  # frontend rewrites
    assert type(got) is bytes and got == req(1)
    back.put_response(req(2))
    back.push_responses()
    rsp = front.get_response()
    buf[SRING_HEADER_SIZE : SRING_HEADER_SIZE + E] = b"\xdd" * E  # backend rewrites
    assert type(rsp) is bytes and rsp == req(2)


# -- notification suppression --------------------------------------------------


def test_notify_only_when_the_event_is_passed():
    _, front, back = make_pair()
    front.put_request(req(0))
    assert front.push_requests() is True  # req_event starts at 1
    front.put_request(req(1))
    assert front.push_requests() is False  # backend is busy; it will look
    assert front.push_requests() is False  # nothing new
    assert len(back.take_requests()) == 2
    assert back.final_check_for_requests() is False  # idle: arms req_event = 3
    front.put_request(req(2))
    assert front.push_requests() is True


def test_final_check_closes_the_race_with_a_stale_event():
    _, front, back = make_pair()
    front.put_request(req(0))
    front.push_requests()
    back.take_requests()
    # The backend has not re-armed yet; this push is suppressed...
    front.put_request(req(1))
    assert front.push_requests() is False
    # ...so its final check must find the request instead of going idle.
    assert back.final_check_for_requests() is True
    assert back.take_requests() == [req(1)]


def test_batching_with_set_rsp_event():
    _, front, back = make_pair(start=2**32 - 3)
    for i in range(8):
        front.put_request(req(i))
    front.push_requests()
    back.take_requests()
    front.set_rsp_event(front.rsp_cons + 4)  # wake me after four responses
    notified = []
    for i in range(8):
        back.put_response(req(i))
        notified.append(back.push_responses())
    assert notified == [False, False, False, True, False, False, False, False]


def test_batching_with_set_req_event():
    _, front, back = make_pair(start=2**32 - 2)
    back.set_req_event(back.req_cons + 3)
    notified = []
    for i in range(5):
        front.put_request(req(i))
        notified.append(front.push_requests())
    assert notified == [False, False, True, False, False]


def test_full_barrier_is_callable():
    full_barrier()


# -- peers that lie ------------------------------------------------------------


@given(start=starts, lie=st.integers(9, 2**32 - 1))
def test_lying_frontend_halts_the_backend(start, lie):
    buf, front, back = make_pair(start)
    poke(buf, REQ_PROD, start + lie)  # claims more than a ring outstanding
    assert back.unconsumed_requests() <= back.size  # the min() bounds the lie
    with pytest.raises(RingError, match="Frontend provided bogus ring requests") as exc:
        back.take_requests()
    assert exc.value.culprit == "frontend" and exc.value.rule == "RING_REQUEST_PROD_OVERFLOW"
    assert back.req_cons == start and back.statistics().halted
    poke(buf, REQ_PROD, start)  # even an honest value now: blkback stays halted
    with pytest.raises(RingError, match="halted"):
        back.get_request()


@given(start=starts, taken=st.integers(2, 8), back_by=st.integers(1, 7))
def test_frontend_moving_req_prod_backwards_is_caught(start, taken, back_by):
    buf, front, back = make_pair(start)
    for i in range(taken):
        front.put_request(req(i))
    front.push_requests()
    assert len(back.take_requests()) == taken
    poke(buf, REQ_PROD, start + taken - min(back_by, taken - 1))
    with pytest.raises(RingError) as exc:
        back.take_requests()
    assert exc.value.culprit == "frontend"


@given(start=starts, lie=st.integers(9, 2**32 - 1))
def test_lying_backend_halts_the_frontend(start, lie):
    buf, front, back = make_pair(start)
    for i in range(8):
        front.put_request(req(i))
    front.push_requests()
    poke(buf, RSP_PROD, start + lie)
    with pytest.raises(RingError, match="RING_RESPONSE_PROD_OVERFLOW") as exc:
        front.unconsumed_responses()
    assert exc.value.culprit == "backend"
    poke(buf, RSP_PROD, start)
    with pytest.raises(RingError, match="halted"):
        front.take_responses()
    assert front.rsp_cons == start and front.statistics().halted


def test_backend_answering_requests_never_made_is_caught():
    buf, front, _ = make_pair(start=2**32 - 1)
    front.put_request(req(0))
    front.push_requests()
    poke(buf, RSP_PROD, 2**32 - 1 + 2)  # two responses to one request
    with pytest.raises(RingError, match="never made"):
        front.get_response()


def test_ring_error_survives_pickle():
    err = RingError("backend", "RING_RESPONSE_PROD_OVERFLOW", "rsp_prod=99")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.culprit == "backend"


# -- random operation sequences across 2^32 ----------------------------------


class Model:
    """What a correct pair must deliver, and when it must notify."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.requests: list[bytes] = []  # put, in order
        self.responses: list[bytes] = []
        self.req_pushed = self.req_taken = 0
        self.rsp_pushed = self.rsp_got = 0
        self.back_armed = self.front_armed = True  # events start at start + 1
        self.serial = 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "push", "take", "respond", "push_rsp", "get", "fin_b", "fin_f"]),
        st.integers(1, 10),
    ),
    max_size=80,
)


def step(op: str, k: int, m: Model, front: FrontRing, back: BackRing) -> None:
    if op == "put":
        for _ in range(min(k, front.free_requests())):
            m.serial += 1
            m.requests.append(req(m.serial))
            front.put_request(m.requests[-1])
    elif op == "push":
        new = len(m.requests) > m.req_pushed
        assert front.push_requests() == (m.back_armed and new)
        m.back_armed &= not new
        m.req_pushed = len(m.requests)
    elif op == "take":
        got = back.take_requests(max_n=k)
        assert got == m.requests[m.req_taken : min(m.req_pushed, m.req_taken + k)]
        m.req_taken += len(got)
    elif op == "respond":
        for _ in range(min(k, m.req_taken - len(m.responses))):
            m.responses.append(b"R" + m.requests[len(m.responses)][1:])
            back.put_response(m.responses[-1])
    elif op == "push_rsp":
        new = len(m.responses) > m.rsp_pushed
        assert back.push_responses() == (m.front_armed and new)
        m.front_armed &= not new
        m.rsp_pushed = len(m.responses)
    elif op == "get":
        got = front.take_responses(max_n=k)
        assert got == m.responses[m.rsp_got : min(m.rsp_pushed, m.rsp_got + k)]
        m.rsp_got += len(got)
    elif op == "fin_b":
        more = back.final_check_for_requests()
        assert more == (m.req_pushed > m.req_taken)
        m.back_armed |= not more
    else:
        more = front.final_check_for_responses()
        assert more == (m.rsp_pushed > m.rsp_got)
        m.front_armed |= not more


def check_invariants(m: Model, front: FrontRing, back: BackRing) -> None:
    size = front.size
    assert 0 <= front.free_requests() <= size
    assert front.outstanding_requests() == len(m.requests) - m.rsp_got
    assert back.unconsumed_requests() == m.req_pushed - m.req_taken
    assert front.unconsumed_responses() == m.rsp_pushed - m.rsp_got
    stats = back.statistics()
    assert stats.req_cons == (m.start + m.req_taken) & M
    assert stats.rsp_prod == (m.start + m.rsp_pushed) & M
    assert stats.req_prod == (m.start + m.req_pushed) & M


@settings(max_examples=300, deadline=None)
@given(start=starts, script=ops)
def test_random_sequences_deliver_everything_in_order(start, script):
    _, front, back = make_pair(start)
    m = Model(start)
    for op, k in script:
        step(op, k, m, front, back)
        check_invariants(m, front, back)
    assert front.error is None and back.error is None


# -- real shared memory ----------------------------------------------------------


def test_two_views_of_one_mmap_interoperate():
    shm = mmap.mmap(-1, 4096)
    front = FrontRing(memoryview(shm), 112)
    back = BackRing(memoryview(shm), 112)
    front.attach(2**32 - 16, 2**32 - 16)
    back.attach(2**32 - 16, 2**32 - 16)
    poke(shm, REQ_PROD, 2**32 - 16)
    poke(shm, RSP_PROD, 2**32 - 16)
    for round_ in range(3):
        for i in range(front.size):
            front.put_request(req(round_ * 100 + i, 112))
        front.push_requests()
        got = back.take_requests()
        assert got == [req(round_ * 100 + i, 112) for i in range(32)]
        for r in got:
            back.put_response(r[:16])
        back.push_responses()
        assert [r[:16] for r in front.take_responses()] == [g[:16] for g in got]
    assert peek(shm, REQ_PROD) == (2**32 - 16 + 96) & M
    front.release()
    back.release()
    shm.close()  # raises BufferError if any view were still alive
