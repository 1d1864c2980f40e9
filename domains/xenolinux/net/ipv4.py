"""IPv4 header codec. The stack sets DF on everything it sends and never fragments, so
fragments it receives (MF set or offset > 0) are dropped: path MTU is the link MTU here."""

import errno
import socket
import struct
from typing import NamedTuple

from domains.xenolinux.net.checksum import checksum

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
DEFAULT_TTL = 64
IP_DF = 0x4000
_HDR = struct.Struct("!BBHHHBBH4s4s")  # 20 bytes, no options on output


class IpHeader(NamedTuple):
    src: bytes  # 4 bytes
    dst: bytes
    proto: int
    ttl: int
    ident: int


def aton(ip: str) -> bytes:
    """'10.0.0.1' -> 4 bytes; OSError(EINVAL) on anything else (no '10.1' shorthands)."""
    try:
        if ip.count(".") == 3:
            return socket.inet_aton(ip)
    except (OSError, TypeError, AttributeError):
        pass
    raise OSError(errno.EINVAL, f"bad IPv4 address {ip!r}")


def ntoa(ip: bytes) -> str:
    return socket.inet_ntoa(ip)


def to_int(ip: bytes) -> int:
    return int.from_bytes(ip, "big")


def mask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


def header(
    src: bytes, dst: bytes, proto: int, payload_len: int, ident: int, ttl: int = DEFAULT_TTL
) -> bytes:
    hdr = bytearray(
        _HDR.pack(0x45, 0, 20 + payload_len, ident & 0xFFFF, IP_DF, ttl, proto, 0, src, dst)
    )
    hdr[10:12] = checksum(hdr).to_bytes(2, "big")
    return bytes(hdr)


def parse(pkt: bytes) -> tuple[IpHeader, bytes] | None:
    """(header, payload) of a valid unfragmented IPv4 packet, or None (drop it)."""
    if len(pkt) < 20:
        return None
    vihl, _tos, total, ident, off, ttl, proto, _c, src, dst = _HDR.unpack_from(pkt)
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or ihl < 20 or total < ihl or total > len(pkt):
        return None
    if off & 0x3FFF or checksum(pkt[:ihl]) != 0:  # MF or an offset: a fragment
        return None
    return IpHeader(src, dst, proto, ttl, ident), pkt[ihl:total]


def parse_quoted(data: bytes) -> tuple[IpHeader, bytes] | None:
    """The IP header and first payload bytes an ICMP error quotes (possibly cut short)."""
    if len(data) < 20 or data[0] >> 4 != 4 or (data[0] & 0xF) < 5:
        return None
    vihl, _tos, _total, ident, _off, ttl, proto, _c, src, dst = _HDR.unpack_from(data)
    return IpHeader(src, dst, proto, ttl, ident), data[(vihl & 0xF) * 4 :]
