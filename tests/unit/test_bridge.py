"""Dom0's learning bridge (domains/dom0/bridge.py): learning, flooding, ageing, GSO."""

import sys
import types

import pytest

from domains.dom0 import bridge as bridge_mod
from domains.dom0.bridge import AGEING_TIME_S, Bridge

A, B, C = bytes.fromhex("00163e000001"), bytes.fromhex("00163e000002"), bytes.fromhex(
    "00163e000003")
BCAST = b"\xff" * 6


class Port:
    def __init__(self, name: str, gso: bool = True) -> None:
        self.name, self.gso, self.got = name, gso, []

    def deliver(self, frame: bytes, gso_size: int) -> None:
        self.got.append((frame, gso_size))


def frame(dst: bytes, src: bytes, body: bytes = b"x" * 46) -> bytes:
    return dst + src + b"\x08\x00" + body


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def br():
    clock = Clock()
    b = Bridge("xenbr0", now=clock)
    ports = [Port("vif1.0"), Port("vif2.0"), Port("eth0")]
    for p in ports:
        b.add_port(p)
    return b, ports, clock


def test_unknown_unicast_and_broadcast_flood_but_never_back(br):
    b, (p1, p2, p3), _ = br
    b.input(p1, frame(B, A))
    b.input(p1, frame(BCAST, A))
    assert p1.got == []
    assert [f[:6] for f, _ in p2.got] == [B, BCAST] and p3.got == p2.got
    assert b.statistics().flooded == 2


def test_learnt_unicast_goes_to_one_port(br):
    b, (p1, p2, p3), _ = br
    b.input(p2, frame(A, B))  # teaches B -> p2
    p1.got.clear()
    p3.got.clear()
    b.input(p1, frame(B, A))
    assert [f[:6] for f, _ in p2.got] == [B] and p3.got == []
    assert b.port_of(A) is p1 and b.port_of(B) is p2
    assert b.statistics().forwarded == 1


def test_frame_to_a_mac_behind_its_own_port_is_dropped(br):
    b, (p1, p2, p3), _ = br
    b.input(p1, frame(BCAST, A))
    b.input(p1, frame(BCAST, C))  # C also behind p1
    p2.got.clear()
    p3.got.clear()
    b.input(p1, frame(C, A))
    assert p1.got == [] and p2.got == [] and p3.got == []


def test_multicast_source_is_not_learnt(br):
    b, (p1, _, _), _ = br
    b.input(p1, frame(B, b"\x01" + A[1:]))
    assert b.statistics().macs == 0


def test_entries_age_out(br):
    b, (p1, p2, p3), clock = br
    b.input(p2, frame(A, B))
    clock.t += AGEING_TIME_S + 1
    assert b.port_of(B) is None
    p3.got.clear()
    b.input(p1, frame(B, A))
    assert len(p3.got) == 1  # flooded again
    clock.t += AGEING_TIME_S + 1
    assert b.age() == 1 and b.statistics().macs == 0  # B went at the lookup above


def test_remove_port_forgets_its_macs(br):
    b, (p1, p2, p3), _ = br
    b.input(p2, frame(A, B))
    b.remove_port(p2)
    assert b.port_of(B) is None and b.statistics().ports == ("vif1.0", "eth0")
    b.input(p1, frame(B, A))
    assert len(p3.got) == 2 and p2.got == []


def test_short_frames_are_ignored(br):
    b, (p1, p2, _), _ = br
    b.input(p1, b"\xff" * 10)
    assert p2.got == [] and b.statistics().macs == 0


def test_the_table_is_bounded(br, monkeypatch):
    b, (p1, p2, _), _ = br
    monkeypatch.setattr(bridge_mod, "MAX_FDB", 4)
    for i in range(10):
        b.input(p1, frame(BCAST, bytes([0, 0x16, 0x3E, 0, 1, i])))
    assert b.statistics().macs == 4


def test_gso_frame_is_cut_for_ports_without_gso(br, monkeypatch):
    # domains.kernel.gso is written in parallel (helper A1): a stand-in with its
    # signature, only here, cuts the payload after a 54-byte header.
    def segment(f: bytes, gso_size: int) -> list[bytes]:
        head, data = f[:54], f[54:]
        return [head + data[i:i + gso_size] for i in range(0, len(data), gso_size)]

    stand_in = types.ModuleType("domains.kernel.gso")
    stand_in.segment = segment
    monkeypatch.setitem(sys.modules, "domains.kernel.gso", stand_in)
    monkeypatch.setattr(bridge_mod, "_segment", None)
    b, (p1, p2, p3), _ = br
    p3.gso = False
    big = frame(B, A, bytes(40) + bytes(range(250)) * 12)  # 3000 bytes of payload
    b.input(p1, big, 1000)
    assert p2.got == [(big, 1000)]
    assert [len(f) - 54 for f, _ in p3.got] == [1000, 1000, 1000]
    assert all(g == 0 for _, g in p3.got)
    assert b.statistics().segmented == 1
