"""The block layer between ext2 and blkfront: filesystem blocks to sectors.

Rules:
1. ext2 yields ReadBlocks / WriteBlocks / Flush (domains.xenolinux.fs);
   this driver turns each into blkfront requests, all issued at once (many
   in flight, one ring push and at most one notification for the batch),
   and resumes the filesystem when the last one completes.
2. Consecutive blocks merge into one request of up to MAX_SECTORS (the
   elevator's merge); the data of a request never exceeds 11 segments.
3. Any BLKIF_RSP_ERROR fails the whole batch with EIO, after every request
   of it has completed (no callback may outlive the batch).
"""

import errno

from domains.xenolinux import trace as T
from domains.xenolinux.fs.blockreq import Flush, ReadBlocks, WriteBlocks
from domains.xenolinux.task import Ready
from hypervisor.public.blkif import BLKIF_RSP_OKAY, SECTOR_SIZE

MAX_SECTORS = 64  # 32 KiB: 8 segments of a page


def runs(nos: list[int], per_block: int) -> list[tuple[int, int]]:
    """(first block, count) for each run of consecutive block numbers."""
    out: list[tuple[int, int]] = []
    limit = max(1, MAX_SECTORS // per_block)
    for no in nos:
        if out and out[-1][0] + out[-1][1] == no and out[-1][1] < limit:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((no, 1))
    return out


class _Batch:
    def __init__(self, n: int, resume, result) -> None:
        self.left, self.resume, self.result, self.failed = n, resume, result, False

    def one_done(self, status: int) -> None:
        self.failed |= status != BLKIF_RSP_OKAY
        self.left -= 1
        if self.left == 0:
            if self.failed:
                self.resume(None, OSError(errno.EIO, "block I/O error"))
            else:
                self.resume(self.result(), None)


def _reader(first: int, count: int, bs: int, got: dict, batch: _Batch):
    def done(status: int, data: bytes) -> None:
        if status == BLKIF_RSP_OKAY:
            for i in range(count):
                got[first + i] = data[i * bs:(i + 1) * bs]
        batch.one_done(status)
    return done


class BlockDevice:
    """Each request names its block size (the superblock is read before the
    filesystem's block size is known)."""

    def __init__(self, blkfront) -> None:
        self.front = blkfront

    def waits(self) -> dict:
        return {ReadBlocks: self.read, WriteBlocks: self.write, Flush: self.flush}

    def read(self, req: ReadBlocks, resume):
        nos = list(req.nos)
        if not nos:
            return Ready([])
        bs = req.block_size
        per = bs // SECTOR_SIZE
        got: dict[int, bytes] = {}
        plan = runs(sorted(set(nos)), per)
        batch = _Batch(len(plan), resume, lambda: [got[n] for n in nos])
        T.stamp(T.BLOCK_READ, T.current(), nos[0], len(nos))
        for first, count in plan:
            self.front.read(first * per, count * per, _reader(first, count, bs, got, batch))
        return None

    def write(self, req: WriteBlocks, resume):
        blocks = dict(req.blocks)
        if not blocks:
            return Ready(None)
        per = req.block_size // SECTOR_SIZE
        plan = runs(sorted(blocks), per)
        batch = _Batch(len(plan), resume, lambda: None)
        T.stamp(T.BLOCK_WRITE, T.current(), min(blocks), len(blocks))
        for first, count in plan:
            data = b"".join(bytes(blocks[first + i]) for i in range(count))
            self.front.write(first * per, data,
                             lambda status, _d: batch.one_done(status))
        return None

    def flush(self, req: Flush, resume):
        T.stamp(T.BLOCK_WRITE, T.current(), 0, 0, "flush")
        batch = _Batch(1, resume, lambda: None)
        self.front.flush(lambda status, _d: batch.one_done(status))
        return None
