"""Node permissions and who may do what (xenstored perm_for_conn).

Rule 1: a node's permission list is `<letter><domid>` entries; letters are
        `n` none, `r` read, `w` write, `b` both.
Rule 2: the first entry names the owner, and its letter is the default access
        of every domain not listed later.
Rule 3: privileged connections (Domain-0) and the owner get read, write and
        owner rights; anyone else gets the first matching later entry, else
        the default.
Rule 4: only the owner may change a node's permissions, and only a privileged
        connection may hand the node to another owner.

Errors carry the errno *name* that xenstored puts in an ERROR reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypervisor.public.xs_wire import XSD_ERRORS

XS_PERM_NONE = 0
XS_PERM_READ = 1
XS_PERM_WRITE = 2
XS_PERM_OWNER = 8
_FULL = XS_PERM_READ | XS_PERM_WRITE | XS_PERM_OWNER

_LETTER_BITS = {"n": XS_PERM_NONE, "r": XS_PERM_READ, "w": XS_PERM_WRITE, "b": 3}
DOMID_MAX = 0xFFFF


class XsError(Exception):
    """A request failed; `errno` is the name sent back, e.g. "ENOENT"."""

    def __init__(self, errno: str, detail: str = "") -> None:
        if errno not in XSD_ERRORS:
            raise ValueError(f"{errno!r} is not an errno name xenstored sends")
        super().__init__(f"{errno}: {detail}" if detail else errno)
        self.errno = errno
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Perm:
    """One permission entry, e.g. Perm("r", 5) is "r5"."""

    letter: str
    domid: int

    def __post_init__(self) -> None:
        if self.letter not in _LETTER_BITS or not 0 <= self.domid <= DOMID_MAX:
            raise XsError("EINVAL", f"bad permission {self.letter!r}{self.domid!r}")

    @property
    def bits(self) -> int:
        return _LETTER_BITS[self.letter]

    @classmethod
    def parse(cls, text: str | bytes) -> Perm:
        """Parse "n0", "r5", "w3" or "b2"; XsError(EINVAL) otherwise."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        digits = text[1:]
        # isdecimal() also admits non-ASCII digits; xenstored only knows ASCII.
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 5:
            raise XsError("EINVAL", f"bad permission {text!r}")
        return cls(text[:1], int(digits))

    def __str__(self) -> str:
        return f"{self.letter}{self.domid}"


Perms = tuple[Perm, ...]


def parse_perms(items: list[str] | list[bytes]) -> Perms:
    """A whole list; at least the owner entry is required."""
    if not items:
        raise XsError("EINVAL", "a permission list needs an owner entry")
    return tuple(Perm.parse(item) for item in items)


def format_perms(perms: Perms) -> list[str]:
    return [str(p) for p in perms]


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity a request is checked against: a domid and its privilege."""

    domid: int
    privileged: bool = False

    def access(self, perms: Perms) -> int:
        """perm_for_conn: the XS_PERM_* bits this caller has on a node."""
        if self.privileged or perms[0].domid == self.domid:
            return _FULL
        for perm in perms[1:]:
            if perm.domid == self.domid:
                return perm.bits
        return perms[0].bits

    def may(self, perms: Perms, want: int) -> bool:
        return self.access(perms) & want == want


def inherit(parent: Perms, creator: Caller) -> Perms:
    """Permissions of a new node: the parent's, but an unprivileged creator owns it."""
    if creator.privileged:
        return parent
    return (Perm(parent[0].letter, creator.domid), *parent[1:])


def without_domid(perms: Perms, domid: int) -> Perms:
    """Drop the non-owner entries naming `domid` (access revoked on release)."""
    return (perms[0], *(p for p in perms[1:] if p.domid != domid))
