"""The firmware's restart limit (launcher.firmware rule 3), with an injected clock."""

from launcher.firmware import RestartLimit


def test_restart_limit_window():
    now = [0.0]
    limit = RestartLimit(5, 30.0, clock=lambda: now[0])
    assert [limit.allow() for _ in range(6)] == [True] * 5 + [False]
    now[0] = 29.9
    assert not limit.allow()  # refusals are not counted as restarts
    now[0] = 30.0  # the five restarts at t=0 have left the window
    assert [limit.allow() for _ in range(6)] == [True] * 5 + [False]


def test_spread_out_restarts_are_never_refused():
    now = [0.0]
    limit = RestartLimit(5, 30.0, clock=lambda: now[0])
    for i in range(20):
        now[0] = i * 6.0
        assert limit.allow()
