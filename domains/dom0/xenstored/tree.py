"""Xenstore operations under Xen's access rules and quotas (xenstored core.c).

Rule 1: reading a node, listing it or getting its permissions needs read
        access to it; writing, removing or setting its permissions needs write
        access to it.
Rule 2: creating a node needs write access to its nearest existing ancestor.
        WRITE and MKDIR create missing parents with empty values; each new
        node inherits its parent's permissions, and an unprivileged creator
        becomes its owner.
Rule 3: a missing node reports EACCES instead of ENOENT when the caller may
        not use its nearest existing ancestor, so absence leaks nothing.
Rule 4: RM removes a whole subtree; an absent node is fine but an absent
        parent is ENOENT; "/" cannot be removed (EINVAL).
Rule 5: only the owner (or a privileged caller) may SET_PERMS, and only a
        privileged caller may name a new owner (EPERM).
Rule 6: quotas bind unprivileged callers only: NODE_QUOTA nodes owned per
        domain, VALUE_QUOTA bytes per value, PERMS_QUOTA entries per node; all
        report ENOSPC, as xenstored does.
Rule 7: when a domain is released, the nodes it owns (with their subtrees)
        are removed and its other permission entries are revoked (XSA-322,
        XSA-419), so a later domain with the same domid inherits nothing.

Every operation takes a View (the main Store or a Transaction) and returns the
Changes that must fire watches now: none inside a transaction.
"""

from __future__ import annotations

from dataclasses import replace

from . import paths
from .perms import (
    XS_PERM_OWNER,
    XS_PERM_READ,
    XS_PERM_WRITE,
    Caller,
    Perm,
    Perms,
    XsError,
    inherit,
    without_domid,
)
from .store import Change, Node, Store, Transaction, View

__all__ = [
    "Caller", "Change", "Node", "Perm", "Perms", "Store", "Transaction", "View", "XsError",
    "read", "directory", "get_perms", "write", "mkdir", "rm", "set_perms", "release_domain",
]

NODE_QUOTA = 1000
VALUE_QUOTA = 2048
PERMS_QUOTA = 5

DOM0 = Caller(0, privileged=True)


# --- lookups -------------------------------------------------------------

def _get(view: View, who: Caller, path: str, want: int) -> Node:
    node = view.get(path)
    if node is None:
        raise XsError(_missing_errno(view, who, path, want), path)
    if not who.may(node.perms, want):
        raise XsError("EACCES", path)
    return node


def _missing_errno(view: View, who: Caller, path: str, want: int) -> str:
    for above in paths.ancestors(path):
        node = view.get(above)
        if node is not None:
            return "ENOENT" if who.may(node.perms, want) else "EACCES"
    return "ENOENT"


def read(view: View, who: Caller, path: str) -> bytes:
    return _get(view, who, path, XS_PERM_READ).value


def directory(view: View, who: Caller, path: str) -> tuple[str, ...]:
    return _get(view, who, path, XS_PERM_READ).children


def get_perms(view: View, who: Caller, path: str) -> Perms:
    return _get(view, who, path, XS_PERM_READ).perms


# --- creation ------------------------------------------------------------

def write(view: View, who: Caller, path: str, value: bytes) -> list[Change]:
    if not who.privileged and len(value) > VALUE_QUOTA:
        raise XsError("ENOSPC", f"value of {len(value)} bytes exceeds the node quota")
    node = view.get(path)
    if node is None:
        node = _create(view, who, path)
    elif not who.may(node.perms, XS_PERM_WRITE):
        raise XsError("EACCES", path)
    view.put(path, replace(node, value=value))
    return view.record(Change(path, node.perms))


def mkdir(view: View, who: Caller, path: str) -> list[Change]:
    node = view.get(path)
    if node is not None:
        # An existing node is fine, provided the caller could have written it.
        _get(view, who, path, XS_PERM_WRITE)
        return []
    node = _create(view, who, path)
    return view.record(Change(path, node.perms))


def _create(view: View, who: Caller, path: str) -> Node:
    """Create `path` and its missing ancestors (empty values); return the new node."""
    missing = [path]
    for above in paths.ancestors(path):
        top = view.get(above)
        if top is not None:
            break
        missing.append(above)
    else:  # "/" always exists; reaching here means the store is corrupt
        raise XsError("EIO", "no root node")
    if not who.may(top.perms, XS_PERM_WRITE):
        raise XsError("EACCES", path)
    _check_node_quota(view, who, len(missing))
    parent_path, parent = above, top
    for new_path in reversed(missing):
        node = Node(b"", inherit(parent.perms, who))
        view.put(new_path, node)
        view.put(parent_path, _with_child(parent, paths.basename(new_path)))
        parent_path, parent = new_path, node
    return parent


def _check_node_quota(view: View, who: Caller, new: int) -> None:
    if not who.privileged and view.owned(who.domid) + new > NODE_QUOTA:
        raise XsError("ENOSPC", f"domain {who.domid} would own more than {NODE_QUOTA} nodes")


def _with_child(node: Node, name: str) -> Node:
    return replace(node, children=(*node.children, name))


def _without_child(node: Node, name: str) -> Node:
    return replace(node, children=tuple(c for c in node.children if c != name))


# --- removal -------------------------------------------------------------

def rm(view: View, who: Caller, path: str) -> list[Change]:
    if path == "/":
        raise XsError("EINVAL", "cannot remove /")
    node = view.get(path)
    if node is None:
        return _rm_absent(view, who, path)
    if not who.may(node.perms, XS_PERM_WRITE):
        raise XsError("EACCES", path)
    removed = _drop_subtree(view, path, node)
    parent_path = paths.parent(path)
    parent = view.get(parent_path)
    if parent is not None:
        view.put(parent_path, _without_child(parent, paths.basename(path)))
    return view.record(Change(path, node.perms, removed=removed))


def _rm_absent(view: View, who: Caller, path: str) -> list[Change]:
    errno = _missing_errno(view, who, path, XS_PERM_WRITE)
    if errno == "EACCES" or view.get(paths.parent(path)) is None:
        raise XsError(errno, path)
    return []


def _drop_subtree(view: View, path: str, node: Node) -> dict[str, Perms]:
    """Drop `path` and all below it; return each dropped node's permissions."""
    removed: dict[str, Perms] = {}
    stack = [(path, node)]
    while stack:
        here, node = stack.pop()
        removed[here] = node.perms
        view.drop(here)
        for name in node.children:
            below = view.get(paths.child(here, name))
            if below is not None:
                stack.append((paths.child(here, name), below))
    return removed


# --- permissions ---------------------------------------------------------

def set_perms(view: View, who: Caller, path: str, perms: Perms) -> list[Change]:
    node = _get(view, who, path, XS_PERM_WRITE | XS_PERM_OWNER)
    if not who.privileged:
        if perms[0].domid != node.owner:
            raise XsError("EPERM", "only a privileged domain may change the owner")
        if len(perms) > PERMS_QUOTA:
            raise XsError("ENOSPC", f"more than {PERMS_QUOTA} permissions")
    view.put(path, replace(node, perms=perms))
    return view.record(Change(path, perms, old_perms=node.perms))


def release_domain(store: Store, domid: int) -> list[Change]:
    """Forget `domid` (Rule 7); return the removals, which fire watches."""
    changes: list[Change] = []
    # Sorted, an ancestor comes before its descendants: a removed subtree's
    # nodes are then simply gone when the loop reaches them.
    for path in sorted(store.paths()):
        node = store.get(path)
        if node is None or path == "/":
            continue
        if node.owner == domid:
            changes += rm(store, DOM0, path)
        elif any(p.domid == domid for p in node.perms[1:]):
            store.put(path, replace(node, perms=without_domid(node.perms, domid)))
    return changes
