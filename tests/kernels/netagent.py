"""A test guest for the network split driver: the agent plus netfront ops.

Frames are injected straight into a netfront (no TCP/IP stack yet) and the
frames each netfront receives are kept for the test to read.
"""

import hashlib

from tests.kernels.agent import Agent


def make_frame(dst: str, src: str, seed: int, length: int, ethertype: int = 0x88B5) -> bytes:
    """A test frame (xenstore values are too small to carry big frames whole)."""
    head = bytes.fromhex(dst) + bytes.fromhex(src) + ethertype.to_bytes(2, "big")
    return head + bytes((seed + i) & 0xFF for i in range(length - len(head)))


def digest(frame: bytes) -> str:
    return hashlib.sha256(frame).hexdigest()[:16]


class NetAgent(Agent):
    def __init__(self, kernel) -> None:
        super().__init__(kernel)
        self.received: dict[str, list[tuple[bytes, int]]] = {}
        self.g.on_netdev = self._attach
        for dev in self.g.netdevs.values():
            if dev.connected:
                self._attach(dev)

    def _attach(self, dev) -> None:
        got = self.received.setdefault(dev.name, [])
        dev.receiver = lambda frame, gso: got.append((frame, gso))

    def op_net_state(self):
        return {name: {"connected": d.connected, "gso": d.gso, "mac": d.mac.hex(),
                       "stats": str(d.core.statistics())}
                for name, d in self.g.netdevs.items()}

    def op_net_send(self, dev, frames=(), made=(), gso=0):
        """Send raw frames (hex) and made ones ([dst, src, seed, length]) as one batch."""
        batch = [bytes.fromhex(f) for f in frames] + [make_frame(*m) for m in made]
        self.g.netdevs[dev].transmit([(f, gso) for f in batch])
        return len(batch)

    def op_net_recv(self, dev):
        """What arrived since the last call: (digest, length, gso_size) each."""
        got = self.received.get(dev, [])
        out = [(digest(f), len(f), g) for f, g in got]
        got.clear()
        return out


def main(kernel) -> None:
    NetAgent(kernel)
    kernel.run()
