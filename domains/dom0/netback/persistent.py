"""netback's persistent mappings of one vif (``feature-persistent``).

Rules (the 2012 Linux netback/netfront persistent-grant patches, never merged
upstream; blkback's persistent grants in domains/dom0/blkback/persistent.py):

1. Used only when both ends offered ``feature-persistent``. The frontend then
   sends every tx frame from, and posts every rx buffer in, a fixed pool of
   pages it granted once (netfront_core rule 7).
2. Each gref is mapped with GNTTABOP_map_grant_ref the first time it is seen
   (tx read-only, rx writable, one batched map per direction and turn) and
   kept in a tree per vif (blkback's LRU ``PersistentGrants``, bounded at a
   ring's worth per direction). netback then reads tx frames and writes rx
   frames straight through its mappings: no GNTTABOP_copy on the data path.
   Upstream Linux netback grant-copies instead (xen-interfaces.md 3.3).
3. A mapping is only used inside the Dom0 turn that looked it up; a mapping
   evicted by the LRU, or one that could not be cached, is unmapped at the
   end of that turn (``end_turn``), never while the turn may still use it.
4. A gref that fails to map (revoked, never granted, read-only for rx) gives
   its GNTST code: that packet gets an error response, the vif goes on, and
   the next use tries to map again.
5. Warm-up in one batch: at the first miss of each tree, the grefs of
   ``ahead`` (the rx buffers posted but not yet used) are mapped in the same
   GNTTABOP_map_grant_ref, so the rx pool is mapped once, not a slot per
   packet. They are hints: one that fails to map is simply not cached.
   Only once per connection, so a frontend posting junk grefs cannot make
   every turn a ring's worth of failing map ops.
6. Every mapping is unmapped at disconnect (``clear``).
"""

from __future__ import annotations

from collections.abc import Callable

from domains.dom0.blkback.persistent import PersistentGrants


class PersistentMaps:
    """One vif's persistent mappings: tx (read-only) and rx (writable) trees."""

    def __init__(self, gnttab, fe: int, limit: int) -> None:
        self.gnttab, self.fe = gnttab, fe
        self.trees = {False: PersistentGrants(limit), True: PersistentGrants(limit)}
        self.spare: list = []  # mappings to unmap at the end of the turn (rule 3)
        self.warmed = {False: False, True: False}  # rule 5 done, per tree
        self.maps = 0  # GNTTABOP_map_grant_ref ops made (warm-up only, when all goes well)

    def __len__(self) -> int:
        return sum(len(t) for t in self.trees.values())

    def lookup(self, grefs, writable: bool, ahead: Callable[[], list[int]] | None = None) -> dict:
        """gref -> mapping (or a GNTST code) for each gref, mapping the missing
        ones (with the grefs ``ahead()`` gives, asked only on a miss: rule 5)."""
        tree = self.trees[writable]
        out, missing = {}, []
        for gref in grefs:
            if gref in out:
                continue
            m = tree.get(gref)
            if m is None:
                out[gref] = None
                missing.append(gref)
            else:
                tree.put(gref)  # held only for this turn, which rule 3 covers
                out[gref] = m
        if missing:
            wanted = len(missing)
            room = tree.limit - len(tree) - wanted
            hints = ahead() if ahead is not None and not self.warmed[writable] else ()
            self.warmed[writable] = True
            for gref in hints:
                if room <= 0:
                    break
                if gref not in out and gref not in tree:
                    out[gref] = None
                    missing.append(gref)
                    room -= 1
            self.maps += len(missing)
            ops = [(self.fe, gref, not writable) for gref in missing]
            for k, (gref, res) in enumerate(zip(missing, self.gnttab.map_grants(ops),
                                                strict=True)):
                if k < wanted:
                    out[gref] = res
                else:
                    del out[gref]  # a hint: only cached
                if isinstance(res, int):
                    continue
                if tree.add(gref, res):
                    tree.put(gref)
                else:
                    self.spare.append(res)
        return out

    def end_turn(self) -> None:
        """Unmap what was evicted or not cached during this turn (rule 3)."""
        spare = self.spare + [m for t in self.trees.values() for m in t.take_evicted()]
        self.spare = []
        if spare:
            self.gnttab.unmap_grants(spare)

    def clear(self) -> list[int]:
        """Unmap everything (disconnect); the GNTST status of each unmap."""
        spare = self.spare + [m for t in self.trees.values() for m in t.clear()]
        self.spare = []
        return self.gnttab.unmap_grants(spare) if spare else []
