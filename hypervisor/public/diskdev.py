"""The disk controller's hardware interface (the model's "datasheet").

Shared by the device process (devices/disk.py) and Domain-0's physical
driver (domains/dom0/drivers/disk.py), like a controller's register spec.

Rules:
1. Who owns which page. The driver owns every page: it allocates the queue
   pair (a ring.h ring over DISK_RING_PAGES contiguous Dom0 frames) and one
   info page, names them by bus frame number (bfn; Dom0's own frames are
   identity-mapped, bfn == pfn), and sends "init" over MMIO. The device
   maps nothing else of Dom0's except the frames a command names.
2. The queue pair is a ring.h ring: the driver is the FrontRing (writes
   req_prod, rsp_event), the device the BackRing (writes rsp_prod,
   req_event). Only the driver initialises the ring, before "init".
3. Doorbells and interrupts are ring notifications. The driver rings the
   doorbell ({"op": "kick"}) only when push_requests() says so, because the
   device arms req_event like blkback; the device raises its IRQ only when
   push_responses() says so. Both ends batch and then FINAL_CHECK.
4. Info page: the device writes every field, then the magic last (one
   aligned 4-byte store), then raises its IRQ. The driver zeroes the page
   before "init" and trusts no field until the magic is there.
5. A command names memory by bus address: each segment is a bfn plus an
   inclusive sector range first_sect..last_sect (512-byte units within the
   4 KiB frame), as blkif's segments do with grant references. The device
   checks every segment with the IOMMU before it touches any byte; a
   refused command completes with DiskStatus.dma_fault.
6. Ordering. The device executes commands in ring order. FLUSH completes
   only after every write put before it is on stable storage (fdatasync of
   the image), and never before their completions; a WRITE with
   DISK_FLAG_FUA completes only once its own data is. So a preflush and its
   write may go back to back in one batch. Completions otherwise come in
   any order (the id says which).
7. MMIO messages are msgpack maps on a PUSH to the device's mmio_endpoint;
   `decode_mmio` validates one and raises DiskDevError on anything else.
"""

import enum
import struct

from hypervisor.public.platform import decode_op, encode_op, int_field
from hypervisor.public.xen import PAGE_SIZE

SECTOR_SHIFT = 9
SECTOR_SIZE = 1 << SECTOR_SHIFT
SECTORS_PER_PAGE = PAGE_SIZE // SECTOR_SIZE  # 8: first_sect/last_sect lie in 0..7

# ---- commands and completions (ring slots) --------------------------------

# opcode u8, flags u8, nr_segments u8, pad, nr_sectors u32, id u64, sector u64
CMD_HEADER_FORMAT = "<BBBxIQQ"
CMD_HEADER_SIZE = struct.calcsize(CMD_HEADER_FORMAT)  # 24
# bfn u32, first_sect u8, last_sect u8, pad (blkif_request_segment with a bfn)
SEG_FORMAT = "<IBB2x"
SEG_SIZE = struct.calcsize(SEG_FORMAT)  # 8
CMD_SIZE = 128  # one ring slot
DISK_MAX_SEGMENTS = (CMD_SIZE - CMD_HEADER_SIZE) // SEG_SIZE  # 13 (blkif needs 11)
# id u64, opcode u8, pad, status s16, pad (blkif_response's layout)
CPL_FORMAT = "<QBxh4x"
CPL_SIZE = struct.calcsize(CPL_FORMAT)  # 16

DISK_RING_PAGES = 8  # default queue pair: 8 pages -> 128 slots
DISK_MAX_RING_PAGES = 64
DISK_MAX_BFN = 0xFFFFFFFF


class DiskOp(enum.IntEnum):
    """Opcodes (NVMe's NVM command set numbers)."""

    flush = 0x00
    write = 0x01
    read = 0x02
    discard = 0x09  # Dataset Management / deallocate


DISK_FLAG_FUA = 1 << 0  # force unit access: durable before completion
DISK_FLAGS_ALL = DISK_FLAG_FUA


class DiskStatus(enum.IntEnum):
    """Completion status; ok and the blkif-like codes come first."""

    ok = 0
    error = -1  # media error (EIO), like BLKIF_RSP_ERROR
    unsupported = -2  # opcode or flag not offered, like BLKIF_RSP_EOPNOTSUPP
    invalid = -3  # malformed command (segments, flags, counts)
    range = -4  # sectors beyond the capacity
    dma_fault = -5  # the IOMMU refused a segment; no byte was touched


# ---- info page ---------------------------------------------------------------

DISK_INFO_MAGIC = 0x4B534458  # b"XDSK" as a little-endian u32
DISK_INFO_VERSION = 1
# magic u32, version u16, sector_size u16, capacity_sectors u64, features u32,
# max_segments u16, queue_slots u16, max_discard_sectors u32, init_status s32,
# model 40s, serial 20s, firmware 8s (ATA IDENTIFY string widths), pad
INFO_FORMAT = "<IHHQIHHIi40s20s8s28x"
INFO_SIZE = struct.calcsize(INFO_FORMAT)  # 128
INFO_FIELDS = ("magic", "version", "sector_size", "capacity_sectors", "features",
               "max_segments", "queue_slots", "max_discard_sectors", "init_status",
               "model", "serial", "firmware")


class DiskFeature(enum.IntFlag):
    flush = 1 << 0
    fua = 1 << 1
    discard = 1 << 2


class InitStatus(enum.IntEnum):
    ok = 0
    bad_ring = -1  # ring frames not contiguous Dom0 memory, or a bad size
    bad_info = -2


# ---- MMIO --------------------------------------------------------------------

MMIO_OPS = ("init", "kick", "fault", "latency")
FAULT_MODES = ("none", "eio", "hang", "die")


class DiskDevError(ValueError):
    """A malformed MMIO write or command layout."""


def pack_command(op: int, id_: int, sector: int, segments: list[tuple[int, int, int]],
                 flags: int = 0, nr_sectors: int | None = None) -> bytes:
    """A command slot (header plus used segments; the slot's tail is unused)."""
    if len(segments) > DISK_MAX_SEGMENTS:
        raise DiskDevError(f"{len(segments)} segments > {DISK_MAX_SEGMENTS}")
    if nr_sectors is None:
        nr_sectors = sum(last - first + 1 for _, first, last in segments)
    head = struct.pack(CMD_HEADER_FORMAT, op, flags, len(segments), nr_sectors, id_, sector)
    return head + b"".join(struct.pack(SEG_FORMAT, *s) for s in segments)


def unpack_command_header(raw: bytes) -> tuple[int, int, int, int, int, int]:
    """(op, flags, nr_segments, nr_sectors, id, sector) of a slot copy."""
    return struct.unpack_from(CMD_HEADER_FORMAT, raw)


def unpack_segments(raw: bytes, n: int) -> list[tuple[int, int, int]]:
    """The first n (bfn, first_sect, last_sect) of a slot copy."""
    return [struct.unpack_from(SEG_FORMAT, raw, CMD_HEADER_SIZE + i * SEG_SIZE)
            for i in range(n)]


def pack_completion(id_: int, op: int, status: int) -> bytes:
    return struct.pack(CPL_FORMAT, id_, op & 0xFF, status)


def unpack_completion(raw: bytes) -> tuple[int, int, int]:
    """(id, op, status)."""
    return struct.unpack_from(CPL_FORMAT, raw)


def pack_info(capacity_sectors: int, features: int, queue_slots: int, model: str,
              serial: str, firmware: str, init_status: int = 0,
              max_discard_sectors: int = 0) -> bytes:
    """The info page with magic 0: the device stores the magic last (rule 4)."""
    return struct.pack(INFO_FORMAT, 0, DISK_INFO_VERSION, SECTOR_SIZE, capacity_sectors,
                       features, DISK_MAX_SEGMENTS, queue_slots, max_discard_sectors,
                       init_status, model.encode()[:40], serial.encode()[:20],
                       firmware.encode()[:8])


def unpack_info(raw: bytes) -> dict:
    info = dict(zip(INFO_FIELDS, struct.unpack_from(INFO_FORMAT, raw), strict=True))
    for key in ("model", "serial", "firmware"):
        info[key] = info[key].rstrip(b"\0 ").decode(errors="replace")
    return info


# ---- MMIO codec ----------------------------------------------------------------

encode_mmio = encode_op


def _int_field(msg: dict, key: str, lo: int, hi: int) -> int:
    return int_field(msg, key, lo, hi, DiskDevError)


def _check_fault(msg: dict) -> None:
    if msg.get("mode") not in FAULT_MODES:
        raise DiskDevError(f"fault: mode must be one of {', '.join(FAULT_MODES)}")
    rate = msg.setdefault("rate", 0)
    if type(rate) not in (int, float) or not 0 <= rate <= 1:
        raise DiskDevError("fault: rate must be within 0..1")


def decode_mmio(frame: bytes) -> dict:
    """One validated MMIO write: {"op", ...fields}; DiskDevError otherwise."""
    msg = decode_op(frame, MMIO_OPS, DiskDevError, "not an MMIO write of this device")
    if msg["op"] == "init":
        _int_field(msg, "ring_bfn", 0, DISK_MAX_BFN)
        _int_field(msg, "ring_pages", 1, DISK_MAX_RING_PAGES)
        _int_field(msg, "info_bfn", 0, DISK_MAX_BFN)
    elif msg["op"] == "fault":
        _check_fault(msg)
    elif msg["op"] == "latency" and not isinstance(msg.get("spec"), str):
        raise DiskDevError("latency: spec must be a string")
    return msg
