"""Watch registry (xenstored_watch.c).

Rule 1: a watch is (path, token[, depth]) on one connection; the same path and
        token twice on a connection is EEXIST, a missing one on UNWATCH is
        ENOENT, and an unprivileged connection holds at most WATCH_QUOTA
        watches (E2BIG).
Rule 2: a change to node N fires every watch on N or on an ancestor of N
        (when a depth is given, N must lie at most that deep below it), with
        the path N.
Rule 3: removing a subtree also fires every watch on a node inside it, with
        the watched path.
Rule 4: an event reaches a connection only if its domain may read the node
        (for a removed node, with the permissions it had); the caller of
        `fire` decides that through `may_read`.
Rule 5: "@introduceDomain" and "@releaseDomain" fire only through
        `fire_special`, and reach every connection watching them.
Rule 6: a watch given as a relative path reports relative paths.

The registry does not send anything: it returns WatchEvents. The initial
event that follows a WATCH is the server's business.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from . import paths
from .perms import Perms, XsError
from .store import Change

WATCH_QUOTA = 128


@dataclass(frozen=True, slots=True)
class Watch:
    conn_id: Hashable
    path: str  # absolute, or a special "@..." name
    token: bytes
    depth: int | None = None
    prefix: str = ""  # "/local/domain/<domid>/" when registered relative

    def report(self, path: str) -> str:
        """The path as this watch's owner should see it (Rule 6)."""
        return path[len(self.prefix):] if self.prefix and path.startswith(self.prefix) else path

    def covers(self, path: str) -> bool:
        """Rule 2: `path` is this watch's node or lies within its depth below it."""
        if not paths.is_under(path, self.path):
            return False
        return self.depth is None or paths.depth_below(path, self.path) <= self.depth


@dataclass(frozen=True, slots=True)
class WatchEvent:
    conn_id: Hashable
    path: str
    token: bytes


MayRead = Callable[[Hashable, Perms], bool]


class WatchRegistry:
    def __init__(self) -> None:
        self._by_conn: dict[Hashable, dict[tuple[str, bytes], Watch]] = {}
        self._by_path: dict[str, list[Watch]] = {}

    def add(self, watch: Watch, limit: int | None = None) -> None:
        """Register `watch`; EEXIST for a duplicate, E2BIG past `limit`."""
        mine = self._by_conn.setdefault(watch.conn_id, {})
        if (watch.path, watch.token) in mine:
            raise XsError("EEXIST", f"watch {watch.path} already set")
        if limit is not None and len(mine) >= limit:
            raise XsError("E2BIG", f"more than {limit} watches")
        mine[(watch.path, watch.token)] = watch
        self._by_path.setdefault(watch.path, []).append(watch)

    def remove(self, conn_id: Hashable, path: str, token: bytes) -> None:
        watch = self._by_conn.get(conn_id, {}).pop((path, token), None)
        if watch is None:
            raise XsError("ENOENT", f"no watch {path}")
        self._unindex(watch)

    def drop(self, conn_id: Hashable) -> int:
        """Remove every watch of a connection; return how many there were."""
        mine = self._by_conn.pop(conn_id, {})
        for watch in mine.values():
            self._unindex(watch)
        return len(mine)

    def _unindex(self, watch: Watch) -> None:
        same = self._by_path[watch.path]
        same.remove(watch)
        if not same:
            del self._by_path[watch.path]

    def count(self, conn_id: Hashable | None = None) -> int:
        if conn_id is None:
            return sum(len(mine) for mine in self._by_conn.values())
        return len(self._by_conn.get(conn_id, {}))

    # --- firing ----------------------------------------------------------

    def fire(self, change: Change, may_read: MayRead) -> list[WatchEvent]:
        """The events one change raises (Rules 2-4), each watch at most once."""
        events = [
            WatchEvent(w.conn_id, w.report(change.path), w.token)
            for w in self._watching(change.path)
            if w.covers(change.path) and self._readable(w, change, may_read)
        ]
        if change.removed:
            events += self._fire_inside(change, may_read)
        return events

    def fire_special(self, name: str) -> list[WatchEvent]:
        """Rule 5."""
        if name not in paths.SPECIAL_PATHS:
            raise ValueError(f"{name!r} is not a special watch path")
        return [WatchEvent(w.conn_id, name, w.token) for w in self._by_path.get(name, ())]

    def _watching(self, path: str) -> Iterator[Watch]:
        for here in (path, *paths.ancestors(path)):
            yield from self._by_path.get(here, ())

    @staticmethod
    def _readable(watch: Watch, change: Change, may_read: MayRead) -> bool:
        # After SET_PERMS, a domain that could read before is told too.
        old = change.old_perms
        return may_read(watch.conn_id, change.perms) or (
            old is not None and may_read(watch.conn_id, old)
        )

    def _fire_inside(self, change: Change, may_read: MayRead) -> list[WatchEvent]:
        """Rule 3: watches strictly inside a removed subtree."""
        events = []
        for path, watches in self._by_path.items():
            if path == change.path or not paths.is_under(path, change.path):
                continue
            perms = _perms_when_removed(change, path)
            events += [
                WatchEvent(w.conn_id, w.report(path), w.token)
                for w in watches
                if may_read(w.conn_id, perms)
            ]
        return events


def _perms_when_removed(change: Change, path: str) -> Perms:
    """Permissions of `path` (or of its nearest removed ancestor) before removal."""
    while path not in change.removed:
        path = paths.parent(path)
    return change.removed[path]
