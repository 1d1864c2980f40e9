"""Node storage, generation counters and transaction snapshots.

Rule 1: nodes are immutable records kept in a flat map from absolute path to
        Node; a parent lists its children by name, in creation order.
Rule 2: every change stamps the node with a new store generation; removing a
        node leaves a tombstone with the generation of its removal, kept only
        while some open transaction could still need it.
Rule 3: a Transaction sees the store as it was when it first touched each
        node, plus its own changes. Commit fails with EAGAIN if any node it
        touched (read, listed or wrote) changed after the transaction started;
        otherwise its changes are applied at once.
Rule 4: node counts per owner are kept for quota checks (Domain-0's nodes
        are counted too but never limited).

Permission checks live in tree.py: this module trusts its callers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from .perms import Perm, Perms, XsError


@dataclass(frozen=True, slots=True)
class Node:
    value: bytes
    perms: Perms
    children: tuple[str, ...] = ()
    gen: int = 0

    @property
    def owner(self) -> int:
        return self.perms[0].domid


@dataclass(frozen=True, slots=True)
class Change:
    """One modification, as watches see it.

    `perms` are the node's permissions after the change (before it, for a
    removal); `old_perms` are set when SET_PERMS replaced them; `removed` maps
    every node of a removed subtree to the permissions it had.
    """

    path: str
    perms: Perms
    old_perms: Perms | None = None
    removed: dict[str, Perms] = field(default_factory=dict)


class View(Protocol):
    """What tree operations need: the main store and a transaction alike."""

    def get(self, path: str) -> Node | None: ...
    def put(self, path: str, node: Node) -> None: ...
    def drop(self, path: str) -> None: ...
    def owned(self, domid: int) -> int: ...
    def record(self, change: Change) -> list[Change]: ...


ROOT_PERMS: Perms = (Perm("n", 0),)


class Store:
    """The committed tree."""

    def __init__(self) -> None:
        self.generation = 0
        self._nodes: dict[str, Node] = {"/": Node(b"", ROOT_PERMS)}
        self._owned: Counter[int] = Counter({0: 1})
        self._tombstones: dict[str, int] = {}
        self._open: list[Transaction] = []
        # Every committed put and drop, in order, while someone keeps a
        # journal (persist.py): (path, node) or (path, None).
        self.journal: list[tuple[str, Node | None]] | None = None

    def __len__(self) -> int:
        return len(self._nodes)

    def paths(self) -> list[str]:
        return list(self._nodes)

    def get(self, path: str) -> Node | None:
        return self._nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self.generation += 1
        self._count(self._nodes.get(path), -1)
        self._nodes[path] = node = Node(node.value, node.perms, node.children, self.generation)
        self._count(node, +1)
        if self.journal is not None:
            self.journal.append((path, node))

    def drop(self, path: str) -> None:
        self.generation += 1
        self._count(self._nodes.pop(path, None), -1)
        if self._open:
            self._tombstones[path] = self.generation
        if self.journal is not None:
            self.journal.append((path, None))

    def owned(self, domid: int) -> int:
        return self._owned[domid]

    def record(self, change: Change) -> list[Change]:
        """Changes to the main store are visible (and fire watches) at once."""
        return [change]

    def _count(self, node: Node | None, delta: int) -> None:
        if node is not None:
            self._owned[node.owner] += delta

    def changed_since(self, path: str, gen: int) -> bool:
        node = self._nodes.get(path)
        if node is not None:
            return node.gen > gen
        return self._tombstones.get(path, 0) > gen

    # --- transactions -------------------------------------------------

    def begin(self) -> Transaction:
        txn = Transaction(self)
        self._open.append(txn)
        return txn

    def commit(self, txn: Transaction) -> list[Change]:
        """Apply `txn` or raise XsError(EAGAIN); either way it is closed."""
        # Check before closing: closing may prune the tombstones we need.
        conflict = any(self.changed_since(path, txn.start_gen) for path in txn.touched())
        self._close(txn)
        if conflict:
            raise XsError("EAGAIN", "a node the transaction used has changed")
        for path, node in txn.writes():
            if node is None:
                self.drop(path)
            else:
                self.put(path, node)
        return txn.changes

    def abort(self, txn: Transaction) -> None:
        self._close(txn)

    def _close(self, txn: Transaction) -> None:
        if txn in self._open:
            self._open.remove(txn)
        self._prune()

    def _prune(self) -> None:
        # A tombstone older than every open transaction can never matter again.
        oldest = min((t.start_gen for t in self._open), default=None)
        if oldest is None:
            self._tombstones.clear()
        else:
            self._tombstones = {p: g for p, g in self._tombstones.items() if g > oldest}


class Transaction:
    """A private view of the store; see Rule 3."""

    def __init__(self, store: Store) -> None:
        self.start_gen = store.generation
        self.changes: list[Change] = []
        self._store = store
        self._seen: dict[str, Node | None] = {}
        self._dirty: set[str] = set()
        self._owned_delta: Counter[int] = Counter()

    def get(self, path: str) -> Node | None:
        if path not in self._seen:
            self._seen[path] = self._store.get(path)
        return self._seen[path]

    def put(self, path: str, node: Node) -> None:
        self._count(self.get(path), -1)
        self._seen[path] = node
        self._dirty.add(path)
        self._count(node, +1)

    def drop(self, path: str) -> None:
        self._count(self.get(path), -1)
        self._seen[path] = None
        self._dirty.add(path)

    def owned(self, domid: int) -> int:
        return self._store.owned(domid) + self._owned_delta[domid]

    def record(self, change: Change) -> list[Change]:
        """Watches fire only when the transaction commits."""
        self.changes.append(change)
        return []

    def touched(self) -> list[str]:
        return list(self._seen)

    def writes(self) -> list[tuple[str, Node | None]]:
        return [(path, self._seen[path]) for path in self._dirty]

    def _count(self, node: Node | None, delta: int) -> None:
        if node is not None:
            self._owned_delta[node.owner] += delta
