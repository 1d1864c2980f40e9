"""Block interface (io/blkif.h): operations, status codes and ring entry layouts.

Rules (xen-interfaces.md section 2):

1. One ring slot is a union of a request and a response. Requests are 112
   bytes on x86_64 (the largest member, ``blkif_request``), responses 16; a
   one-page ring therefore holds 32 entries.
2. The frontend writes requests, the backend writes responses; ``id`` is
   opaque to the backend and echoed back. Sectors are always 512-byte units,
   and a segment names sectors ``first_sect..last_sect`` (inclusive) of one
   4 KiB granted frame.
3. These codecs only lay out bytes. ``BlkifRequest.unpack`` decodes whatever a
   (possibly hostile) frontend wrote and raises nothing but ``BlkifError``;
   it does not check that the operation is known or that segments make sense.
   Validation is the backend's job, on its private copy of the slot (XSA-155).
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass

from hypervisor.public.xen import PAGE_SIZE

BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_RESERVED_1 = 4
BLKIF_OP_DISCARD = 5
BLKIF_OP_INDIRECT = 6

BLKIF_OP_NAMES = {
    BLKIF_OP_READ: "read",
    BLKIF_OP_WRITE: "write",
    BLKIF_OP_WRITE_BARRIER: "write_barrier",
    BLKIF_OP_FLUSH_DISKCACHE: "flush_diskcache",
    BLKIF_OP_RESERVED_1: "reserved_1",
    BLKIF_OP_DISCARD: "discard",
    BLKIF_OP_INDIRECT: "indirect",
}

BLKIF_DISCARD_SECURE = 1 << 0  # discard 'flag' bit 0

BLKIF_RSP_OKAY = 0
BLKIF_RSP_ERROR = -1
BLKIF_RSP_EOPNOTSUPP = -2

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
SECTOR_SHIFT = 9
SECTOR_SIZE = 1 << SECTOR_SHIFT  # 512, even when the backend's sector-size is larger
SECTORS_PER_PAGE = PAGE_SIZE // SECTOR_SIZE  # 8: first_sect/last_sect lie in 0..7

# Bits of the backend's 'info' key.
VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4

# blkif_request_segment: gref u32 @0, first_sect u8 @4, last_sect u8 @5, pad 2.
BLKIF_SEGMENT_FORMAT = "<IBB2x"
BLKIF_SEGMENT_SIZE = struct.calcsize(BLKIF_SEGMENT_FORMAT)  # 8
# operation u8 @0, nr_segments u8 @1, handle u16 @2, pad 4, id u64 @8, sector_number u64 @16.
BLKIF_REQUEST_HEADER_FORMAT = "<BBH4xQQ"
BLKIF_REQUEST_HEADER_SIZE = struct.calcsize(BLKIF_REQUEST_HEADER_FORMAT)  # 24
BLKIF_REQUEST_FORMAT = BLKIF_REQUEST_HEADER_FORMAT + "IBB2x" * BLKIF_MAX_SEGMENTS_PER_REQUEST
BLKIF_REQUEST_SIZE = struct.calcsize(BLKIF_REQUEST_FORMAT)  # 112
# blkif_request_discard: operation @0, flag @1, handle @2, id @8, sector_number @16,
# nr_sectors u64 @24.
BLKIF_REQUEST_DISCARD_FORMAT = "<BBH4xQQQ"
BLKIF_REQUEST_DISCARD_SIZE = struct.calcsize(BLKIF_REQUEST_DISCARD_FORMAT)  # 32
# blkif_request_indirect: operation @0, indirect_op @1, nr_segments u16 @2, id @8,
# sector_number @16, handle u16 @24, indirect_grefs[8] @28, tail pad to 8-byte alignment.
BLKIF_REQUEST_INDIRECT_FORMAT = "<BBH4xQQH2x8I4x"
BLKIF_REQUEST_INDIRECT_SIZE = struct.calcsize(BLKIF_REQUEST_INDIRECT_FORMAT)  # 64
# blkif_response: id u64 @0, operation u8 @8, pad 1, status s16 @10, tail pad to 16.
BLKIF_RESPONSE_FORMAT = "<QBxh4x"
BLKIF_RESPONSE_SIZE = struct.calcsize(BLKIF_RESPONSE_FORMAT)  # 16

BLKIF_ENTRY_SIZE = 112  # sizeof(union blkif_sring_entry)

_REQUEST = struct.Struct(BLKIF_REQUEST_FORMAT)
_DISCARD = struct.Struct(BLKIF_REQUEST_DISCARD_FORMAT)
_RESPONSE = struct.Struct(BLKIF_RESPONSE_FORMAT)
_NO_SEGMENT = (0, 0, 0)


class BlkifError(ValueError):
    """Bytes or values that cannot be laid out as a blkif entry."""


@dataclass(frozen=True, slots=True)
class BlkifSegment:
    """One 4 KiB granted frame and the sectors of it (inclusive) the request uses."""

    gref: int
    first_sect: int
    last_sect: int

    @property
    def nr_sectors(self) -> int:
        return self.last_sect - self.first_sect + 1


@dataclass(frozen=True, slots=True)
class BlkifRequest:
    """``blkif_request``, or ``blkif_request_discard`` when operation is DISCARD.

    ``nr_segments`` is kept as written, even when it disagrees with
    ``segments`` (at most 11 are decoded); the backend judges it. For DISCARD,
    ``flag`` and ``nr_sectors`` are used and the segment fields are not.
    """

    operation: int
    id: int
    sector_number: int = 0
    handle: int = 0
    nr_segments: int = 0
    segments: tuple[BlkifSegment, ...] = ()
    flag: int = 0
    nr_sectors: int = 0

    def pack(self) -> bytes:
        """The full 112-byte slot image (zeros past the member in use)."""
        try:
            if self.operation == BLKIF_OP_DISCARD:
                return self._pack_discard()
            return self._pack_rw()
        except struct.error as exc:
            raise BlkifError(f"cannot pack {self!r}: {exc}") from None

    def _pack_rw(self) -> bytes:
        segs = self.segments
        if len(segs) > BLKIF_MAX_SEGMENTS_PER_REQUEST:
            raise BlkifError(f"{len(segs)} segments do not fit one request")
        flat = [f for s in segs for f in (s.gref, s.first_sect, s.last_sect)]
        flat += _NO_SEGMENT * (BLKIF_MAX_SEGMENTS_PER_REQUEST - len(segs))
        head = (self.operation, self.nr_segments, self.handle, self.id, self.sector_number)
        return _REQUEST.pack(*head, *flat)

    def _pack_discard(self) -> bytes:
        raw = _DISCARD.pack(
            self.operation, self.flag, self.handle, self.id, self.sector_number, self.nr_sectors
        )
        return raw + bytes(BLKIF_ENTRY_SIZE - len(raw))

    @classmethod
    def unpack(cls, raw: bytes) -> BlkifRequest:
        """Decode a private copy of a slot; only ``BlkifError`` escapes."""
        try:
            operation = raw[0]
            if operation == BLKIF_OP_DISCARD:
                return cls._unpack_discard(raw)
            return cls._unpack_rw(raw)
        except (struct.error, TypeError, IndexError) as exc:
            raise BlkifError(f"not a blkif request: {exc}") from None

    @classmethod
    def _unpack_rw(cls, raw: bytes) -> BlkifRequest:
        fields = _REQUEST.unpack_from(raw)
        operation, nr_segments, handle, id_, sector = fields[:5]
        count = min(nr_segments, BLKIF_MAX_SEGMENTS_PER_REQUEST)
        segs = tuple(BlkifSegment(*fields[5 + 3 * i : 8 + 3 * i]) for i in range(count))
        return cls(operation, id_, sector, handle, nr_segments, segs)

    @classmethod
    def _unpack_discard(cls, raw: bytes) -> BlkifRequest:
        operation, flag, handle, id_, sector, nr_sectors = _DISCARD.unpack_from(raw)
        return cls(operation, id_, sector, handle, flag=flag, nr_sectors=nr_sectors)


@dataclass(frozen=True, slots=True)
class BlkifResponse:
    """``blkif_response``: the request's ``id`` and ``operation``, and a BLKIF_RSP_* status."""

    id: int
    operation: int
    status: int

    def pack(self) -> bytes:
        try:
            return _RESPONSE.pack(self.id, self.operation, self.status)
        except struct.error as exc:
            raise BlkifError(f"cannot pack {self!r}: {exc}") from None

    @classmethod
    def unpack(cls, raw: bytes) -> BlkifResponse:
        """Decode a private copy of a slot; only ``BlkifError`` escapes."""
        try:
            return cls(*_RESPONSE.unpack_from(raw))
        except (struct.error, TypeError) as exc:
            raise BlkifError(f"not a blkif response: {exc}") from None


_VDEV_RE = re.compile(r"(xvd|hd|sd)([a-z]+)([0-9]*)")


def vdev_devid(vdev: str) -> int:
    """The Xen virtual-device number of `vdev` (xen-vbd-interface(7)): xvda is
    51712. ValueError for a name that is not a disk or cannot be numbered."""
    m = _VDEV_RE.fullmatch(vdev)
    if m is None:
        raise ValueError(f"vdev {vdev!r} is not a disk name like xvda, hda or sda")
    disk = functools.reduce(lambda n, c: n * 26 + ord(c) - ord("a") + 1, m[2], 0) - 1
    part = int(m[3] or 0)
    if m[1] == "xvd" and disk < 16 and part < 16:
        return 202 << 8 | disk << 4 | part
    if m[1] == "xvd" and disk < 1 << 20 and part < 256:
        return 1 << 28 | disk << 8 | part  # the extended scheme for big numbers
    if m[1] == "sd" and disk < 16 and part < 16:
        return 8 << 8 | disk << 4 | part
    if m[1] == "hd" and disk < 4 and part < 64:
        return (3 if disk < 2 else 22) << 8 | (disk % 2) << 6 | part
    raise ValueError(f"vdev {vdev!r} is beyond what Xen can number")
