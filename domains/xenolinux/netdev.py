"""The guest's view of a network interface: what netfront offers the TCP/IP stack.

A driver moves Ethernet frames (no FCS); the stack never sees rings or grants.
"""

from collections.abc import Callable
from typing import Protocol


class NetDevice(Protocol):
    name: str  # eth0 for vif devid 0
    mac: bytes  # 6 bytes, from xenstore device/vif/N/mac
    mtu: int
    gso: bool  # the backend takes TSO frames (feature-gso-tcpv4)
    # Set by the stack; called per received frame with its gso_size (0: a plain frame).
    receiver: Callable[[bytes, int], None] | None

    def transmit(self, frames: list[tuple[bytes, int]]) -> None:
        """Queue one batch of (frame, gso_size) on the ring; notify at most once."""
