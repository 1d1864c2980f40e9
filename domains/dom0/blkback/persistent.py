"""blkback's per-frontend persistent-grant cache: gref -> mapping, bounded, LRU.

Rules (xen-interfaces.md 2.3; Linux blkback ``persistent_gnts``):

1. Used only when both ends agreed on ``feature-persistent``: the frontend
   then reuses a fixed pool of granted pages, so after warm-up every segment
   hits this cache and no grant is mapped or unmapped per request.
2. The cache only decides; the blkback adapter's mapper maps and unmaps.
   Mappings evicted here wait in ``take_evicted()`` for the caller to unmap.
3. At most ``limit`` entries (Linux ``max_persistent_grants`` = 1056). When
   full, the least recently used entry that no in-flight request holds is
   evicted; if every entry is busy, the new mapping is not cached (the caller
   unmaps it after its request, as Linux does while a purge is pending).
4. An entry in use by an in-flight request is never evicted: the device may
   be doing DMA into its page.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_PERSISTENT_GRANTS = 1056


@dataclass(slots=True)
class _Entry:
    mapping: object
    users: int


class PersistentGrants:
    """gref -> mapping for one frontend, most recently used last."""

    def __init__(self, limit: int = MAX_PERSISTENT_GRANTS) -> None:
        if limit < 1:
            raise ValueError("the persistent-grant limit must be positive")
        self.limit = limit
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._evicted: list[object] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, gref: int) -> bool:
        return gref in self._entries

    def get(self, gref: int) -> object | None:
        """The cached mapping of ``gref``, now held by one more request; None on a miss."""
        entry = self._entries.get(gref)
        if entry is None:
            return None
        entry.users += 1
        self._entries.move_to_end(gref)
        return entry.mapping

    def add(self, gref: int, mapping: object) -> bool:
        """Cache a fresh mapping, held by one request; False if it cannot be cached."""
        if gref in self._entries:
            return False  # the same gref twice in one batch: the copy stays transient
        if len(self._entries) >= self.limit and not self._evict_one():
            return False
        self._entries[gref] = _Entry(mapping, 1)
        return True

    def put(self, gref: int) -> None:
        """One request is done with ``gref``'s mapping."""
        entry = self._entries[gref]
        entry.users -= 1

    def _evict_one(self) -> bool:
        for gref, entry in self._entries.items():  # least recently used first
            if entry.users == 0:
                del self._entries[gref]
                self._evicted.append(entry.mapping)
                return True
        return False

    def take_evicted(self) -> list[object]:
        """Mappings evicted since the last call; the caller unmaps them."""
        out, self._evicted = self._evicted, []
        return out

    def busy(self) -> int:
        """Entries some in-flight request still holds."""
        return sum(1 for e in self._entries.values() if e.users)

    def clear(self) -> list[object]:
        """Forget every entry (disconnect); returns all mappings to unmap."""
        out = self.take_evicted() + [e.mapping for e in self._entries.values()]
        self._entries.clear()
        return out
