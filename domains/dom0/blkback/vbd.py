"""The virtual block device as blkback sees it: what it offers, and request checks.

Rules (xen-interfaces.md 2.1-2.4; Linux ``dispatch_rw_block_io``,
``dispatch_discard_io`` and ``xen_vbd_translate``):

1. ``check_request`` runs on the decoded private copy of a slot (XSA-155),
   never on shared memory, and judges every field: operation known and
   offered (else BLKIF_RSP_EOPNOTSUPP); a read-only device refuses all but
   READ; ``nr_segments`` 1..11 for READ/WRITE and 0..11 for FLUSH_DISKCACHE
   and WRITE_BARRIER; each ``first_sect <= last_sect <= 7``; the sectors
   the segments cover lie inside the device; a discard is non-empty, inside
   the device and uses only known flag bits. A refusal is BLKIF_RSP_ERROR.
   ``handle`` is not checked: one core serves one device (Linux ignores it
   too).
2. ``disk_op`` says what the device does for a valid request: a barrier is a
   preflush plus FUA write (or a bare flush without data), a flush with data
   is a preflush write.
3. ``backend_keys`` is what blkback writes to xenstore at connect; sectors
   are always in 512-byte units.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from domains.dom0.blkback.persistent import MAX_PERSISTENT_GRANTS
from hypervisor.public.blkif import (
    BLKIF_DISCARD_SECURE,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    SECTORS_PER_PAGE,
    VDISK_READONLY,
    BlkifRequest,
)


class DiskOp(enum.Enum):
    """What the device does; see ``DiskFlags`` for flush ordering around it."""

    READ = "read"
    WRITE = "write"
    FLUSH = "flush"  # a cache flush with no data
    DISCARD = "discard"


class DiskFlags(enum.IntFlag):
    NONE = 0
    PREFLUSH = 1  # flush the volatile cache before the data (REQ_PREFLUSH)
    FUA = 2  # the data is on stable storage before completion (REQ_FUA)
    SECURE = 4  # secure discard (BLKIF_DISCARD_SECURE)


@dataclass(frozen=True, slots=True)
class VbdConfig:
    """The virtual block device behind one frontend, and what the backend offers."""

    sectors: int  # in 512-byte units
    readonly: bool = False
    feature_flush_cache: bool = True
    feature_barrier: bool = True
    feature_discard: bool = True
    discard_secure: bool = False
    feature_persistent: bool = True
    max_persistent_grants: int = MAX_PERSISTENT_GRANTS


def backend_keys(vbd: VbdConfig) -> dict[str, str]:
    """The keys blkback writes at connect (reference 2.4), values as xenstore strings."""
    return {
        "sectors": str(vbd.sectors),
        "info": str(VDISK_READONLY if vbd.readonly else 0),
        "sector-size": "512",
        "physical-sector-size": "512",
        "feature-flush-cache": str(int(vbd.feature_flush_cache)),
        "feature-barrier": str(int(vbd.feature_barrier)),
        "feature-discard": str(int(vbd.feature_discard)),
        "discard-secure": str(int(vbd.discard_secure)),
        "feature-persistent": str(int(vbd.feature_persistent)),
    }


def _offered(vbd: VbdConfig) -> frozenset[int]:
    ops = {BLKIF_OP_READ, BLKIF_OP_WRITE}
    for op, on in ((BLKIF_OP_WRITE_BARRIER, vbd.feature_barrier),
                   (BLKIF_OP_FLUSH_DISKCACHE, vbd.feature_flush_cache),
                   (BLKIF_OP_DISCARD, vbd.feature_discard)):  # fmt: skip
        if on:
            ops.add(op)
    return frozenset(ops)


def check_request(req: BlkifRequest, vbd: VbdConfig) -> tuple[int, str] | None:
    """Validate a decoded private copy: None, or the (status, reason) to refuse it with."""
    op = req.operation
    if op not in _offered(vbd):
        return BLKIF_RSP_EOPNOTSUPP, f"operation {op} not offered"
    if vbd.readonly and op != BLKIF_OP_READ:
        return BLKIF_RSP_ERROR, "read-only device"
    if op == BLKIF_OP_DISCARD:
        return _check_discard(req, vbd)
    return _check_segments(req, vbd)


def _check_discard(req: BlkifRequest, vbd: VbdConfig) -> tuple[int, str] | None:
    if req.flag & ~BLKIF_DISCARD_SECURE:
        return BLKIF_RSP_ERROR, f"unknown discard flags {req.flag:#x}"
    if req.flag & BLKIF_DISCARD_SECURE and not vbd.discard_secure:
        return BLKIF_RSP_EOPNOTSUPP, "secure discard not offered"
    if req.nr_sectors == 0 or req.sector_number + req.nr_sectors > vbd.sectors:
        return BLKIF_RSP_ERROR, f"discard {req.sector_number}+{req.nr_sectors} out of range"
    return None


def _check_segments(req: BlkifRequest, vbd: VbdConfig) -> tuple[int, str] | None:
    low = 1 if req.operation in (BLKIF_OP_READ, BLKIF_OP_WRITE) else 0
    if not low <= req.nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
        return BLKIF_RSP_ERROR, f"nr_segments {req.nr_segments}"
    for seg in req.segments:
        if not seg.first_sect <= seg.last_sect < SECTORS_PER_PAGE:
            return BLKIF_RSP_ERROR, f"segment sectors {seg.first_sect}..{seg.last_sect}"
    n = sum(seg.nr_sectors for seg in req.segments)
    if n and req.sector_number + n > vbd.sectors:
        return BLKIF_RSP_ERROR, f"sectors {req.sector_number}+{n} beyond {vbd.sectors}"
    return None


def disk_op(req: BlkifRequest, has_data: bool) -> tuple[DiskOp, DiskFlags]:
    op = req.operation
    if op == BLKIF_OP_READ:
        return DiskOp.READ, DiskFlags.NONE
    if op == BLKIF_OP_WRITE:
        return DiskOp.WRITE, DiskFlags.NONE
    if op == BLKIF_OP_DISCARD:
        secure = req.flag & BLKIF_DISCARD_SECURE
        return DiskOp.DISCARD, DiskFlags.SECURE if secure else DiskFlags.NONE
    if not has_data:
        return DiskOp.FLUSH, DiskFlags.PREFLUSH
    fua = DiskFlags.FUA if op == BLKIF_OP_WRITE_BARRIER else DiskFlags.NONE
    return DiskOp.WRITE, DiskFlags.PREFLUSH | fua
