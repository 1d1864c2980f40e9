"""xenstored's state as bytes, so a restarted Domain-0 finds its tree again (sans-IO).

Rules:
1. What survives: every committed node (value, permissions, children in
   order) and each introduced domain's ring: its gfn and the guest's (still
   allocated) xenstore port. Watches and open transactions do not survive;
   guests register their watches again and retry their transactions when
   they reconnect (domains.kernel.xenbus).
2. Two byte strings: a snapshot (one versioned msgpack map) and a journal
   (msgpack records appended after it). Each record carries a sequence
   number; the snapshot names the last one it contains, and replay skips
   records up to it, so a journal older than its snapshot does no harm.
   A record is a node written ``[seq, path, value, perms, children]``, a
   node removed ``[seq, path]`` or the ring table ``[seq, rings]``.
3. A snapshot that does not decode to exactly that shape raises StateError
   (the caller starts empty); a journal is read up to its first damaged or
   incomplete record.
"""

from __future__ import annotations

import msgpack

from .perms import XsError, format_perms, parse_perms
from .store import Node, Store

VERSION = 1
Rings = dict[int, tuple[int, int]]  # domid -> (gfn, the guest's store port)


class StateError(Exception):
    """The saved state is missing, from another version, or damaged."""


def _node(path: str, node: Node) -> list:
    return [path, node.value, format_perms(node.perms), list(node.children)]


def _rings(rings: Rings) -> list:
    return [[d, g, p] for d, (g, p) in sorted(rings.items())]


def snapshot(store: Store, rings: Rings, seq: int) -> bytes:
    """The whole state, as of journal record ``seq``."""
    nodes = [_node(p, n) for p in store.paths() if (n := store.get(p)) is not None]
    return msgpack.packb({"version": VERSION, "seq": seq, "nodes": nodes,
                          "rings": _rings(rings)})


def records(seq: int, changes: list[tuple[str, Node | None]],
            rings: Rings | None) -> tuple[bytes, int]:
    """Journal records for ``changes`` (and the ring table if it changed),
    numbered after ``seq``; returns the bytes and the last number."""
    out = []
    for path, node in changes:
        seq += 1
        out.append(msgpack.packb([seq, *_node(path, node)] if node is not None else [seq, path]))
    if rings is not None:
        seq += 1
        out.append(msgpack.packb([seq, _rings(rings)]))
    return b"".join(out), seq


def decode(snap: bytes, journal: bytes = b"") -> tuple[Store, Rings, int]:
    """Rebuild the store and the ring table; returns them and the last seq."""
    try:
        image = msgpack.unpackb(snap, raw=False)
        if not isinstance(image, dict) or image.get("version") != VERSION:
            raise StateError("not a xenstored snapshot of this version")
        store = Store()
        for path, value, perms, children in image["nodes"]:
            store.put(path, Node(bytes(value), parse_perms(perms), tuple(children)))
        rings = {int(d): (int(g), int(p)) for d, g, p in image["rings"]}
        seq = last = int(image["seq"])
    except (ValueError, TypeError, KeyError, XsError, msgpack.UnpackException) as exc:
        raise StateError(f"bad xenstored snapshot: {exc}") from None
    for rec in _journal(journal):
        if rec[0] > seq:
            last = _replay(store, rings, rec)
    if store.get("/") is None:
        raise StateError("bad xenstored state: no root")
    return store, rings, max(seq, last)


def _journal(raw: bytes):
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    try:
        for rec in unpacker:
            if not isinstance(rec, list) or not rec or not isinstance(rec[0], int):
                return
            yield rec
    except (ValueError, msgpack.UnpackException):
        return  # damaged from here on: keep what came before


def _replay(store: Store, rings: Rings, rec: list) -> int:
    try:
        if len(rec) == 5:
            _, path, value, perms, children = rec
            store.put(path, Node(bytes(value), parse_perms(perms), tuple(children)))
        elif len(rec) == 2 and isinstance(rec[1], str):
            store.drop(rec[1])
        elif len(rec) == 2:
            rings.clear()
            rings.update({int(d): (int(g), int(p)) for d, g, p in rec[1]})
    except (ValueError, TypeError, XsError):
        pass  # one bad record: the ones after it may still be good
    return rec[0]
