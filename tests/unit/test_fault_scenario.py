"""Fault scenarios as data (launcher.fault_scenario): parsing, errors, and
timelines that a seed replays exactly."""

import pathlib

import pytest

from launcher.fault_scenario import (
    actions,
    expand,
    load_scenario,
    parse_scenario,
)
from launcher.hostspec import ConfigError

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "faults"
SCENARIOS = sorted(p for p in EXAMPLES.glob("*.toml") if "[scenario]" in p.read_text())
DEVICES = {"d1": "vbd-d1-xvda", "d2": "vbd-d2-xvda", "honest": "vbd-honest-xvda"}

BASE = """
[scenario]
name = "t"
[[workload]]
domain = "d1"
"""


def test_the_ready_scenarios_are_there():
    names = {p.stem for p in SCENARIOS}
    assert {"kill-domu", "kill-dom0", "kill-disk-device", "disk-hang", "disk-eio", "stop-cont",
            "hypervisor-crash", "malicious-frontend", "random-20"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_example_parses_and_expands(path):
    sc = load_scenario(path)
    assert sc.description and sc.workloads
    assert sc.host == "default" or pathlib.Path(sc.host).exists()
    for version in (sc, sc.shortened()):
        faults = expand(version, 1, DEVICES)
        assert faults and [f.index for f in faults] == list(range(1, len(faults) + 1))
        assert all(f.target not in ("device:d1", "device:d2") for f in faults)
    assert sc.shortened().duration <= sc.duration


def test_expectations_of_the_scenarios():
    assert load_scenario(EXAMPLES / "kill-dom0.toml").expect == "recovery"  # Dom0 restarts
    assert load_scenario(EXAMPLES / "kill-disk-device.toml").expect == "recovery"
    assert load_scenario(EXAMPLES / "hypervisor-crash.toml").expect == "host-reboot"


def test_workloads_go_on_the_kernel_command_line():
    sc = parse_scenario(BASE + 'path = "/log"\nbatch = 4\nrecords = 100\npause = 0.5\n'
                        '[[workload]]\ndomain = "d2"\nprogram = "dd"\n'
                        'args = ["if=/dev/zero", "of=/x", "count=9"]\n')
    assert sc.workloads[0].init_run() == "init.run=/bin/writer,/log,4,100,0.5"
    assert sc.workloads[1].init_run() == "init.run=/bin/dd,if=/dev/zero,of=/x,count=9"


@pytest.mark.parametrize("extra, message", [
    ("[oops]\n", "unknown key 'oops'"),
    ("[[fault]]\naction = 'kill'\ntarget = 'd1'\n", "either at = SECONDS or between"),
    ("[[fault]]\naction = 'explode'\ntarget = 'd1'\nat = 1\n", "action 'explode'"),
    ("[[fault]]\naction = 'kill'\nat = 1\n", "needs target"),
    ("[[fault]]\naction = 'kill'\ntarget = 'd1'\nat = 1\nsignal = 'HUP'\n", "signal 'HUP'"),
    ("[[fault]]\naction = 'disk'\ntarget = 'd1'\nat = -1\n", "seconds >= 0"),
    ("[[fault]]\naction = 'disk'\ntarget = 'd1'\nat = 1\nrate = 2\n", "rate must be 0..1"),
    ("[[fault]]\naction = 'kill'\ntarget = 'd1'\nat = 1\nbogus = 1\n", "unknown key 'bogus'"),
    ("[random]\nkinds = ['meteor']\n", "random kind 'meteor'"),
    ("[random]\ninterval = [2, 1]\n", "below"),
])
def test_errors_name_the_file_and_the_rule(extra, message):
    with pytest.raises(ConfigError) as err:
        parse_scenario(BASE + extra, "s.toml")
    assert message in str(err.value) and str(err.value).startswith("s.toml")


def test_a_scenario_needs_a_writer_and_a_name():
    with pytest.raises(ConfigError, match="needs a name"):
        parse_scenario("[[workload]]\ndomain = 'd1'\n")
    with pytest.raises(ConfigError, match="program = \"writer\""):
        parse_scenario("[scenario]\nname = 'x'\n[[workload]]\ndomain = 'd1'\nprogram = 'dd'\n")
    with pytest.raises(ConfigError, match="no commas or spaces"):
        parse_scenario(BASE + "path = '/a,b'\n")


def test_random_choices_replay_with_the_seed():
    sc = load_scenario(EXAMPLES / "random-20.toml")
    one, again, other = (expand(sc, s, DEVICES) for s in (7, 7, 8))
    assert one == again and one != other
    assert len(one) == 20
    assert all(a.at < b.at for a, b in zip(one, one[1:], strict=False))
    assert {f.target for f in one} <= {"d1", "d2", "Domain-0", "vbd-d1-xvda", "vbd-d2-xvda"}


def test_random_times_and_targets_of_a_fault():
    sc = parse_scenario(BASE + "[[fault]]\naction = 'kill'\ntarget = ['d1', 'd2']\n"
                        "between = [1, 2]\n")
    draws = {(f.at, f.target) for s in range(20) for f in expand(sc, s, DEVICES)}
    assert all(1 <= at <= 2 for at, _ in draws)
    assert {t for _, t in draws} == {"d1", "d2"}


def test_repeats_and_ends_become_actions_in_time_order():
    sc = parse_scenario(BASE + "[[fault]]\naction = 'kill'\ntarget = 'd1'\nat = 1\nrepeat = 3\n"
                        "every = 2\n[[fault]]\naction = 'disk'\ntarget = 'device:d1'\n"
                        "at = 0.5\nmode = 'hang'\nfor = 1\n")
    faults = expand(sc, 1, DEVICES)
    assert [(f.at, f.action, f.target) for f in faults] == [
        (0.5, "disk", "vbd-d1-xvda"), (1.0, "kill", "d1"), (3.0, "kill", "d1"),
        (5.0, "kill", "d1")]
    acts = actions(faults)
    assert [(a.at, a.fault.index, a.clears) for a in acts] == [
        (0.5, 1, False), (1.0, 2, False), (1.5, 1, True), (3.0, 3, False), (5.0, 4, False)]
    assert faults[0].label() == "disk hang for 1.00 s"


def test_short_overrides_duration_and_random_count():
    sc = load_scenario(EXAMPLES / "random-20.toml").shortened()
    assert sc.random.count < 20 and len(expand(sc, 1, DEVICES)) == sc.random.count
