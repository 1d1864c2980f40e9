"""Xenstore path rules (xenstored is_valid_nodename, canonicalize).

Rule 1: an absolute path starts with "/", holds only alphanumerics and
        "-/_@", has no "//" and no trailing "/" (except "/" itself), and is
        at most XENSTORE_ABS_PATH_MAX bytes.
Rule 2: any other path is relative (at most XENSTORE_REL_PATH_MAX bytes) and
        is taken under the caller's home, /local/domain/<domid>/.
Rule 3: "@introduceDomain" and "@releaseDomain" name events, not nodes: they
        are valid only as WATCH/UNWATCH paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from hypervisor.public.xs_wire import XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX

from .perms import XsError

INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
SPECIAL_PATHS = (INTRODUCE_DOMAIN, RELEASE_DOMAIN)

_VALID = re.compile(r"[A-Za-z0-9\-/_@]+")


def domain_path(domid: int) -> str:
    """The home of a domain: /local/domain/<domid>."""
    return f"/local/domain/{domid}"


def decode(raw: bytes) -> str:
    """Paths travel as bytes; anything outside ASCII cannot be valid."""
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise XsError("EINVAL", "path is not ASCII") from None


def canonicalize(path: str, domid: int) -> str:
    """The absolute form of a node path given by `domid`; XsError(EINVAL) if invalid."""
    if path.startswith("@"):
        raise XsError("EINVAL", f"{path!r} is not a node")
    if not path.startswith("/"):
        if len(path) > XENSTORE_REL_PATH_MAX:
            raise XsError("EINVAL", "relative path too long")
        path = f"{domain_path(domid)}/{path}"
    _check_absolute(path)
    return path


def canonicalize_watch(path: str, domid: int) -> tuple[str, str]:
    """(absolute path or special name, prefix to strip from events)."""
    if path in SPECIAL_PATHS:
        return path, ""
    absolute = canonicalize(path, domid)
    prefix = "" if path.startswith("/") else domain_path(domid) + "/"
    return absolute, prefix


def _check_absolute(path: str) -> None:
    if len(path) > XENSTORE_ABS_PATH_MAX:
        raise XsError("EINVAL", "path too long")
    if not _VALID.fullmatch(path) or "//" in path:
        raise XsError("EINVAL", f"invalid path {path[:64]!r}")
    if path.endswith("/") and path != "/":
        raise XsError("EINVAL", "trailing slash")


def parent(path: str) -> str:
    """The parent of an absolute path other than "/"."""
    head = path.rsplit("/", 1)[0]
    return head or "/"


def basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def child(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


def ancestors(path: str) -> Iterator[str]:
    """Strict ancestors of an absolute path, nearest first, ending with "/"."""
    while path != "/":
        path = parent(path)
        yield path


def is_under(path: str, root: str) -> bool:
    """True if `path` is `root` or one of its descendants."""
    if root == "/" or path == root:
        return path.startswith("/")
    return path.startswith(root + "/")


def depth_below(path: str, root: str) -> int:
    """How many components `path` lies below `root` (0 for the node itself)."""
    if path == root:
        return 0
    return path.count("/") - (0 if root == "/" else root.count("/"))
