"""xenstored's state as bytes, so a restarted Domain-0 finds its tree again (sans-IO).

Rules:
1. What survives: every committed node (value, permissions, children in
   order), the store generation, and each introduced domain's ring: its
   gfn and the guest's (still allocated) xenstore port. Watches and open
   transactions do not survive; guests re-register their watches and retry
   their transactions when they reconnect (domains.kernel.xenbus).
2. The image is one versioned msgpack map. A blob that does not decode to
   exactly that shape raises StateError, and the caller starts empty.
3. The adapter (service.py) writes the image after every committed change,
   before the reply to the change leaves, by rename over the old one: a
   reader sees the old or the new image, never half of one.
"""

from __future__ import annotations

import msgpack

from .perms import XsError, format_perms, parse_perms
from .store import Node, Store

VERSION = 1


class StateError(Exception):
    """The saved state is missing, from another version, or damaged."""


def encode(store: Store, rings: dict[int, tuple[int, int]]) -> bytes:
    """The image of ``store`` and the introduced domains' rings {domid: (gfn, port)}."""
    nodes = [[path, node.value, format_perms(node.perms), list(node.children)]
             for path in store.paths() if (node := store.get(path)) is not None]
    return msgpack.packb({"version": VERSION, "generation": store.generation,
                          "nodes": nodes, "rings": [[d, g, p] for d, (g, p) in rings.items()]})


def decode(raw: bytes) -> tuple[Store, dict[int, tuple[int, int]]]:
    """Rebuild the store and the ring table from ``encode``'s bytes."""
    try:
        image = msgpack.unpackb(raw, raw=False)
        if not isinstance(image, dict) or image.get("version") != VERSION:
            raise StateError("not a xenstored image of this version")
        store = Store()
        for path, value, perms, children in image["nodes"]:
            store.put(path, Node(bytes(value), parse_perms(perms), tuple(children)))
        store.generation = max(store.generation, int(image["generation"]))
        rings = {int(d): (int(g), int(p)) for d, g, p in image["rings"]}
    except (ValueError, TypeError, KeyError, XsError, msgpack.UnpackException) as exc:
        raise StateError(f"bad xenstored image: {exc}") from None
    if store.get("/") is None:
        raise StateError("bad xenstored image: no root")
    return store, rings
