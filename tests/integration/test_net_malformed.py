"""Malformed frames from a guest (issue 6 §7): runts, garbage Ethernet and IP
headers, lying lengths and bad GSO frames neither crash netback nor the bridge,
nor cut the sender off (a frame that merely breaks a size rule is dropped with
an error response, Linux's xenvif_tx_err), and the other guest's traffic still
flows. Malformed ring requests (a lying chain) are test_netif_host's
test_a_malicious_frontend_is_cut_off_alone.

d1 runs tests.kernels.netfuzz (raw tx requests with chosen sizes, and frames
through its netfront), d2 the plain net agent; the host has a NIC too (on a
wire of its own), so the bridge also cuts GSO frames for a port without TSO.
"""

import os
import struct

import dpkt
import pytest

from launcher.devspec import DeviceSpec
from launcher.hostspec import DomainSpec, HostSpec, VifSpec
from tests.integration.test_netif_host import MAC1, MAC2, _hex, _wait
from tests.kernels.netagent import digest, make_frame

MSS = 536  # GSO frames small enough for a xenstore command (hex), still cut in three
M1, M2 = bytes.fromhex(_hex(MAC1)), bytes.fromhex(_hex(MAC2))


def tcp_frame(payload: bytes, dst: bytes = M2, **ip_fields) -> bytes:
    ip = dpkt.ip.IP(src=bytes([10, 0, 0, 11]), dst=bytes([10, 0, 0, 12]), p=6,
                    data=dpkt.tcp.TCP(sport=1, dport=2, seq=1, flags=0x18, data=payload))
    ip.len = 40 + len(payload)
    for key, value in ip_fields.items():
        setattr(ip, key, value)
    return bytes(dpkt.ethernet.Ethernet(dst=dst, src=M1, data=ip))


def with_ip_len(frame: bytes, total: int) -> bytes:
    """`frame` with its IPv4 total length field set to `total` (checksum left stale)."""
    return frame[:16] + struct.pack("!H", total) + frame[18:]


def garbage_frames() -> list[tuple[bytes, int]]:
    """(frame, gso_size) pairs a well-formed ring carries, whose contents are wrong."""
    rnd = bytes((i * 37 + 11) & 0xFF for i in range(1500))
    ip_hdr = bytes([0x4F, 0]) + rnd[:18]  # IHL 15 (60 bytes) in a 20-byte header
    tcp = tcp_frame(bytes(1400))
    return [
        (rnd[:14], 0),                                    # a bare Ethernet header
        (rnd[:60], 0),                                    # garbage from the first byte
        (b"\xff" * 6 + b"\xff" * 6 + b"\x08\x00" + rnd[:46], 0),   # broadcast source MAC
        (M2 + M1 + b"\x08\x00" + ip_hdr, 0),              # IPv4 header longer than the frame
        (M2 + M1 + b"\x08\x00" + rnd[:200], 0),           # IPv4 ethertype, garbage after it
        (with_ip_len(tcp, 60000), MSS),                  # GSO: IP length past the frame
        (with_ip_len(tcp, 10), MSS),                     # GSO: IP length inside the header
        (tcp[:14 + 20 + 12] + bytes([0xF0]) + tcp[47:], MSS),  # GSO: TCP offset 60 bytes
        (M2 + M1 + b"\x08\x00" + rnd[:1400], MSS),       # GSO, not TCP at all
        (b"\xff" * 6 + M1 + b"\x08\x06" + rnd[:1400], MSS),    # GSO ARP, flooded
        (tcp_frame(bytes(1400), b"\xff" * 6), MSS),      # GSO TCP, flooded (cut for eth0)
    ]


def raw_packets() -> tuple[list, int]:
    """Packets written straight into the tx ring with lying sizes, and how many of
    them netback must drop with an error (the others carry whatever the page holds)."""
    head = M2 + M1 + b"\x88\xb5"
    dropped = [
        [[b"".hex(), 0]],                                  # an empty packet
        [[head[:5].hex(), 5]],                             # runts
        [[head[:13].hex(), 13]],
        [[(head + bytes(100)).hex(), 2000]],               # past the MTU, no GSO
        [[(head + bytes(86)).hex(), 100], [bytes(200).hex(), 200]],  # total < later slots
    ]
    passed = [[[(head + b"short").hex(), 1000]]]           # says 1000, wrote 19
    return dropped + passed, len(dropped)


@pytest.fixture
def fuzz_host(make_host, agent):
    wire = f"t{os.getpid()}-fuzz"
    vif = lambda mac, n: (VifSpec(devid=0, mac=mac, ip=f"10.0.0.1{n}"),)  # noqa: E731
    spec = HostSpec(name="t", domains=(
        DomainSpec(name="d1", memory_mib=16, kernel="tests.kernels.netfuzz", vifs=vif(MAC1, 1)),
        DomainSpec(name="d2", memory_mib=16, kernel="tests.kernels.netagent",
                   vifs=vif(MAC2, 2))),
        devices=(DeviceSpec(name="nic0", kind="nic", wire=wire),))
    h = make_host(spec)
    d1, d2 = agent(h, "d1"), agent(h, "d2")
    for g in (d1, d2):
        _wait(lambda g=g: g("net_state").get("eth0", {}).get("connected"), what="netfront")
    _wait(lambda: h.xl("nic_list")[0]["attached"], what="the NIC on xenbr0")
    return h, d1, d2


def arrives(g, frame: bytes, what: str) -> None:
    """Wait until `frame` is among what `g` received (flooded garbage may come too)."""
    want, seen = [digest(frame), len(frame), 0], []
    _wait(lambda: seen.extend(g("net_recv", dev="eth0")) or want in seen, what=what)


def exchange(d1, d2, seed: int) -> None:
    """A frame each way between d1 and d2 arrives whole."""
    there, back = [_hex(MAC2), _hex(MAC1), seed, 300], [_hex(MAC1), _hex(MAC2), seed + 1, 400]
    d1("net_send", dev="eth0", made=[there])
    d2("net_send", dev="eth0", made=[back])
    arrives(d2, make_frame(*there), "d1's frame at d2")
    arrives(d1, make_frame(*back), "d2's frame at d1")


def test_malformed_frames_are_dropped_and_traffic_flows_on(fuzz_host):
    h, d1, d2 = fuzz_host
    dom0 = h["Domain-0"]["pid"]
    exchange(d1, d2, 1)  # the bridge learns both MACs
    nic_tx = lambda: h.xl("nic_list")[0]["statistics"]["tx_frames"]  # noqa: E731
    before = nic_tx()

    frames = garbage_frames()
    for frame, gso in frames:  # one batch per GSO size: net_send takes one for all
        d1("net_send", dev="eth0", frames=[frame.hex()], gso=gso)
    packets, bad = raw_packets()
    d1("net_raw", dev="eth0", packets=packets)

    # netback answered every raw packet: the lying ones with an error, and counted them
    row = _wait(lambda: (r := h.xl("network_list", dom="d1")[0])["rx_errors"] >= bad and r,
                what="netback's error responses")
    assert row["rx_errors"] == bad and row["backend_state"] == "4"  # dropped, not cut off

    # nothing crashed, and both guests still talk, through the same Dom0
    assert h.alive() and h["Domain-0"]["pid"] == dom0
    assert h.xl("network_list", dom="d2")[0]["backend_state"] == "4"
    exchange(d1, d2, 7)
    # what flooded went out of the NIC too: 4 frames, and the broadcast TCP GSO frame
    # cut in 3 (the other GSO frames are not TCPv4 that segment() understands: whole)
    assert h.xl("nic_list")[0]["ready"] and nic_tx() - before == 7
    # d1's netfront took the error responses back (at its next transmit) without fault
    # (netfront counts error responses per slot: the two-slot packet counts twice)
    assert d1("net_counts", dev="eth0")["tx_errors"] == bad + 1
    assert d1("net_state")["eth0"]["connected"]
