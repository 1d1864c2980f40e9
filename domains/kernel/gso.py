"""Generic segmentation offload: cut one big TCPv4 frame into MSS-sized frames.

Rules:
1. Input is an Ethernet II + IPv4 + TCP frame whose TCP payload may exceed `gso_size`
   (the MSS the sender chose); output frames carry at most `gso_size` payload bytes each.
2. Each piece copies the IP and TCP headers (options included); IP total length, id (+i)
   and header checksum, TCP seq and checksum are rewritten; FIN and PSH stay only on the last
   piece, CWR only on the first (as Linux's tcp_gso_segment does).
3. Anything else (not TCPv4, malformed, gso_size <= 0, payload <= gso_size) comes back whole:
   segmentation never raises on bad input, the receiver's stack will drop it.

The Internet checksum helpers live here too: every domain kernel (netback, the bridge, the
guest's stack) needs them, and they must be fast in Python: summing 16-bit words equals the
big-endian integer of the data modulo 0xFFFF, since 2**16 == 1 (mod 0xFFFF), which
int.from_bytes computes in C (about 6x faster than array('H') sums; no per-byte loop).
"""

import struct

ETH_HLEN = 14
ETH_P_IP = b"\x08\x00"
IPPROTO_TCP = 6
TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
_SEQ = struct.Struct("!I")
_H = struct.Struct("!H")


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """One's-complement sum of `data` as big-endian 16-bit words (odd length: zero pad)."""
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    s = v % 0xFFFF
    return 0xFFFF if s == 0 and v else s


def fold(s: int) -> int:
    """Fold a sum of one's-complement sums back into 16 bits."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(*parts: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of the concatenation of `parts`, each of even length
    except possibly the last."""
    return ~fold(sum(map(ones_sum, parts))) & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The IPv4 pseudo-header TCP and UDP checksums cover (addresses as 4 bytes)."""
    return src + dst + bytes((0, proto)) + _H.pack(length)


def segment(frame: bytes, gso_size: int) -> list[bytes]:
    """Cut a TCPv4 GSO frame into frames of at most gso_size payload (see module rules)."""
    parsed = _parse_tcpv4(frame) if gso_size > 0 else None
    if parsed is None:
        return [frame]
    ihl, doff, total = parsed
    t = ETH_HLEN + ihl
    p = t + doff
    payload = memoryview(frame)[p : ETH_HLEN + total]
    if len(payload) <= gso_size:
        return [frame]
    eth = frame[:ETH_HLEN]
    ip = bytearray(frame[ETH_HLEN:t])
    tcp = bytearray(frame[t:p])
    ident = _H.unpack_from(ip, 4)[0]
    seq = _SEQ.unpack_from(tcp, 4)[0]
    flags = tcp[13]
    src, dst = bytes(ip[12:16]), bytes(ip[16:20])
    out = []
    n = (len(payload) + gso_size - 1) // gso_size
    for i in range(n):
        piece = payload[i * gso_size : (i + 1) * gso_size]
        f = flags
        if i:
            f &= ~TCP_CWR
        if i < n - 1:
            f &= ~(TCP_FIN | TCP_PSH)
        _H.pack_into(ip, 2, ihl + doff + len(piece))
        _H.pack_into(ip, 4, (ident + i) & 0xFFFF)
        _H.pack_into(ip, 10, 0)
        _H.pack_into(ip, 10, checksum(ip))
        _SEQ.pack_into(tcp, 4, (seq + i * gso_size) & 0xFFFFFFFF)
        tcp[13] = f
        _H.pack_into(tcp, 16, 0)
        ph = pseudo_header(src, dst, IPPROTO_TCP, doff + len(piece))
        _H.pack_into(tcp, 16, checksum(ph, tcp, piece))
        out.append(b"".join((eth, ip, tcp, piece)))
    return out


def _parse_tcpv4(frame: bytes) -> tuple[int, int, int] | None:
    """(IP header length, TCP header length, IP total length) of a sane TCPv4 frame, or None."""
    if len(frame) < ETH_HLEN + 40 or frame[12:14] != ETH_P_IP:
        return None
    vihl = frame[ETH_HLEN]
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or ihl < 20 or frame[ETH_HLEN + 9] != IPPROTO_TCP:
        return None
    total = _H.unpack_from(frame, ETH_HLEN + 2)[0]
    if total > len(frame) - ETH_HLEN or total < ihl + 20:
        return None
    doff = (frame[ETH_HLEN + ihl + 12] >> 4) * 4
    if doff < 20 or ihl + doff > total:
        return None
    return ihl, doff, total
