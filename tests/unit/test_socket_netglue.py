"""The network subsystem's wiring: Linux's ip= parameter, netdevs attaching
(contract §1), one flush per upcall's frames, the stack timer on the kernel."""

from domains.xenolinux.net_glue import IpConfig, parse_ip_param
from tests.support.guestsim import Os


def test_ip_param_follows_linux_nfsroot_syntax():
    assert parse_ip_param("10.0.0.11::10.0.0.1:255.255.255.0:d1:eth0:off") == \
        IpConfig("10.0.0.11", "10.0.0.1", 24, "d1", "eth0")
    assert parse_ip_param("192.168.1.5:::255.255.0.0") == \
        IpConfig("192.168.1.5", None, 16, "", "")
    assert parse_ip_param("10.1.2.3") == IpConfig("10.1.2.3", None, 24, "", "")
    for bad in (None, "", "off", "dhcp", "10.0.0.300", "10.0.0.1::x", "10.0.0.1:::255.0.255.0"):
        assert parse_ip_param(bad) is None


class Dev:
    def __init__(self, name="eth0"):
        self.name, self.mac, self.mtu, self.gso = name, bytes.fromhex("00163e000001"), 1500, True
        self.receiver = None


def os_with(ip):
    os = Os()
    os.net.config = parse_ip_param(ip)
    return os


def test_the_device_named_by_ip_is_configured_with_its_default_route():
    os = os_with("10.0.0.11::10.0.0.1:255.255.255.0:d1:eth0:off")
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


def test_without_a_device_in_ip_the_first_netdev_gets_the_address():
    os = os_with("10.0.0.12:::255.255.255.0")
    os.net.attach(Dev("eth0"))
    assert os.stack.ifaces["eth0"][1] == "10.0.0.12" and os.stack.gateway is None


def test_frames_of_one_upcall_share_one_flush():
    os = os_with("10.0.0.11::10.0.0.1:255.255.255.0:d1:eth0:off")
    dev = Dev()
    os.net.attach(dev)
    os.k.run()
    before = os.stack.flushes
    for _ in range(5):
        dev.receiver(b"\x00" * 60, 0)
    assert os.stack.flushes == before
    os.k.run()
    assert os.stack.flushes == before + 1
