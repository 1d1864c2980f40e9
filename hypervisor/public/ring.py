"""Shared I/O rings (io/ring.h): the sring header and the size rule."""

import struct

# req_prod, req_event, rsp_prod, rsp_event, pvt, then 44 pad bytes.
SRING_HEADER_FORMAT = "<IIIII44x"
SRING_HEADER_SIZE = struct.calcsize(SRING_HEADER_FORMAT)  # 64
REQ_PROD, REQ_EVENT, RSP_PROD, RSP_EVENT = 0, 4, 8, 12
RING_IDX_MASK = 0xFFFFFFFF


def ring_size(total_bytes: int, entry_size: int) -> int:
    """Entries that fit after the header, rounded down to a power of two."""
    fit = (total_bytes - SRING_HEADER_SIZE) // entry_size
    if fit < 1:
        raise ValueError("ring area too small for one entry")
    return 1 << (fit.bit_length() - 1)
