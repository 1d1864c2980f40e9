"""The link's fault model (devices.wirefaults): seeded, clock injected."""

import pytest

from devices.wirefaults import CLEAN, REORDER_HOLD_NS, WireFaults, WireSettings

MS = 1_000_000
N = 2000


def run(settings: WireSettings, n: int = N, seed: int = 1, gap_ns: int = 1000) -> list[bytes]:
    """Offer n numbered frames gap_ns apart; everything that left, in order."""
    w = WireFaults(settings, seed)
    out, now = [], 0
    for i in range(n):
        w.offer(i.to_bytes(4, "big"), now)
        out += w.due(now)
        now += gap_ns
    out += w.due(now + 10_000 * MS)
    return out


def numbers(frames: list[bytes]) -> list[int]:
    return [int.from_bytes(f, "big") for f in frames]


def test_clean_passes_everything_at_once_in_order():
    w = WireFaults(CLEAN)
    w.offer(b"a", 5)
    assert w.due(5) == [b"a"] and w.next_deadline() is None
    assert numbers(run(CLEAN)) == list(range(N))


def test_drop_loses_about_that_share():
    got = numbers(run(WireSettings(drop=0.1)))
    assert 0.85 * N < len(got) < 0.95 * N
    assert got == sorted(got)


def test_dup_repeats_about_that_share():
    got = numbers(run(WireSettings(dup=0.1)))
    assert 1.05 * N < len(got) < 1.15 * N
    assert set(got) == set(range(N))


def test_reorder_swaps_frames_without_losing_any():
    got = numbers(run(WireSettings(reorder=0.1)))
    assert sorted(got) == list(range(N))
    inversions = sum(a > b for a, b in zip(got[:-1], got[1:], strict=True))
    assert 0.05 * N < inversions < 0.15 * N


def test_a_reordered_frame_leaves_after_the_hold_if_nothing_follows():
    w = WireFaults(WireSettings(reorder=1.0))
    w.offer(b"x", 0)
    assert w.due(0) == [] and w.next_deadline() == REORDER_HOLD_NS
    assert w.due(REORDER_HOLD_NS) == [b"x"]


def test_delay_holds_every_frame_for_that_long():
    w = WireFaults(WireSettings(delay_ms=5))
    w.offer(b"a", 0)
    w.offer(b"b", MS)
    assert w.due(5 * MS - 1) == []
    assert w.next_deadline() == 5 * MS
    assert w.due(5 * MS) == [b"a"] and w.due(6 * MS) == [b"b"]


def test_partition_drops_everything_including_what_was_in_flight():
    w = WireFaults(WireSettings(delay_ms=5))
    w.offer(b"a", 0)
    w.set(WireSettings(partition=True))
    w.offer(b"b", 0)
    assert w.due(100 * MS) == [] and w.counts["partitioned"] == 1
    w.set(CLEAN)
    w.offer(b"c", 0)
    assert w.due(0) == [b"c"]


def test_same_seed_same_run_other_seed_other_run():
    s = WireSettings(drop=0.05, dup=0.05, reorder=0.05)
    assert run(s, seed=7) == run(s, seed=7)
    assert run(s, seed=7) != run(s, seed=8)


def test_settings_are_checked_and_updated_partially():
    with pytest.raises(ValueError):
        WireSettings(drop=2)
    s = WireSettings(drop=0.5).updated(dup=0.1, reorder=None)
    assert (s.drop, s.dup, s.reorder) == (0.5, 0.1, 0.0)
    assert "drop 0.5" in s.describe() and CLEAN.describe() == "clean"
