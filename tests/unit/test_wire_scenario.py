"""`wire` faults in fault scenarios (launcher.fault_scenario)."""

import pytest

from launcher.fault_scenario import actions, expand, parse_scenario
from launcher.hostspec import ConfigError

BASE = """
[scenario]
name = "t"
[[workload]]
domain = "d1"
[[fault]]
action = "wire"
target = "nic0"
at = 1.0
"""


def test_a_wire_fault_expands_and_ends_clean():
    sc = parse_scenario(BASE + "drop = 0.05\nreorder = 0.1\ndelay_ms = 3\nfor = 2.0\n")
    (f,) = expand(sc, 1, {})
    assert (f.action, f.target) == ("wire", "nic0")
    assert f.detail == {"drop": 0.05, "dup": 0.0, "reorder": 0.1, "delay_ms": 3,
                        "partition": False}
    assert "drop 0.05" in f.label() and "for 2.00 s" in f.label()
    start, end = actions([f])
    assert (start.at, start.clears, end.at, end.clears) == (1.0, False, 3.0, True)


def test_a_partition():
    (f,) = expand(parse_scenario(BASE + "partition = true\n"), 1, {})
    assert f.detail["partition"] is True and "partition" in f.label()


@pytest.mark.parametrize("extra", ["drop = 2", "partition = 1", "delay_ms = -1",
                                   "jitter = 1"])
def test_bad_wire_settings_are_refused(extra):
    with pytest.raises(ConfigError):
        parse_scenario(BASE + extra + "\n")
