"""The xenstore wire format: header layout, framing, field helpers."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypervisor.public.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    XSD_HEADER_FORMAT,
    XSD_HEADER_SIZE,
    MessageParser,
    WireError,
    XsdSockmsgType,
    XsMsg,
    join_fields,
    pack_msg,
    split_fields,
)

u32 = st.integers(0, 0xFFFFFFFF)
messages = st.builds(
    XsMsg, st.integers(0, 30), u32, u32, st.binary(max_size=XENSTORE_PAYLOAD_MAX)
)


def _pack(msg: XsMsg) -> bytes:
    return pack_msg(msg.type, msg.req_id, msg.tx_id, msg.payload)


def test_format_sizes():
    assert struct.calcsize(XSD_HEADER_FORMAT) == XSD_HEADER_SIZE == 16


def test_pack_layout_is_little_endian_u32s():
    raw = pack_msg(XsdSockmsgType.READ, 7, 3, b"a\0")
    assert raw == struct.pack("<IIII", 2, 7, 3, 2) + b"a\0"


def test_pack_refuses_oversized_payload_and_bad_fields():
    with pytest.raises(WireError):
        pack_msg(2, 0, 0, b"x" * (XENSTORE_PAYLOAD_MAX + 1))
    with pytest.raises(WireError):
        pack_msg(2, -1, 0, b"")
    with pytest.raises(WireError):
        pack_msg(2, 0, 2**32, b"")


@given(st.lists(messages, max_size=5))
def test_whole_and_byte_at_a_time_agree(msgs):
    stream = b"".join(_pack(m) for m in msgs)
    whole = MessageParser().feed(stream)
    parser = MessageParser()
    trickle = [m for i in range(len(stream)) for m in parser.feed(stream[i : i + 1])]
    assert whole == trickle == msgs
    assert parser.buffered == 0


@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_arbitrary_split_points(msgs, data):
    stream = b"".join(_pack(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parser, got, start = MessageParser(), [], 0
    for cut in [*cuts, len(stream)]:
        got += parser.feed(stream[start:cut])
        start = cut
    assert got == msgs


def test_oversized_header_is_rejected_even_one_byte_at_a_time():
    header = struct.pack("<IIII", 2, 1, 0, XENSTORE_PAYLOAD_MAX + 1)
    parser = MessageParser()
    for byte in header[:-1]:
        assert parser.feed(bytes([byte])) == []
    with pytest.raises(WireError):
        parser.feed(header[-1:])
    with pytest.raises(WireError):  # the stream cannot be resynchronised
        parser.feed(b"")


def test_payload_max_itself_is_accepted():
    msg = XsMsg(11, 1, 0, b"x" * XENSTORE_PAYLOAD_MAX)
    assert MessageParser().feed(_pack(msg)) == [msg]


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_junk_raises_nothing_but_wire_error(chunks):
    parser = MessageParser()
    try:
        for chunk in chunks:
            for msg in parser.feed(chunk):
                assert len(msg.payload) <= XENSTORE_PAYLOAD_MAX
    except WireError:
        pass


def test_split_fields():
    assert split_fields(b"") == []
    assert split_fields(b"\0") == [b""]
    assert split_fields(b"a\0b\0") == [b"a", b"b"]
    assert split_fields(b"path\0value") == [b"path", b"value"]


def test_join_fields():
    assert join_fields("a", b"b") == b"a\0b\0"
    assert join_fields("p", b"v", terminate=False) == b"p\0v"
    assert join_fields() == b""
    assert join_fields("") == b"\0"


@given(st.lists(st.binary(max_size=8).filter(lambda b: b"\0" not in b), min_size=1))
def test_fields_round_trip(fields):
    assert split_fields(join_fields(*fields)) == fields
