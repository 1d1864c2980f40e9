"""TCP header codec (RFC 793) with the MSS and window-scale options (RFC 7323) and SACK
(RFC 2018: SACK-permitted on the SYN, up to 4 blocks in an ACK without timestamps)."""

import struct
from typing import NamedTuple

from domains.xenolinux.net.checksum import checksum, fold, ones_sum, pseudo_header
from domains.xenolinux.net.ipv4 import IPPROTO_TCP

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_HDR = struct.Struct("!HHIIBBHHH")  # 20 bytes
_SACK_BLOCK = struct.Struct("!II")
TCP_HLEN = 20
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_MSS, TCPOPT_WSCALE = 0, 1, 2, 3
TCPOPT_SACK_PERM, TCPOPT_SACK = 4, 5
MAX_SACK_BLOCKS = 4  # 2 + 8 * 4 = 34 of the 40 option bytes


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
    sack_ok: bool = False  # SACK-permitted option (SYN)
    sacks: tuple[tuple[int, int], ...] = ()  # SACK blocks (left, right) as sent


def syn_options(mss: int, wscale: int | None, sack_ok: bool = False) -> bytes:
    """Linux's layout: MSS, then NOP NOP SACK-permitted, then NOP window-scale."""
    opts = bytes((TCPOPT_MSS, 4)) + mss.to_bytes(2, "big")
    if sack_ok:
        opts += bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK_PERM, 2))
    if wscale is not None:
        opts += bytes((TCPOPT_NOP, TCPOPT_WSCALE, 3, wscale))
    return opts


def sack_option(blocks) -> bytes:
    """NOP NOP SACK with the (left, right) blocks: 4 + 8n bytes, 32-bit aligned."""
    n = min(len(blocks), MAX_SACK_BLOCKS)
    out = bytearray((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK, 2 + 8 * n))
    for left, right in blocks[:n]:
        out += _SACK_BLOCK.pack(left, right)
    return bytes(out)


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
    if hlen == TCP_HLEN:
        return Segment(sport, dport, seq, ack, flags, wnd, 0, -1, seg[hlen:])
    mss, wscale, sack_ok, sacks = _options(seg[TCP_HLEN:hlen])
    return Segment(sport, dport, seq, ack, flags, wnd, mss, wscale, seg[hlen:], sack_ok, sacks)


def _options(opts: bytes) -> tuple[int, int, bool, tuple]:
    mss, wscale, i = 0, -1, 0
    sack_ok, sacks = False, ()
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
        elif kind == TCPOPT_SACK_PERM and length == 2:
            sack_ok = True
        elif kind == TCPOPT_SACK and length % 8 == 2 and i + length <= len(opts):
            sacks = tuple(_SACK_BLOCK.iter_unpack(opts[i + 2 : i + length]))
        i += length
    return mss, wscale, sack_ok, sacks
