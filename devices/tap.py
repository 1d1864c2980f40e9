"""A Linux TAP interface as the NIC's medium (real programs reach the guests).

Rules:
1. The TAP is not persistent: it exists while our fd is open, so closing it
   (or our death) deletes it; nothing is left behind.
2. With a netns, the interface is moved there (`ip link set DEV netns NS`)
   right after it is created, and brought up there: the machine's own
   network namespace and interfaces are never touched. Our fd keeps working
   across the move.
3. IFF_NO_PI: each read or write is exactly one Ethernet frame, no header.
"""

import fcntl
import os
import struct
import subprocess

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
READ_MAX = 65536


class TapError(OSError):
    pass


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise TapError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Tap:
    def __init__(self, name: str, netns: str = "") -> None:
        if not name or len(name) >= IFNAMSIZ or "/" in name:
            raise TapError(f"bad TAP name {name!r}")
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI)
            got = fcntl.ioctl(self.fd, TUNSETIFF, ifr)
            self.name = got[:IFNAMSIZ].rstrip(b"\0").decode()
            self.netns = netns
            if netns:
                _ip("link", "set", "dev", self.name, "netns", netns)
                _ip("-n", netns, "link", "set", "dev", self.name, "up")
            else:
                _ip("link", "set", "dev", self.name, "up")
        except BaseException:
            os.close(self.fd)
            raise
        self.sent = self.received = 0

    def fileno(self) -> int:
        return self.fd

    def recv_all(self, limit: int = 256) -> list[bytes]:
        frames = []
        while len(frames) < limit:
            try:
                frames.append(os.read(self.fd, READ_MAX))
            except (BlockingIOError, InterruptedError):
                break
        self.received += len(frames)
        return frames

    def send(self, frame: bytes) -> None:
        try:
            os.write(self.fd, frame)
            self.sent += 1
        except OSError:
            pass  # interface down or queue full: the frame is lost, like on a cable

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # rule 1: the interface goes with it
            self.fd = -1
