"""ABI layouts match reference/xen-interfaces.md (STYLE.md 7), and the codecs."""

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypervisor.public import console, envelope, event_channel, grant_table, ring, xs_wire
from hypervisor.public.start_info import START_INFO_FORMAT, StartInfo


def test_format_sizes():
    assert struct.calcsize(grant_table.GRANT_ENTRY_V1_FORMAT) == 8
    assert grant_table.GRANT_ENTRIES_PER_FRAME == 512
    assert struct.calcsize(ring.SRING_HEADER_FORMAT) == 64
    assert struct.calcsize(xs_wire.XSD_HEADER_FORMAT) == 16
    assert struct.calcsize(START_INFO_FORMAT) == 1168
    assert event_channel.SHARED_INFO_SIZE == 3136
    assert (console.IN_CONS, console.OUT_PROD) == (3072, 3084)
    assert (xs_wire.REQ_CONS, xs_wire.RSP_PROD, xs_wire.EVTCHN_PORT) == (2048, 2060, 2076)


@pytest.mark.parametrize("entry,pages,size", [(112, 1, 32), (112, 2, 64), (112, 16, 512),
                                              (12, 1, 256), (8, 1, 256), (16, 1, 128)])
def test_ring_sizes_match_reference(entry, pages, size):
    assert ring.ring_size(pages * 4096, entry) == size


def test_start_info_round_trip():
    si = StartInfo(8192, 0, 2, 5, 1, 6, "role=ping count=3")
    assert StartInfo.unpack(si.pack()) == si
    with pytest.raises(ValueError):
        StartInfo.unpack(b"\0" * 1168)


@given(st.integers(0, 2**31), st.integers(0, 2**16), st.integers(0, 2**16),
       st.none() | st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**64 - 1)))
def test_request_round_trip(seq, hc, cmd, args):
    req = envelope.decode_request(envelope.encode_request(seq, hc, cmd, args))
    assert (req.seq, req.hypercall, req.cmd, req.args) == (seq, hc, cmd, args)


@given(st.binary(max_size=100))
def test_garbage_never_decodes_to_anything_but_envelope_error(frame):
    try:
        envelope.decode_request(frame)
    except envelope.EnvelopeError:
        pass


def test_wrong_version_and_shapes_are_refused():
    for bad in ([2, 1, 1, 1, None], [1, "x", 1, 1, None], [1, True, 1, 1, None], {"a": 1}):
        with pytest.raises(envelope.EnvelopeError):
            envelope.decode_request(msgpack.packb(bad))
    assert envelope.decode_from_xen(envelope.UPCALL_FRAME)[0] == envelope.UPCALL
    assert envelope.decode_from_xen(envelope.encode_reply(3, -22)) == (envelope.REPLY, 3, -22,
                                                                       None)
