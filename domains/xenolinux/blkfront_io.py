"""What blkfront's core exchanges with the guest kernel and the adapter.

Rules:

1. A ``BlockIo`` is one block I/O of the guest kernel (a bio): its data lies
   in whole 4 KiB pages from offset 0, 8 sectors a page, the last page maybe
   partly used. The pages stay untouched until its ``Completion``. Breaking
   that contract is the caller's bug (ValueError from ``check_io``).
2. ``split_io`` cuts it into ring requests of at most 11 pages (88 sectors),
   numbered by a submission sequence so re-issue keeps the original order.
3. ``BackendFeatures`` is what blkfront_connect reads from the backend's
   xenstore directory (sectors always in 512-byte units).
4. ``Granter`` and ``PageAllocator`` are the adapter's: grants are made to
   the backend domain (the adapter binds its domid); the allocator supplies
   frames for the persistent-grant pool.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from hypervisor.public.blkif import (
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_OKAY,
    SECTOR_SIZE,
    SECTORS_PER_PAGE,
    VDISK_READONLY,
)

Buffer = tuple[int, memoryview]  # (pfn, the 4 KiB page of guest memory)
PageSpan = tuple[int, memoryview, int, int]  # pfn, page, first_sect, last_sect
DATA_OPS = (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER)
BLOCK_OPS = (*DATA_OPS, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD)


class Granter(Protocol):
    """Grants to the backend domain (``domains.kernel.gnttab`` with the domid bound)."""

    def grant(self, pfn: int, readonly: bool) -> int: ...

    def end_access(self, gref: int) -> bool: ...


class PageAllocator(Protocol):
    """Guest frames for the persistent-grant pool."""

    def alloc(self) -> Buffer: ...

    def free(self, pfn: int) -> None: ...


@dataclass(frozen=True, eq=False)
class BlockIo:
    """One block I/O; ``cookie`` is the caller's (a waiting process, a trace id)."""

    operation: int  # BLKIF_OP_READ, WRITE, WRITE_BARRIER, FLUSH_DISKCACHE or DISCARD
    sector: int = 0
    nr_sectors: int = 0
    buffers: tuple[Buffer, ...] = ()
    secure: bool = False  # discard only: BLKIF_DISCARD_SECURE
    cookie: object = None


@dataclass(frozen=True, slots=True)
class Completion:
    io: BlockIo
    status: int  # BLKIF_RSP_*: the first failure of any of its ring requests
    req_id: int = -1  # the ring request that completed it last (for traces)


@dataclass(frozen=True, slots=True)
class BackendFeatures:
    sectors: int
    info: int = 0
    sector_size: int = SECTOR_SIZE
    feature_flush_cache: bool = False
    feature_barrier: bool = False
    feature_discard: bool = False
    discard_secure: bool = False
    feature_persistent: bool = False

    @property
    def readonly(self) -> bool:
        return bool(self.info & VDISK_READONLY)

    @classmethod
    def from_keys(cls, keys: Mapping[str, str]) -> BackendFeatures:
        """Parse the backend's xenstore values (absent features are 0); ValueError on garbage."""

        def flag(name: str) -> bool:
            return int(keys.get(name, "0")) != 0

        return cls(
            sectors=int(keys["sectors"]),
            info=int(keys.get("info", "0")),
            sector_size=int(keys.get("sector-size", str(SECTOR_SIZE))),
            feature_flush_cache=flag("feature-flush-cache"),
            feature_barrier=flag("feature-barrier"),
            feature_discard=flag("feature-discard"),
            discard_secure=flag("discard-secure"),
            feature_persistent=flag("feature-persistent"),
        )


@dataclass(slots=True, eq=False)
class IoState:
    """A BlockIo in progress: how many of its ring requests are unanswered."""

    io: BlockIo
    left: int
    status: int = BLKIF_RSP_OKAY


@dataclass(slots=True, eq=False)
class IoPart:
    """One ring request's worth of a BlockIo."""

    owner: IoState
    seq: int
    sector: int
    pages: tuple[PageSpan, ...]


def span(page: PageSpan) -> slice:
    """The bytes of a page that its sectors first..last cover."""
    return slice(page[2] * SECTOR_SIZE, (page[3] + 1) * SECTOR_SIZE)


def _pages_needed(n: int) -> int:
    return -(-n // SECTORS_PER_PAGE)


def check_io(io: BlockIo) -> None:
    """Raise ValueError unless ``io`` keeps the rules of this module."""
    op, n, pages = io.operation, io.nr_sectors, len(io.buffers)
    if op not in BLOCK_OPS:
        raise ValueError(f"operation {op} is not a block I/O")
    if io.sector < 0 or n < 0:
        raise ValueError("negative sector or count")
    if op in DATA_OPS and pages != _pages_needed(n):
        raise ValueError(f"{n} sectors need {_pages_needed(n)} pages, not {pages}")
    if op in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_DISCARD) and n == 0:
        raise ValueError("empty I/O")
    if op == BLKIF_OP_WRITE_BARRIER and pages > BLKIF_MAX_SEGMENTS_PER_REQUEST:
        raise ValueError("a barrier must fit one request")
    if op in (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD) and pages:
        raise ValueError("flush and discard carry no data")
    if op == BLKIF_OP_FLUSH_DISKCACHE and n:
        raise ValueError("a flush names no sectors")


def _spans(io: BlockIo) -> Iterator[PageSpan]:
    left = io.nr_sectors
    for pfn, page in io.buffers:
        used = min(left, SECTORS_PER_PAGE)
        yield pfn, page, 0, used - 1
        left -= used


def split_io(io: BlockIo, seq: int) -> list[IoPart]:
    """Cut a checked BlockIo into ring requests; sequence numbers from ``seq`` on."""
    spans = tuple(_spans(io))
    owner = IoState(io, 0)
    step = BLKIF_MAX_SEGMENTS_PER_REQUEST
    parts = [
        IoPart(owner, seq + k, io.sector + i * SECTORS_PER_PAGE, spans[i : i + step])
        for k, i in enumerate(range(0, len(spans), step))
    ] or [IoPart(owner, seq, io.sector, ())]
    owner.left = len(parts)
    return parts
