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


def test_mmu_formats_and_geometry():
    from hypervisor.public import mmu
    from hypervisor.public.xen import Hypercall

    assert (Hypercall.mmu_update, Hypercall.mmuext_op) == (1, 26)
    assert struct.calcsize(mmu.MMU_UPDATE_FORMAT) == mmu.MMU_UPDATE_SIZE == 16
    assert struct.calcsize(mmu.MMUEXT_OP_FORMAT) == mmu.MMUEXT_OP_SIZE == 24  # x86_64
    assert (mmu.L1_PAGETABLE_ENTRIES, mmu.L2_PAGETABLE_ENTRIES, mmu.PTE_SIZE) == (1024, 1024, 4)
    assert (mmu.L2_FIRST_XEN_SLOT, mmu.MAX_MFN) == (1008, 2**20)  # Xen's top 64 MB
    va = 0xC080_1234
    assert (mmu.l2_table_offset(va), mmu.l1_table_offset(va), va & 0xFFF) == (0x302, 1, 0x234)
    reqs, ops = [(0x1234_5000, 0xABCDE067)], [(mmu.MMUEXT_PIN_L2_TABLE, 0x12345, 0)]
    assert mmu.unpack_mmu_updates(mmu.pack_mmu_updates(reqs)) == reqs
    assert mmu.unpack_mmuext_ops(mmu.pack_mmuext_ops(ops)) == ops
    with pytest.raises(ValueError):
        mmu.unpack_mmu_updates(b"\0" * 15)
