"""Ethernet II framing (no FCS: the NIC model adds none, like a Linux driver's view)."""

import struct

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
_TYPE = struct.Struct("!H")


def header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return dst + src + _TYPE.pack(ethertype)


def parse(frame: bytes) -> tuple[bytes, bytes, int] | None:
    """(dst, src, ethertype) of a frame, or None when it is too short."""
    if len(frame) < ETH_HLEN:
        return None
    return frame[0:6], frame[6:12], _TYPE.unpack_from(frame, 12)[0]
