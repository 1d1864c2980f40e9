"""The blkif ABI (hypervisor/public/blkif.py) against reference section 2.2."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypervisor.public import blkif
from hypervisor.public.blkif import (
    BlkifError,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
)
from hypervisor.public.ring import ring_size

U64 = 2**64 - 1


def test_format_sizes():
    assert struct.calcsize(blkif.BLKIF_SEGMENT_FORMAT) == 8
    assert struct.calcsize(blkif.BLKIF_REQUEST_HEADER_FORMAT) == 24
    assert struct.calcsize(blkif.BLKIF_REQUEST_FORMAT) == 112
    assert struct.calcsize(blkif.BLKIF_REQUEST_DISCARD_FORMAT) == 32
    assert struct.calcsize(blkif.BLKIF_REQUEST_INDIRECT_FORMAT) == 64
    assert struct.calcsize(blkif.BLKIF_RESPONSE_FORMAT) == 16
    assert blkif.BLKIF_ENTRY_SIZE == blkif.BLKIF_REQUEST_SIZE == 112
    assert ring_size(4096, blkif.BLKIF_ENTRY_SIZE) == 32


def test_constants_match_reference():
    ops = (blkif.BLKIF_OP_READ, blkif.BLKIF_OP_WRITE, blkif.BLKIF_OP_WRITE_BARRIER,
           blkif.BLKIF_OP_FLUSH_DISKCACHE, blkif.BLKIF_OP_RESERVED_1, blkif.BLKIF_OP_DISCARD,
           blkif.BLKIF_OP_INDIRECT)  # fmt: skip
    assert ops == (0, 1, 2, 3, 4, 5, 6)
    assert (blkif.BLKIF_RSP_OKAY, blkif.BLKIF_RSP_ERROR, blkif.BLKIF_RSP_EOPNOTSUPP) == (0, -1, -2)
    assert blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST == 11
    assert (blkif.SECTOR_SIZE, blkif.SECTORS_PER_PAGE) == (512, 8)
    assert (blkif.VDISK_CDROM, blkif.VDISK_REMOVABLE, blkif.VDISK_READONLY) == (1, 2, 4)
    assert blkif.BLKIF_DISCARD_SECURE == 1


def test_request_offsets():
    segs = tuple(BlkifSegment(0x1000 + i, i % 8, 7) for i in range(11))
    raw = BlkifRequest(1, 0x0102030405060708, 0x1122334455667788, 51712, 11, segs).pack()
    assert len(raw) == 112
    assert raw[0] == 1 and raw[1] == 11
    assert struct.unpack_from("<H", raw, 2)[0] == 51712
    assert raw[4:8] == bytes(4)  # pad
    assert struct.unpack_from("<Q", raw, 8)[0] == 0x0102030405060708
    assert struct.unpack_from("<Q", raw, 16)[0] == 0x1122334455667788
    for i in range(11):
        off = 24 + 8 * i
        assert struct.unpack_from("<IBB", raw, off) == (0x1000 + i, i % 8, 7)
        assert raw[off + 6 : off + 8] == bytes(2)


def test_discard_offsets_and_padding():
    req = BlkifRequest(blkif.BLKIF_OP_DISCARD, 9, 100, 51712, flag=1, nr_sectors=0xABCDEF)
    raw = req.pack()
    assert len(raw) == 112 and raw[32:] == bytes(80)
    assert (raw[0], raw[1]) == (blkif.BLKIF_OP_DISCARD, 1)
    assert struct.unpack_from("<HxxxxQQQ", raw, 2) == (51712, 9, 100, 0xABCDEF)


def test_response_offsets():
    raw = BlkifResponse(0xDEADBEEF, 3, blkif.BLKIF_RSP_ERROR).pack()
    assert len(raw) == 16
    assert struct.unpack_from("<Q", raw, 0)[0] == 0xDEADBEEF
    assert raw[8] == 3
    assert raw[10:12] == b"\xff\xff"  # s16 -1


def test_short_segment_list_is_zero_padded():
    raw = BlkifRequest(0, 1, 0, 0, 1, (BlkifSegment(5, 0, 7),)).pack()
    assert raw[32:] == bytes(80)


segments = st.builds(BlkifSegment, st.integers(0, 2**32 - 1), st.integers(0, 255),
                     st.integers(0, 255))  # fmt: skip
rw_requests = st.lists(segments, max_size=11).flatmap(
    lambda segs: st.builds(
        BlkifRequest,
        st.sampled_from([0, 1, 2, 3, 4, 6, 7, 255]),
        st.integers(0, U64),
        st.integers(0, U64),
        st.integers(0, 0xFFFF),
        st.just(len(segs)),
        st.just(tuple(segs)),
    )
)
discards = st.builds(
    BlkifRequest,
    st.just(blkif.BLKIF_OP_DISCARD),
    st.integers(0, U64),
    st.integers(0, U64),
    st.integers(0, 0xFFFF),
    flag=st.integers(0, 255),
    nr_sectors=st.integers(0, U64),
)


@given(rw_requests | discards)
def test_request_round_trip(req):
    raw = req.pack()
    assert len(raw) == blkif.BLKIF_ENTRY_SIZE
    assert BlkifRequest.unpack(raw) == req


@given(st.integers(0, U64), st.integers(0, 255), st.integers(-(2**15), 2**15 - 1))
def test_response_round_trip(id_, op, status):
    rsp = BlkifResponse(id_, op, status)
    assert BlkifResponse.unpack(rsp.pack()) == rsp


@given(st.binary(max_size=200))
def test_unpack_garbage_raises_only_blkif_error(raw):
    for decode in (BlkifRequest.unpack, BlkifResponse.unpack):
        try:
            decode(raw)
        except BlkifError:
            pass


@pytest.mark.parametrize("junk", [None, 5, "x" * 112, [0] * 112])
def test_unpack_non_bytes_is_blkif_error(junk):
    with pytest.raises(BlkifError):
        BlkifRequest.unpack(junk)
    with pytest.raises(BlkifError):
        BlkifResponse.unpack(junk)


def test_unpack_keeps_a_bogus_nr_segments_for_the_backend_to_judge():
    raw = bytearray(BlkifRequest(0, 1, 0, 0, 11, (BlkifSegment(1, 0, 7),) * 11).pack())
    raw[1] = 200
    req = BlkifRequest.unpack(bytes(raw))
    assert req.nr_segments == 200 and len(req.segments) == 11
    assert BlkifRequest.unpack(bytes(112)).segments == ()  # nr_segments 0


@pytest.mark.parametrize(
    "bad",
    [
        BlkifRequest(0, 1, nr_segments=12, segments=(BlkifSegment(1, 0, 7),) * 12),
        BlkifRequest(256, 1),
        BlkifRequest(0, -1),
        BlkifRequest(0, 1, sector_number=2**64),
        BlkifRequest(0, 1, nr_segments=1, segments=(BlkifSegment(2**32, 0, 7),)),
        BlkifRequest(blkif.BLKIF_OP_DISCARD, 1, nr_sectors=-1),
    ],
)
def test_pack_refuses_what_does_not_fit(bad):
    with pytest.raises(BlkifError):
        bad.pack()
    with pytest.raises(BlkifError):
        BlkifResponse(0, 0, 2**15).pack()


def test_segment_nr_sectors():
    assert BlkifSegment(1, 0, 7).nr_sectors == 8
    assert BlkifSegment(1, 3, 3).nr_sectors == 1
