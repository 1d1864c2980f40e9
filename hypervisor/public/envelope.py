"""The hypercall wire codec: a versioned msgpack envelope (STYLE.md 14).

Rules:
1. A domain speaks to Xen over one ZeroMQ DEALER whose routing id is the
   secret Xen handed it at spawn. Xen's ROUTER drops frames from any other id.
2. Request  (domain -> Xen): ``[VERSION, seq, hypercall, cmd, args]``.
   Reply    (Xen -> domain): ``[VERSION, REPLY, seq, rc, out]``.
   Upcall   (Xen -> domain): ``[VERSION, UPCALL]`` -- "look at shared_info".
   rc is 0 or a negated Xen errno (or a GNTST code inside ``out``).
3. A request with seq POSTED (0) is posted: Xen acts on it and sends no
   reply. Guests post EVTCHNOP_send, whose return value Linux ignores too
   (notify_remote_via_evtchn); everything else waits for its reply.
4. HYPERVISOR_multicall batches traps: its args are [[hypercall, cmd, args],
   ...]; Xen runs them in order, all but the last posted, and the reply to
   the multicall is the last one's (so a batch may end in SCHEDOP_block).
5. Decoding never trusts the peer: anything malformed raises EnvelopeError.
"""

from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1
POSTED = 0
REPLY = 0
UPCALL = 1
MAX_FRAME = 1 << 20


class EnvelopeError(ValueError):
    """A frame that is not a well-formed envelope of this version."""


@dataclass(frozen=True, slots=True)
class Request:
    seq: int
    hypercall: int
    cmd: int
    args: Any


def _unpack(frame: bytes) -> list:
    if len(frame) > MAX_FRAME:
        raise EnvelopeError("frame too large")
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise EnvelopeError(f"not msgpack: {exc.__class__.__name__}") from None
    if not isinstance(msg, list) or not msg or msg[0] != VERSION:
        raise EnvelopeError("bad envelope or version")
    return msg


def encode_request(seq: int, hypercall: int, cmd: int, args: Any = None) -> bytes:
    return msgpack.packb([VERSION, seq, hypercall, cmd, args])


def decode_request(frame: bytes) -> Request:
    return Request(*decode_request_fields(frame))


def decode_request_fields(frame: bytes) -> tuple[int, int, int, Any]:
    """decode_request without the Request object: (seq, hypercall, cmd, args),
    for the hypervisor's dispatch loop."""
    msg = _unpack(frame)
    if len(msg) != 5:
        raise EnvelopeError("bad request shape")
    _, seq, hc, cmd, args = msg
    if type(seq) is not int or type(hc) is not int or type(cmd) is not int:
        raise EnvelopeError("bad request shape")
    return seq, hc, cmd, args


def encode_reply(seq: int, rc: int, out: Any = None) -> bytes:
    return msgpack.packb([VERSION, REPLY, seq, rc, out])


UPCALL_FRAME = msgpack.packb([VERSION, UPCALL])


def decode_from_xen(frame: bytes) -> tuple[int, int, int, Any]:
    """Return (kind, seq, rc, out); an upcall is (UPCALL, 0, 0, None)."""
    msg = _unpack(frame)
    if msg[1] == UPCALL and len(msg) == 2:
        return UPCALL, 0, 0, None
    if msg[1] == REPLY and len(msg) == 5:
        return REPLY, msg[2], msg[3], msg[4]
    raise EnvelopeError("bad message from Xen")
