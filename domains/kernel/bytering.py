"""Byte-stream rings: the xenstore page (io/xs_wire.h) and the PV console (io/console.h).

Unlike ring.h these are not slotted: each direction is an array of bytes plus
a free-running u32 ``cons``/``prod`` pair, and a message may straddle the wrap.

Rules:

1. The producer of a stream writes its bytes and its ``prod``; the consumer
   writes only its ``cons``. Xenstore: the guest produces ``req[]`` (writes
   ``req_prod``, ``rsp_cons``), xenstored produces ``rsp[]`` (writes
   ``rsp_prod``, ``req_cons``). Console: the guest produces ``out[]``, the
   console backend produces ``in[]``.
2. Indices are free-running u32 modulo 2^32; byte ``x`` lives at
   ``x & (size - 1)``, so sizes must be powers of two (1024, 2048).
3. Indices are loaded and stored only through ``memoryview.cast('I')``: one
   aligned 4-byte access each, never a struct pack on the shared page.
4. Producer: copy bytes in, then publish ``prod`` (x86 keeps the order, wmb).
   Consumer: snapshot ``prod``, copy bytes out into private ``bytes``, then
   publish ``cons`` so the producer cannot overwrite what is being read.
5. Validation, on every call at both ends, as xenstored's and Linux's
   ``check_indexes``: ``prod - cons`` may never exceed ``size``. If it does the
   peer lied about its index (or scribbled on ours): RingError, and nothing
   is copied or published. No state is kept besides the shared indices, so a
   reset of the page (xenstore reconnection) needs no re-attach.
6. Whoever calls ``write``/``read`` signals the event channel afterwards;
   these cores never notify.
"""

from __future__ import annotations

from typing import NamedTuple

from domains.kernel.ring import BufferLike, RingError, u32_view, writable_bytes
from hypervisor.public import console, xs_wire
from hypervisor.public.ring import RING_IDX_MASK as M

__all__ = [
    "ByteStream",
    "StreamPair",
    "XenstoreControl",
    "console_backend",
    "console_guest",
    "xenstore_guest",
    "xenstore_server",
]


class ByteStream:
    """One direction of a byte ring: ``size`` data bytes and a cons/prod pair.

    ``write`` is the producer's half and ``read`` the consumer's; an end uses
    only one of them on a given stream. ``peer`` names the other end in errors.
    """

    __slots__ = ("_mv", "_data", "_cons", "_prod", "size", "_mask", "peer")

    def __init__(
        self,
        buf: BufferLike,
        data_offset: int,
        size: int,
        cons_offset: int,
        prod_offset: int,
        *,
        peer: str = "peer",
    ) -> None:
        if size < 1 or size & (size - 1):
            raise ValueError(f"byte ring size {size} is not a power of two")
        mv = writable_bytes(buf)
        if data_offset < 0 or data_offset + size > len(mv):
            raise ValueError("byte ring data runs past the end of the buffer")
        self._mv = mv
        self._data = mv[data_offset : data_offset + size]
        self._cons = u32_view(mv, cons_offset, 1)
        self._prod = u32_view(mv, prod_offset, 1)
        self.size = size
        self._mask = size - 1
        self.peer = peer

    def _used(self, cons: int, prod: int) -> int:
        used = (prod - cons) & M
        if used > self.size:
            detail = f"prod={prod} cons={cons}: {used} bytes in a {self.size}-byte ring"
            raise RingError(self.peer, "check_indexes", detail)
        return used

    def readable(self) -> int:
        """Bytes waiting for the consumer (validated)."""
        return self._used(self._cons[0], self._prod[0])

    def writable(self) -> int:
        """Free bytes the producer may write (validated)."""
        return self.size - self._used(self._cons[0], self._prod[0])

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Producer: copy in as much of ``data`` as fits, publish ``prod``; return the count."""
        prod = self._prod[0]
        n = min(len(data), self.size - self._used(self._cons[0], prod))
        if n <= 0:
            return 0
        start = prod & self._mask
        first = min(n, self.size - start)
        if first == len(data):
            self._data[start : start + first] = data  # the common case: no copy, no wrap
        else:
            with memoryview(data) as src:
                self._data[start : start + first] = src[:first]
                if n > first:  # wrap: the rest goes to the start of the array
                    self._data[: n - first] = src[first:n]
        self._prod[0] = (prod + n) & M  # bytes are stored before this (wmb)
        return n

    def read(self, max_n: int | None = None) -> bytes:
        """Consumer: copy out up to ``max_n`` waiting bytes, then publish ``cons``."""
        cons = self._cons[0]
        n = self._used(cons, self._prod[0])  # snapshot prod; read no further (rmb)
        if max_n is not None and max_n < n:
            n = max_n
        if n <= 0:
            return b""
        start = cons & self._mask
        first = min(n, self.size - start)
        if first == n:
            out = bytes(self._data[start : start + n])
        else:
            out = b"".join((self._data[start:], self._data[: n - first]))
        # The copy is done before the producer may reuse the space (x86: no
        # load->store reordering, so Linux's mb here costs nothing).
        self._cons[0] = (cons + n) & M
        return out

    def discard(self) -> int:
        """Consumer: drop every waiting byte (xenstore reconnection); return how many."""
        cons = self._cons[0]
        n = self._used(cons, self._prod[0])
        self._cons[0] = (cons + n) & M
        return n

    def release(self) -> None:
        """Drop every view of the buffer (an mmap cannot close while they live)."""
        for view in (self._data, self._cons, self._prod, self._mv):
            view.release()


class StreamPair(NamedTuple):
    """The two streams one end uses: ``tx`` it writes, ``rx`` it reads."""

    tx: ByteStream
    rx: ByteStream

    def release(self) -> None:
        self.tx.release()
        self.rx.release()


def _xs_req(page: BufferLike, peer: str) -> ByteStream:
    return ByteStream(
        page, xs_wire.REQ_OFFSET, xs_wire.XENSTORE_RING_SIZE,
        xs_wire.REQ_CONS, xs_wire.REQ_PROD, peer=peer,
    )  # fmt: skip


def _xs_rsp(page: BufferLike, peer: str) -> ByteStream:
    return ByteStream(
        page, xs_wire.RSP_OFFSET, xs_wire.XENSTORE_RING_SIZE,
        xs_wire.RSP_CONS, xs_wire.RSP_PROD, peer=peer,
    )  # fmt: skip


def xenstore_guest(page: BufferLike) -> StreamPair:
    """The guest's end of its xenstore page: writes ``req[]``, reads ``rsp[]``."""
    return StreamPair(tx=_xs_req(page, "xenstored"), rx=_xs_rsp(page, "xenstored"))


def xenstore_server(page: BufferLike) -> StreamPair:
    """xenstored's end of a guest's page: writes ``rsp[]``, reads ``req[]``."""
    return StreamPair(tx=_xs_rsp(page, "guest"), rx=_xs_req(page, "guest"))


def _cons_out(page: BufferLike, peer: str) -> ByteStream:
    return ByteStream(
        page, console.OUT_OFFSET, console.XENCONS_OUT_SIZE,
        console.OUT_CONS, console.OUT_PROD, peer=peer,
    )  # fmt: skip


def _cons_in(page: BufferLike, peer: str) -> ByteStream:
    return ByteStream(
        page, console.IN_OFFSET, console.XENCONS_IN_SIZE,
        console.IN_CONS, console.IN_PROD, peer=peer,
    )  # fmt: skip


def console_guest(page: BufferLike) -> StreamPair:
    """The guest's console: writes ``out[]`` (its output), reads ``in[]`` (keystrokes)."""
    return StreamPair(tx=_cons_out(page, "console backend"), rx=_cons_in(page, "console backend"))


def console_backend(page: BufferLike) -> StreamPair:
    """xenconsoled's end of a guest console: writes ``in[]``, reads ``out[]``."""
    return StreamPair(tx=_cons_in(page, "guest"), rx=_cons_out(page, "guest"))


class XenstoreControl:
    """The xenstore page's control words, each one aligned u32 access.

    ``server_features`` and ``error`` are written by xenstored; ``connection``
    by the guest to ask for a reconnection (1) and by xenstored when done (0).
    """

    __slots__ = ("_words",)
    _FEATURES, _CONNECTION, _ERROR, _PORT = 0, 1, 2, 3

    def __init__(self, page: BufferLike) -> None:
        with writable_bytes(page) as mv:
            self._words = u32_view(mv, xs_wire.SERVER_FEATURES, 4)

    @property
    def server_features(self) -> int:
        return self._words[self._FEATURES]

    @server_features.setter
    def server_features(self, value: int) -> None:
        self._words[self._FEATURES] = value & M

    @property
    def connection(self) -> int:
        return self._words[self._CONNECTION]

    @connection.setter
    def connection(self, value: int) -> None:
        self._words[self._CONNECTION] = value & M

    @property
    def error(self) -> int:
        return self._words[self._ERROR]

    @error.setter
    def error(self, value: int) -> None:
        self._words[self._ERROR] = value & M

    @property
    def evtchn_port(self) -> int:
        return self._words[self._PORT]

    @evtchn_port.setter
    def evtchn_port(self, value: int) -> None:
        self._words[self._PORT] = value & M

    def release(self) -> None:
        self._words.release()
