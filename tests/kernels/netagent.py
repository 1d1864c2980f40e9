"""A test guest for the network split driver: the agent plus netfront ops.

Frames are injected straight into a netfront (no TCP/IP stack yet) and the
frames each netfront receives are kept for the test to read.
"""

import hashlib
import json
import time

from tests.kernels.agent import _LATER, Agent


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

        def receive(frame: bytes, gso: int) -> None:
            self.last_rx_ns = time.monotonic_ns()
            if self.echo_on and frame[12:14] == b"\x88\xb6":  # ping-pong: bounce it
                dev.transmit([(frame[6:12] + frame[0:6] + frame[12:], 0)])
            elif self.pingpong is not None and frame[12:14] == b"\x88\xb6":
                self._pong(dev)
            else:
                got.append((frame, gso))
        dev.receiver = receive

    echo_on = False
    pingpong = None

    def op_net_echo(self, on=True):
        self.echo_on = on

    def op_net_pingpong(self, dev, peer, count=200):
        """Bounce a 64-byte frame off an echoing peer ``count`` times; RTTs in µs."""
        d = self.g.netdevs[dev]
        frame = bytes.fromhex(peer) + d.mac + b"\x88\xb6" + bytes(50)
        self.pingpong = {"dev": d, "frame": frame, "left": count, "rtts": [],
                         "t0": time.monotonic_ns(), "id": self.last}
        d.transmit([(frame, 0)])
        return _LATER

    def _pong(self, dev) -> None:
        pp = self.pingpong
        now = time.monotonic_ns()
        pp["rtts"].append((now - pp["t0"]) / 1000)
        pp["left"] -= 1
        if pp["left"] > 0:
            pp["t0"] = time.monotonic_ns()
            dev.transmit([(pp["frame"], 0)])
            return
        self.pingpong = None
        rtts = sorted(pp["rtts"])
        res = {"id": pp["id"], "ok": True, "result": {"p50_us": rtts[len(rtts) // 2],
                                                        "min_us": rtts[0], "n": len(rtts)}}
        self.g.xs.write("data/res", json.dumps(res))

    def op_net_state(self):
        return {name: {"connected": d.connected, "gso": d.gso, "mac": d.mac.hex(),
                       "stats": str(d.core.statistics())}
                for name, d in self.g.netdevs.items()}

    def op_net_send(self, dev, frames=(), made=(), gso=0):
        """Send raw frames (hex) and made ones ([dst, src, seed, length]) as one batch."""
        batch = [bytes.fromhex(f) for f in frames] + [make_frame(*m) for m in made]
        self.g.netdevs[dev].transmit([(f, gso) for f in batch])
        return len(batch)

    def op_net_evil(self, dev, offset=4000, size=200):
        """Act as a malicious frontend: a tx request whose data crosses its page."""
        from hypervisor.public.netif import TX_REQUEST
        d = self.g.netdevs[dev]
        tx = d.core.tx
        tx.put_request(TX_REQUEST.pack(d.rings[0].gref, offset, 0, 0, size))
        if tx.push_requests():
            self.k.evtchn.notify(d.port)

    def op_net_blast(self, dev, peer, count=200, size=65000, gso=1448):
        """Queue ``count`` big frames at once (the transmit queue takes up to 1000)."""
        d = self.g.netdevs[dev]
        frame = bytes.fromhex(peer) + d.mac + b"\x88\xb5" + bytes(size - 14)
        d.transmit([(frame, gso)] * count)
        return count

    def op_net_rate(self, dev):
        """Frames received so far and the µs between the first and the last."""
        got = self.received.get(dev, [])
        return {"n": len(got), "bytes": sum(len(f) for f, _ in got),
                "last_ns": getattr(self, "last_rx_ns", 0)}

    def op_net_clear(self, dev):
        self.received.get(dev, []).clear()

    def op_net_recv(self, dev):
        """What arrived since the last call: (digest, length, gso_size) each."""
        got = self.received.get(dev, [])
        out = [(digest(f), len(f), g) for f, g in got]
        got.clear()
        return out


def main(kernel) -> None:
    NetAgent(kernel)
    kernel.run()
