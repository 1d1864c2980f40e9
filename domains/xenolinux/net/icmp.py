"""ICMP (RFC 792): echo request/reply, and destination unreachable for UDP's closed ports."""

import struct
from typing import NamedTuple

from domains.xenolinux.net.checksum import checksum

ICMP_ECHOREPLY, ICMP_DEST_UNREACH, ICMP_ECHO = 0, 3, 8
ICMP_PORT_UNREACH = 3
_HDR = struct.Struct("!BBHHH")  # type, code, checksum, id, seq (or unused for unreach)


class IcmpMessage(NamedTuple):
    type: int
    code: int
    ident: int
    seq: int
    data: bytes


def build(type_: int, code: int, ident: int, seq: int, data: bytes) -> bytes:
    msg = bytearray(_HDR.pack(type_, code, 0, ident & 0xFFFF, seq & 0xFFFF))
    msg += data
    msg[2:4] = checksum(msg).to_bytes(2, "big")
    return bytes(msg)


def port_unreachable(ip_packet: bytes) -> bytes:
    """The reply to a datagram for a closed port: its IP header and first 8 payload bytes."""
    ihl = (ip_packet[0] & 0xF) * 4
    return build(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, ip_packet[: ihl + 8])


def parse(data: bytes) -> IcmpMessage | None:
    if len(data) < _HDR.size or checksum(data) != 0:
        return None
    type_, code, _c, ident, seq = _HDR.unpack_from(data)
    return IcmpMessage(type_, code, ident, seq, data[_HDR.size :])
