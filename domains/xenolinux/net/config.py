"""Linux's `ip=` kernel parameter (Documentation/admin-guide/nfs/nfsroot.rst):
ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>
Only static configuration is modelled: autoconf "dhcp" and friends give None."""

import errno
from typing import NamedTuple

from domains.xenolinux.net import ipv4


class IpConfig(NamedTuple):
    ip: str
    prefix: int
    gateway: str | None
    device: str
    hostname: str


def parse_ip_param(value: str) -> IpConfig | None:
    """Parse the value after `ip=`; None when it asks for no static configuration.
    Raises OSError(EINVAL) for a malformed address or netmask."""
    f = (value.split(":") + [""] * 7)[:7]
    ip, _server, gw, netmask, hostname, device, _auto = f
    if not ip or ip in ("off", "none", "dhcp", "bootp", "rarp", "any", "on"):
        return None
    ipv4.aton(ip)
    prefix = _prefix(netmask) if netmask else _classful(ip)
    if gw:
        ipv4.aton(gw)
    return IpConfig(ip, prefix, gw or None, device or "eth0", hostname)


def from_cmdline(cmdline: str) -> IpConfig | None:
    """The `ip=` parameter of a kernel command line, if any."""
    for word in cmdline.split():
        if word.startswith("ip="):
            return parse_ip_param(word[3:])
    return None


def _prefix(netmask: str) -> int:
    m = ipv4.to_int(ipv4.aton(netmask))
    prefix = bin(m).count("1")
    if m != ipv4.mask(prefix):
        raise OSError(errno.EINVAL, f"bad netmask {netmask!r}")
    return prefix


def _classful(ip: str) -> int:
    first = ipv4.aton(ip)[0]
    return 8 if first < 128 else 16 if first < 192 else 24
