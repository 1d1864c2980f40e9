"""Buffer cache: filesystem blocks in memory, read and written back in batches.

Rules:
1. Sans-IO. ``get``, ``get_many`` and ``sync`` are generators that yield
   blockreq requests; ``peek``, ``mark_dirty``, ``new_block``, ``hold``,
   ``release``, ``forget`` and ``drop_clean`` never yield.
2. A buffer returned by ``get``/``get_many`` is valid until the caller's next
   ``yield from`` into the cache, unless it is held: modify it and
   ``mark_dirty`` it before yielding again, or ``hold`` it first.
3. Only clean, unheld buffers are evicted, least recently used first. The
   capacity is soft: a batch being read, new blocks and held blocks may
   exceed it for a while. When dirty buffers would crowd out a read, or
   alone exceed the capacity, the next ``get``/``get_many`` first writes
   the oldest half back (one WriteBlocks, no Flush), hits or not.
4. A buffer is marked clean only after the request that carried it
   succeeded; an error thrown into a generator leaves dirty buffers dirty and
   caches nothing that was not read. ``sync`` marks clean only after both
   its WriteBlocks and its Flush succeeded.
5. The misses of one ``get_many`` are one ReadBlocks (sorted, distinct); a
   ``sync`` is one WriteBlocks (sorted) then one Flush.
6. One user at a time: the filesystem serialises its operations, so nothing
   else touches the cache while a generator is suspended in it.
"""

from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

from domains.xenolinux.fs.blockreq import Flush, ReadBlocks, WriteBlocks

BLOCK_SIZES = (1024, 2048, 4096)

Io = Generator[Any, Any, Any]


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """Counters of a BufferCache: hits/misses per block asked for, reads and
    writes in blocks transferred, requests as issued to the driver."""

    hits: int
    misses: int
    reads: int
    writes: int
    read_requests: int
    write_requests: int
    flushes: int
    cached: int
    dirty: int
    held: int


class _Buffer:
    __slots__ = ("data", "dirty", "holds")

    def __init__(self, data: bytearray, dirty: bool) -> None:
        self.data, self.dirty, self.holds = data, dirty, 0


class BufferCache:
    """An LRU cache of `capacity_blocks` blocks of `block_size` bytes."""

    def __init__(self, block_size: int, capacity_blocks: int,
                 trace: Callable[..., None] | None = None) -> None:
        if block_size not in BLOCK_SIZES:
            raise ValueError(f"block size {block_size} not one of {BLOCK_SIZES}")
        if capacity_blocks < 8:
            raise ValueError("a buffer cache needs at least 8 blocks")
        self._bs = block_size
        self._cap = capacity_blocks
        self._bufs: OrderedDict[int, _Buffer] = OrderedDict()
        self._dirty = 0
        self.trace = trace
        self._hits = self._misses = self._reads = self._writes = 0
        self._read_reqs = self._write_reqs = self._flushes = 0

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def dirty_blocks(self) -> int:
        """How many cached blocks wait to be written back."""
        return self._dirty

    def set_block_size(self, block_size: int) -> None:
        """Switch to another block size, dropping every buffer (mount does this
        once it has read the superblock). Refused while a buffer is dirty or held."""
        if block_size not in BLOCK_SIZES:
            raise ValueError(f"block size {block_size} not one of {BLOCK_SIZES}")
        if any(b.dirty or b.holds for b in self._bufs.values()):
            raise ValueError("cannot change the block size with dirty or held buffers")
        self._bufs.clear()
        self._bs = block_size

    # ---- reading ---------------------------------------------------------

    def get(self, no: int) -> Io:
        """Generator: the buffer of block `no`, read if not cached."""
        bufs = yield from self.get_many((no,))
        return bufs[0]

    def get_many(self, nos: Iterable[int]) -> Io:
        """Generator: the buffers of `nos`, in order; all misses in one ReadBlocks."""
        nos = tuple(nos)
        missing = [n for n in nos if n not in self._bufs]
        self._misses += len(missing)
        self._hits += len(nos) - len(missing)
        misses = sorted(set(missing))
        yield from self._make_room(len(misses))
        if misses:
            data = yield ReadBlocks(tuple(misses), self._bs)
            self._insert_read(misses, data)
        out = []
        for n in nos:
            self._bufs.move_to_end(n)
            out.append(self._bufs[n].data)
        self._evict(protect=set(nos))
        return out

    def _insert_read(self, misses: list[int], data: Any) -> None:
        if not isinstance(data, list | tuple) or len(data) != len(misses):
            raise ValueError(f"driver answered ReadBlocks of {len(misses)} blocks with "
                             f"{type(data).__name__}")
        for no, block in zip(misses, data, strict=True):
            if len(block) != self._bs:
                raise ValueError(f"driver returned {len(block)} bytes for block {no}")
            self._bufs[no] = _Buffer(bytearray(block), dirty=False)
        self._reads += len(misses)
        self._read_reqs += 1
        if self.trace:
            self.trace("ext2.bread", blocks=len(misses), first=misses[0])

    def peek(self, no: int) -> bytearray | None:
        """The buffer of `no` if cached (always, while held); never reads."""
        buf = self._bufs.get(no)
        return None if buf is None else buf.data

    # ---- changing --------------------------------------------------------

    def mark_dirty(self, no: int) -> None:
        """Block `no` (cached) was modified: write it back before evicting it."""
        buf = self._bufs.get(no)
        if buf is None:
            raise ValueError(f"block {no} is not cached: modified after a yield without hold()")
        if not buf.dirty:
            buf.dirty = True
            self._dirty += 1
        self._bufs.move_to_end(no)

    def new_block(self, no: int) -> bytearray:
        """A zeroed, dirty buffer for `no` without reading it (a block just
        allocated, or one about to be overwritten whole)."""
        buf = self._bufs.get(no)
        if buf is None:
            buf = self._bufs[no] = _Buffer(bytearray(self._bs), dirty=False)
        else:
            buf.data[:] = bytes(self._bs)
        self.mark_dirty(no)
        self._evict(protect={no})
        return buf.data

    def hold(self, no: int) -> None:
        """Keep `no` (cached) in memory until a matching release()."""
        buf = self._bufs.get(no)
        if buf is None:
            raise ValueError(f"block {no} is not cached")
        buf.holds += 1

    def release(self, no: int) -> None:
        """Undo one hold(); a block forgotten meanwhile is ignored."""
        buf = self._bufs.get(no)
        if buf is not None and buf.holds > 0:
            buf.holds -= 1

    def forget(self, no: int) -> None:
        """Block `no` was freed: drop it, dirty or not, without writing it."""
        buf = self._bufs.pop(no, None)
        if buf is not None and buf.dirty:
            self._dirty -= 1

    def drop_clean(self) -> int:
        """Drop every clean, unheld buffer (Linux's drop_caches after a sync);
        how many were dropped. Dirty buffers stay, and so do held ones: the
        filesystem's pinned metadata and what a running operation holds."""
        victims = [n for n, b in self._bufs.items() if not b.dirty and not b.holds]
        for n in victims:
            del self._bufs[n]
        return len(victims)

    # ---- writing back ----------------------------------------------------

    def sync(self) -> Io:
        """Generator: every dirty block in one WriteBlocks, then a Flush."""
        nos = sorted(n for n, b in self._bufs.items() if b.dirty)
        if nos:
            yield from self._write(nos)
        yield Flush()
        self._flushes += 1
        if self.trace:
            self.trace("ext2.flush")
        self._mark_clean(nos)

    def _make_room(self, incoming: int) -> Io:
        """Write back the oldest dirty buffers when they would crowd out
        `incoming` blocks (or, with 0, when they alone exceed the capacity)."""
        if self._dirty + incoming <= self._cap:
            return
        target = max(0, min(self._cap - incoming, self._cap // 2))
        victims = [n for n, b in self._bufs.items() if b.dirty][: self._dirty - target]
        victims.sort()
        yield from self._write(victims)
        self._mark_clean(victims)

    def _write(self, nos: list[int]) -> Io:
        blocks = tuple((n, bytes(self._bufs[n].data)) for n in nos)
        yield WriteBlocks(blocks, self._bs)
        self._writes += len(nos)
        self._write_reqs += 1
        if self.trace:
            self.trace("ext2.bwrite", blocks=len(nos), first=nos[0])

    def _mark_clean(self, nos: list[int]) -> None:
        for n in nos:
            buf = self._bufs.get(n)
            if buf is not None and buf.dirty:
                buf.dirty = False
                self._dirty -= 1
        self._evict(protect=set())

    def _evict(self, protect: set[int]) -> None:
        excess = len(self._bufs) - self._cap
        if excess <= 0:
            return
        victims = []
        for n, b in self._bufs.items():
            if not b.dirty and not b.holds and n not in protect:
                victims.append(n)
                if len(victims) == excess:
                    break
        for n in victims:
            del self._bufs[n]

    def statistics(self) -> CacheStatistics:
        """A snapshot of the counters."""
        held = sum(1 for b in self._bufs.values() if b.holds)
        return CacheStatistics(self._hits, self._misses, self._reads, self._writes,
                               self._read_reqs, self._write_reqs, self._flushes,
                               len(self._bufs), self._dirty, held)
