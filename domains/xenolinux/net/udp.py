"""UDP (RFC 768) with the checksum always sent (0 on receive means the sender skipped it)."""

import struct

from domains.xenolinux.net.checksum import checksum, pseudo_header
from domains.xenolinux.net.ipv4 import IPPROTO_UDP

_HDR = struct.Struct("!HHHH")
UDP_HLEN = 8


def build(src: bytes, dst: bytes, sport: int, dport: int, data: bytes) -> bytes:
    length = UDP_HLEN + len(data)
    hdr = bytearray(_HDR.pack(sport, dport, length, 0))
    c = checksum(pseudo_header(src, dst, IPPROTO_UDP, length), hdr, data) or 0xFFFF
    hdr[6:8] = c.to_bytes(2, "big")
    return bytes(hdr) + data


def parse(src: bytes, dst: bytes, seg: bytes) -> tuple[int, int, bytes] | None:
    """(sport, dport, data) of a valid datagram, or None."""
    if len(seg) < UDP_HLEN:
        return None
    sport, dport, length, csum = _HDR.unpack_from(seg)
    if length < UDP_HLEN or length > len(seg):
        return None
    seg = seg[:length]
    if csum and checksum(pseudo_header(src, dst, IPPROTO_UDP, length), seg) != 0:
        return None
    return sport, dport, seg[UDP_HLEN:]
