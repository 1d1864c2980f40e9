"""Kind "nic" in host descriptions (launcher.devspec)."""

import pytest

from launcher.devspec import DeviceSpec
from launcher.hostspec import ConfigError, parse_host_toml

TOML = """
[host]
name = "h1"
[[device]]
name = "nic0"
kind = "nic"
wire = "lab0"
tap = "xltap0"
tap_netns = "ns1"
drop = 0.05
delay_ms = 2
partition = false
"""


def test_a_nic_from_toml_and_its_process_options():
    spec = parse_host_toml(TOML)
    (nic,) = spec.devices
    assert (nic.kind, nic.wire, nic.tap, nic.bridge) == ("nic", "lab0", "xltap0", "xenbr0")
    argv = nic.argv()
    assert argv[argv.index("--wire") + 1] == "lab0"
    assert argv[argv.index("--tap-netns") + 1] == "ns1"
    assert argv[argv.index("--drop") + 1] == "0.05"
    assert "--partition" not in argv and "--image" not in argv


@pytest.mark.parametrize("fields", [
    {"kind": "nic", "wire": "no/slash"},
    {"kind": "nic", "tap": "a-name-far-too-long"},
    {"kind": "nic", "tap_netns": "ns"},  # a netns without a tap
    {"kind": "nic", "drop": 1.5},
    {"kind": "nic", "delay_ms": -1},
    {"kind": "nic", "partition": "yes"},
    {"kind": "nic", "mac": "00:16:3e"},
    {"kind": "nic", "image": "x.img"},
    {"kind": "disk", "image": "x.img", "wire": "lab0"},
])
def test_bad_nic_settings_are_refused(fields):
    with pytest.raises(ConfigError):
        DeviceSpec(name="n", **fields)
