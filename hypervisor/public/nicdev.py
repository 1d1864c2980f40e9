"""The Ethernet controller's hardware interface (the model's NIC "datasheet").

Shared by the device process (devices/nic.py) and Domain-0's physical
driver (domains/dom0/drivers/nic.py), like diskdev for the disk.

Rules:
1. Who owns which page. The driver owns every page: a TX ring and an RX
   ring (each a ring.h ring over contiguous Dom0 frames), one info page and
   the packet buffers. It names them by bus frame number (bfn; Dom0's own
   frames are identity-mapped) and sends "init" over MMIO. The device
   touches nothing else, and every buffer only through the IOMMU.
2. Both rings are ring.h rings: the driver is the FrontRing, the device the
   BackRing. A TX request names a frame to send (up to NIC_MAX_TX_SEGS
   scatter-gather segments); its response says it was sent (the buffers are
   the driver's again). An RX request posts one empty buffer; its response
   says how many bytes of one received frame the device wrote there.
3. Doorbell and interrupt. One doorbell ({"op": "kick"}) runs both rings;
   the driver rings it only when push_requests() of either ring says so
   (the device arms req_event when it goes idle on TX or runs out of RX
   buffers). One IRQ line for both rings, raised at most once per batch of
   the device's work and only if push_responses() says so: interrupt
   coalescing comes from ring.h's event suppression plus batching.
4. Info page: the device writes every field, then the magic last (one
   aligned 4-byte store), then raises its IRQ. The driver zeroes the page
   before "init" and trusts no field until the magic is there. Two status
   words after it are live (a link status register): `link_changes` counts
   the "wire" writes the device has applied and `link_flags` says what is
   in force (LINK_PARTITIONED, LINK_FAULTY); each is one aligned 4-byte
   store, so the driver can tell when a setting took effect.
5. Copy, then validate. A TX request is checked whole (segment count, each
   segment inside its frame, the frame's length) and every segment through
   the IOMMU before any byte is read; a refused one completes with
   NicStatus.invalid or NicStatus.dma_fault and nothing goes on the wire.
   An RX buffer the IOMMU refuses (or too small for the frame) comes back
   with an error status and length 0; the frame is dropped and counted.
6. Frames are Ethernet without FCS, at most NIC_MAX_FRAME bytes (no TSO:
   the bridge segments GSO frames before they reach the NIC's driver). The
   device is promiscuous: every frame from its medium goes to the driver.
7. MMIO messages are msgpack maps on a PUSH to the device's mmio_endpoint;
   `decode_mmio` validates one and raises NicDevError on anything else.
   "wire" sets the link's fault model (devices.wirefaults) at run time.
"""

import enum
import struct

from hypervisor.public.platform import decode_op, encode_op, int_field
from hypervisor.public.xen import PAGE_SIZE

ETH_HLEN = 14
NIC_MTU = 1500
NIC_MAX_FRAME = ETH_HLEN + 4 + NIC_MTU  # 1518: room for one 802.1Q tag
NIC_MAX_BFN = 0xFFFFFFFF

# ---- TX ring slots ----------------------------------------------------------

# id u32, nr_segs u8, flags u8, total_len u16
TX_HEADER_FORMAT = "<IBBH"
TX_HEADER_SIZE = struct.calcsize(TX_HEADER_FORMAT)  # 8
# bfn u32, offset u16, len u16
TX_SEG_FORMAT = "<IHH"
TX_SEG_SIZE = struct.calcsize(TX_SEG_FORMAT)  # 8
TX_SLOT_SIZE = 64
NIC_MAX_TX_SEGS = (TX_SLOT_SIZE - TX_HEADER_SIZE) // TX_SEG_SIZE  # 7
# id u32, status s16, pad
TX_RSP_FORMAT = "<Ih2x"
TX_RSP_SIZE = struct.calcsize(TX_RSP_FORMAT)  # 8

# ---- RX ring slots ----------------------------------------------------------

# id u32, bfn u32, offset u16, len u16, pad
RX_REQ_FORMAT = "<IIHH4x"
RX_REQ_SIZE = struct.calcsize(RX_REQ_FORMAT)  # 16
# id u32, status s16, len u16, flags u16, pad
RX_RSP_FORMAT = "<IhHH6x"
RX_RSP_SIZE = struct.calcsize(RX_RSP_FORMAT)  # 16
RX_SLOT_SIZE = 16

NIC_TX_RING_PAGES = 4  # 128 slots of 64 bytes
NIC_RX_RING_PAGES = 1  # 128 slots of 16 bytes
NIC_MAX_RING_PAGES = 16


class NicStatus(enum.IntEnum):
    ok = 0
    error = -1  # the medium refused it
    invalid = -3  # malformed descriptor (segments, lengths)
    dma_fault = -5  # the IOMMU refused a segment or buffer; no byte was touched
    too_small = -6  # RX: the frame did not fit the posted buffer


# ---- info page ----------------------------------------------------------------

NIC_INFO_MAGIC = 0x43494E58  # b"XNIC" as a little-endian u32
NIC_INFO_VERSION = 1
# magic u32, version u16, mtu u16, max_frame u16, tx_slots u16, rx_slots u16,
# max_tx_segs u16, features u32, init_status s32, mac 6s, pad, model 40s,
# link_changes u32, link_flags u32 (live, rule 4), pad
INFO_FORMAT = "<IHHHHHHIi6s2x40sII48x"
INFO_SIZE = struct.calcsize(INFO_FORMAT)  # 128
INFO_FIELDS = ("magic", "version", "mtu", "max_frame", "tx_slots", "rx_slots",
               "max_tx_segs", "features", "init_status", "mac", "model", "link_changes",
               "link_flags")
LINK_CHANGES_WORD = 72 // 4  # u32 index of link_changes in the page
LINK_FLAGS_WORD = LINK_CHANGES_WORD + 1
LINK_PARTITIONED = 1 << 0
LINK_FAULTY = 1 << 1  # drop, dup, reorder or delay in force


class NicFeature(enum.IntFlag):
    sg = 1 << 0  # scatter-gather TX
    wire = 1 << 1  # connected to a xenolab wire
    tap = 1 << 2  # connected to a Linux TAP interface


class InitStatus(enum.IntEnum):
    ok = 0
    bad_ring = -1
    bad_info = -2


# ---- MMIO ------------------------------------------------------------------------

MMIO_OPS = ("init", "kick", "wire")
WIRE_RATES = ("drop", "dup", "reorder")
WIRE_MAX_DELAY_MS = 10_000


class NicDevError(ValueError):
    """A malformed MMIO write or descriptor."""


def pack_tx(id_: int, segments: list[tuple[int, int, int]], flags: int = 0,
            total_len: int | None = None) -> bytes:
    """A TX slot; segments are (bfn, offset, len)."""
    if len(segments) > NIC_MAX_TX_SEGS:
        raise NicDevError(f"{len(segments)} segments > {NIC_MAX_TX_SEGS}")
    if total_len is None:
        total_len = sum(n for _, _, n in segments)
    head = struct.pack(TX_HEADER_FORMAT, id_, len(segments), flags, total_len & 0xFFFF)
    return head + b"".join(struct.pack(TX_SEG_FORMAT, *s) for s in segments)


def unpack_tx_header(raw: bytes) -> tuple[int, int, int, int]:
    """(id, nr_segs, flags, total_len) of a slot copy."""
    return struct.unpack_from(TX_HEADER_FORMAT, raw)


def unpack_tx_segments(raw: bytes, n: int) -> list[tuple[int, int, int]]:
    return [struct.unpack_from(TX_SEG_FORMAT, raw, TX_HEADER_SIZE + i * TX_SEG_SIZE)
            for i in range(n)]


def pack_tx_rsp(id_: int, status: int) -> bytes:
    return struct.pack(TX_RSP_FORMAT, id_, status)


def unpack_tx_rsp(raw: bytes) -> tuple[int, int]:
    """(id, status)."""
    return struct.unpack_from(TX_RSP_FORMAT, raw)


def pack_rx(id_: int, bfn: int, offset: int = 0, length: int = PAGE_SIZE) -> bytes:
    return struct.pack(RX_REQ_FORMAT, id_, bfn, offset, length & 0xFFFF)


def unpack_rx(raw: bytes) -> tuple[int, int, int, int]:
    """(id, bfn, offset, len)."""
    return struct.unpack_from(RX_REQ_FORMAT, raw)


def pack_rx_rsp(id_: int, status: int, length: int, flags: int = 0) -> bytes:
    return struct.pack(RX_RSP_FORMAT, id_, status, length, flags)


def unpack_rx_rsp(raw: bytes) -> tuple[int, int, int, int]:
    """(id, status, len, flags)."""
    return struct.unpack_from(RX_RSP_FORMAT, raw)


def pack_info(mac: bytes, features: int, tx_slots: int, rx_slots: int, model: str,
              init_status: int = 0, link_changes: int = 0, link_flags: int = 0) -> bytes:
    """The info page with magic 0: the device stores the magic last (rule 4)."""
    return struct.pack(INFO_FORMAT, 0, NIC_INFO_VERSION, NIC_MTU, NIC_MAX_FRAME, tx_slots,
                       rx_slots, NIC_MAX_TX_SEGS, features, init_status, mac,
                       model.encode()[:40], link_changes, link_flags)


def unpack_info(raw: bytes) -> dict:
    info = dict(zip(INFO_FIELDS, struct.unpack_from(INFO_FORMAT, raw), strict=True))
    info["model"] = info["model"].rstrip(b"\0 ").decode(errors="replace")
    info["mac"] = ":".join(f"{b:02x}" for b in info["mac"])
    return info


# ---- MMIO codec --------------------------------------------------------------------

encode_mmio = encode_op


def _int_field(msg: dict, key: str, lo: int, hi: int) -> int:
    return int_field(msg, key, lo, hi, NicDevError)


def check_wire(msg: dict) -> dict:
    """Validate a "wire" write's fault settings (each optional); NicDevError."""
    for key in WIRE_RATES:
        v = msg.get(key, 0)
        if type(v) not in (int, float) or not 0 <= v <= 1:
            raise NicDevError(f"wire: {key} must be a probability within 0..1")
    delay = msg.get("delay_ms", 0)
    if type(delay) not in (int, float) or not 0 <= delay <= WIRE_MAX_DELAY_MS:
        raise NicDevError(f"wire: delay_ms must be within 0..{WIRE_MAX_DELAY_MS}")
    if type(msg.get("partition", False)) is not bool:
        raise NicDevError("wire: partition must be true or false")
    return msg


def decode_mmio(frame: bytes) -> dict:
    """One validated MMIO write: {"op", ...fields}; NicDevError otherwise."""
    msg = decode_op(frame, MMIO_OPS, NicDevError, "not an MMIO write of this device")
    if msg["op"] == "init":
        for ring in ("tx", "rx"):
            _int_field(msg, f"{ring}_ring_bfn", 0, NIC_MAX_BFN)
            _int_field(msg, f"{ring}_ring_pages", 1, NIC_MAX_RING_PAGES)
        _int_field(msg, "info_bfn", 0, NIC_MAX_BFN)
    elif msg["op"] == "wire":
        check_wire(msg)
    return msg
