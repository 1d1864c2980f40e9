"""TCP header codec (RFC 793) with the MSS and window-scale options (RFC 7323)."""

import struct
from typing import NamedTuple

from domains.xenolinux.net.checksum import checksum, fold, ones_sum, pseudo_header
from domains.xenolinux.net.ipv4 import IPPROTO_TCP

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_HDR = struct.Struct("!HHIIBBHHH")  # 20 bytes
TCP_HLEN = 20
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_MSS, TCPOPT_WSCALE = 0, 1, 2, 3


class Segment(NamedTuple):
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    wnd: int  # as on the wire (unscaled)
    mss: int  # 0: no MSS option
    wscale: int  # -1: no window-scale option
    data: bytes


def syn_options(mss: int, wscale: int | None) -> bytes:
    opts = bytes((TCPOPT_MSS, 4)) + mss.to_bytes(2, "big")
    if wscale is not None:
        opts += bytes((TCPOPT_NOP, TCPOPT_WSCALE, 3, wscale))
    return opts


def build(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    wnd: int,
    opts: bytes,
    data: bytes,
) -> bytes:
    """Header (+options) with its checksum; the caller appends `data` (covered by it)."""
    hlen = TCP_HLEN + len(opts)
    hdr = bytearray(_HDR.pack(sport, dport, seq, ack, (hlen // 4) << 4, flags, wnd, 0, 0))
    hdr += opts
    s = ones_sum(pseudo_header(src, dst, IPPROTO_TCP, hlen + len(data)) + hdr)
    if data:
        s += ones_sum(data)
    hdr[16:18] = (~fold(s) & 0xFFFF).to_bytes(2, "big")
    return bytes(hdr)


def parse(src: bytes, dst: bytes, seg: bytes) -> Segment | None:
    """A valid segment (checksum checked), or None."""
    if len(seg) < TCP_HLEN:
        return None
    sport, dport, seq, ack, off, flags, wnd, _c, _u = _HDR.unpack_from(seg)
    hlen = (off >> 4) * 4
    if hlen < TCP_HLEN or hlen > len(seg):
        return None
    if checksum(pseudo_header(src, dst, IPPROTO_TCP, len(seg)), seg) != 0:
        return None
    mss, wscale = _options(seg[TCP_HLEN:hlen]) if hlen > TCP_HLEN else (0, -1)
    return Segment(sport, dport, seq, ack, flags, wnd, mss, wscale, seg[hlen:])


def _options(opts: bytes) -> tuple[int, int]:
    mss, wscale, i = 0, -1, 0
    while i < len(opts):
        kind = opts[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            break  # malformed: ignore the rest
        length = opts[i + 1]
        if kind == TCPOPT_MSS and length == 4 and i + 4 <= len(opts):
            mss = int.from_bytes(opts[i + 2 : i + 4], "big")
        elif kind == TCPOPT_WSCALE and length == 3 and i + 3 <= len(opts):
            wscale = min(opts[i + 2], 14)
        i += length
    return mss, wscale
