"""The xenstore wire protocol and ring page (io/xs_wire.h, docs/misc/xenstore*.txt)."""

import enum
import struct
from dataclasses import dataclass


class XsdSockmsgType(enum.IntEnum):
    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    INVALID = 0xFFFF


# The errno names xenstored may send in an ERROR reply (xsd_errors[]).
XSD_ERRORS = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
    "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
)

XSD_HEADER_FORMAT = "<IIII"  # type, req_id, tx_id, len
XSD_HEADER_SIZE = struct.calcsize(XSD_HEADER_FORMAT)
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

# struct xenstore_domain_interface (one 4 KiB page): two byte streams.
XENSTORE_RING_SIZE = 1024
REQ_OFFSET = 0
RSP_OFFSET = 1024
REQ_CONS = 2048
REQ_PROD = 2052
RSP_CONS = 2056
RSP_PROD = 2060
SERVER_FEATURES = 2064
CONNECTION = 2068
ERROR = 2072
EVTCHN_PORT = 2076

XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1
# Model value of `connection` (not in Xen): written by a xenstored that was
# restarted with Domain-0 to ask the guest for a reconnection (the guest then
# writes XENSTORE_RECONNECT, as for one it asks for itself).
XENSTORE_RESTARTED = 2
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3


# --- framing -------------------------------------------------------------
# Rules: a message is one 16-byte header plus `len` payload bytes; `len` may
# never exceed XENSTORE_PAYLOAD_MAX in either direction, and a peer that sends
# a longer one is disconnected (WireError), never trusted to resynchronise.

_HEADER = struct.Struct(XSD_HEADER_FORMAT)
_U32_MAX = 0xFFFFFFFF


class WireError(ValueError):
    """The byte stream broke the framing rules; the connection must be dropped."""


@dataclass(frozen=True, slots=True)
class XsMsg:
    """One xsd_sockmsg: header fields plus the raw payload."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes


def pack_msg(type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """Encode one message; WireError if a field or the payload is out of range."""
    if len(payload) > XENSTORE_PAYLOAD_MAX:
        raise WireError(f"payload of {len(payload)} bytes exceeds XENSTORE_PAYLOAD_MAX")
    if not all(0 <= v <= _U32_MAX for v in (type, req_id, tx_id)):
        raise WireError("header field does not fit in a u32")
    return _HEADER.pack(type, req_id, tx_id, len(payload)) + bytes(payload)


class MessageParser:
    """Reassembles messages from a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> list[XsMsg]:
        """Buffer `data`; return every message now complete, in order."""
        if self._broken:
            raise WireError("stream already rejected")
        self._buf += data
        out: list[XsMsg] = []
        while (msg := self._next()) is not None:
            out.append(msg)
        return out

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a message."""
        return len(self._buf)

    def _next(self) -> XsMsg | None:
        if len(self._buf) < XSD_HEADER_SIZE:
            return None
        type_, req_id, tx_id, length = _HEADER.unpack_from(self._buf)
        if length > XENSTORE_PAYLOAD_MAX:
            # Xen disconnects such a client: nothing after it can be framed.
            self._broken = True
            raise WireError(f"message len {length} exceeds XENSTORE_PAYLOAD_MAX")
        end = XSD_HEADER_SIZE + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[XSD_HEADER_SIZE:end])
        del self._buf[:end]
        return XsMsg(type_, req_id, tx_id, payload)


def split_fields(payload: bytes) -> list[bytes]:
    """NUL-separated fields; a single trailing NUL terminates, it adds no field."""
    if not payload:
        return []
    if payload.endswith(b"\0"):
        payload = payload[:-1]
    return payload.split(b"\0")


def join_fields(*fields: bytes | str, terminate: bool = True) -> bytes:
    """Join fields with NULs (str as UTF-8); `terminate` adds the final NUL."""
    raw = [f.encode() if isinstance(f, str) else bytes(f) for f in fields]
    body = b"\0".join(raw)
    return body + b"\0" if terminate and raw else body
