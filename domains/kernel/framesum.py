"""One short line about an Ethernet frame, for trace records (tcpdump's style).

Only called when tracing is on; never raises on a malformed frame.
"""

import struct

TCP_FLAGS = "FSRPAUEC"  # bit 0 (FIN) .. bit 7 (CWR)


def summary(frame: bytes) -> str:
    try:
        return _summary(frame)
    except (struct.error, IndexError, ValueError):
        return f"frame of {len(frame)} bytes"


def _summary(frame: bytes) -> str:
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0806:
        op, tpa, spa = frame[20:22], frame[38:42], frame[28:32]
        if op == b"\0\1":
            return f"ARP who-has {_ip(tpa)} tell {_ip(spa)}"
        return f"ARP {_ip(spa)} is-at {frame[22:28].hex(':')}"
    if ethertype != 0x0800:
        return f"ethertype {ethertype:#06x}, {len(frame)} bytes"
    ihl = (frame[14] & 0xF) * 4
    proto, src, dst = frame[23], _ip(frame[26:30]), _ip(frame[30:34])
    total = int.from_bytes(frame[16:18], "big")
    l4 = frame[14 + ihl:]
    if proto == 6:
        sport, dport, seq = struct.unpack_from("!HHI", l4)
        flags = "".join(c for i, c in enumerate(TCP_FLAGS) if l4[13] >> i & 1)
        size = total - ihl - (l4[12] >> 4) * 4
        return f"TCP {src}:{sport}>{dst}:{dport} {flags} {size}B"
    if proto == 17:
        sport, dport = struct.unpack_from("!HH", l4)
        return f"UDP {src}:{sport}>{dst}:{dport} {total - ihl - 8}B"
    if proto == 1:
        kind = {8: "echo request", 0: "echo reply", 3: "unreachable"}.get(l4[0], f"type {l4[0]}")
        return f"ICMP {kind} {src}>{dst}"
    return f"IP proto {proto} {src}>{dst}"


def _ip(b: bytes) -> str:
    if len(b) != 4:
        raise ValueError("short address")
    return ".".join(str(x) for x in b)
