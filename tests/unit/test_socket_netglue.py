"""The network subsystem's wiring: netdevs attaching (contract §1) and configured
from the ip= record, one flush per upcall's frames, the stack timer on the kernel.
(Parsing ip= itself is the core's: domains/xenolinux/net/config.py.)"""

from typing import NamedTuple

from domains.xenolinux.net_glue import ip_config
from tests.support.guestsim import Os


class IpConfig(NamedTuple):  # the shape of net/config.py's record
    ip: str
    prefix: int
    gateway: str | None
    device: str
    hostname: str = ""


D1 = IpConfig("10.0.0.11", 24, "10.0.0.1", "eth0", "d1")


class Dev:
    def __init__(self, name="eth0"):
        self.name, self.mac, self.mtu, self.gso = name, bytes.fromhex("00163e000001"), 1500, True
        self.receiver, self.sent = None, []

    def transmit(self, frames):
        self.sent.append(frames)


def os_with(config):
    os = Os()
    os.net.config = config
    return os


def test_the_device_named_by_ip_is_configured_with_its_default_route():
    os = os_with(D1)
    eth1, eth0 = Dev("eth1"), Dev("eth0")
    os.net.attach(eth1)
    os.net.attach(eth0)
    os.net.attach(eth0)  # again (already attached): no second interface
    assert list(os.stack.ifaces) == ["lo", "eth0"]
    assert os.stack.ifaces["eth0"][1:] == ("10.0.0.11", 24)
    assert os.stack.gateway == "10.0.0.1"
    shown = {i["name"]: i for i in os.net.describe()}
    assert shown["eth0"]["up"] and shown["eth0"]["mac"] == "00:16:3e:00:00:01"
    assert not shown["eth1"]["up"] and shown["eth1"]["ip"] is None


def test_without_ip_a_netdev_stays_down():
    os = os_with(None)
    os.net.attach(Dev("eth0"))
    assert list(os.stack.ifaces) == ["lo"] and os.stack.gateway is None


def test_frames_of_one_upcall_share_one_flush():
    os = os_with(D1)
    dev = Dev()
    os.net.attach(dev)
    os.k.run()
    before = os.stack.flushes
    for _ in range(5):
        dev.receiver(b"\x00" * 60, 0)
    assert os.stack.flushes == before
    os.k.run()
    assert os.stack.flushes == before + 1
    dev.transmit([(b"\x01" * 100, 0), (b"\x02" * 50, 0)])
    assert dev.sent == [[(b"\x01" * 100, 0), (b"\x02" * 50, 0)]]
    [eth0] = [i for i in os.net.describe() if i["name"] == "eth0"]
    assert eth0["stats"] == {"rx_packets": 5, "rx_bytes": 300, "tx_packets": 2, "tx_bytes": 150}


def test_ip_config_is_none_when_the_cmdline_has_none():
    assert ip_config("blkfront=on init.run=/bin/true", print) is None
