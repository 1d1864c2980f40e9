"""The NIC device process: an Ethernet controller on a wire and/or a TAP.

Rules:
1. Process and platform: devices.platform, as for the disk device (started
   by the launcher before Xen, a secret, a control socket for the IOMMU
   table and domains' memory, an IRQ, MMIO on a PULL read only once Dom0's
   memory is here); only the controller differs.
2. Register semantics (hypervisor.public.nicdev): "init" resets the
   controller (frames waiting for RX buffers are dropped) and attaches to
   the driver's two rings; "kick" runs both rings; "wire" sets the link's
   fault model (devices.wirefaults) at run time.
3. Media: the wire (devices.wire) and/or the TAP (devices.tap). A frame the
   driver sends goes to every medium; a frame from any medium goes to the
   driver. Each direction passes its own fault model.
4. One thread: zmq_poll over Xen, the control socket, MMIO, the wire and
   the TAP fd, until a message or the next timer (fault delays, hub
   election, hello). Every turn ends with one push of both rings and at
   most one IRQ (interrupt coalescing by batching).
"""

import argparse
import sys
import time
import zlib

import zmq

from devices.dma import DmaFault
from devices.niccore import NicCore
from devices.platform import PlatformDevice, as_hardware, device_parser, log
from devices.tap import Tap
from devices.wire import WirePort
from devices.wirefaults import WireFaults, WireSettings
from domains.kernel.ring import BackRing
from hypervisor.public.nicdev import (
    INFO_SIZE,
    LINK_CHANGES_WORD,
    LINK_FAULTY,
    LINK_FLAGS_WORD,
    LINK_PARTITIONED,
    NIC_INFO_MAGIC,
    RX_SLOT_SIZE,
    TX_SLOT_SIZE,
    InitStatus,
    NicDevError,
    NicFeature,
    decode_mmio,
    pack_info,
)

MODEL = "Xenolab Virtual Ethernet"


def parse_mac(text: str, host: str, name: str) -> bytes:
    """The configured MAC, or a stable locally administered one."""
    if text:
        mac = bytes.fromhex(text.replace(":", ""))
        if len(mac) != 6:
            raise ValueError(f"bad MAC {text!r}")
        return mac
    return b"\x02\x58" + zlib.crc32(f"{host}/{name}".encode()).to_bytes(4, "big")


class NicDevice(PlatformDevice):
    kind, mmio_error = "nic", NicDevError
    decode_mmio = staticmethod(decode_mmio)

    def __init__(self, a: argparse.Namespace) -> None:
        self.mac = parse_mac(a.mac, a.host, a.name)
        settings = WireSettings(a.drop, a.dup, a.reorder, a.delay_ms, a.partition)
        self.egress = WireFaults(settings, a.seed)
        self.ingress = WireFaults(settings, a.seed + 1)
        self.core: NicCore | None = None
        self.info: memoryview | None = None  # the driver's info page, cast("I")
        self.link_changes = 0
        self.kicks = self.irqs = 0
        super().__init__(a)
        self.wire = WirePort(self.ctx, a.wire) if a.wire else None
        self.tap = self._open_tap(a.tap, a.tap_netns) if a.tap else None
        if self.wire is not None:
            self._watch_wire()
        if self.tap is not None:
            self.handlers[self.tap.fileno()] = self._on_tap
            self.poller.register(self.tap.fileno(), zmq.POLLIN)

    def _open_tap(self, name: str, netns: str) -> Tap | None:
        """A TAP that cannot be made leaves the NIC without it (the info page's
        features say so), rather than a device that dies and restarts for ever."""
        try:
            return Tap(name, netns)
        except OSError as exc:
            log(f"{self.name}: TAP {name}: {exc}; running without it")
            return None

    def _watch_wire(self) -> None:
        for sock in self.wire.sockets():
            if sock not in self.handlers:
                handler = self._on_wire if sock is self.wire.sock else self.wire.hub.on_readable
                self.handlers[sock] = handler
                self.poller.register(sock, zmq.POLLIN)

    # ---- the loop (rule 4) ------------------------------------------------------

    def run(self) -> None:
        self.running = True
        self.hello()
        while self.running:
            for sock, _ in self.poller.poll(self._timeout_ms()):
                self.handlers[sock]()
            self._timers()
            self._push()

    def _timeout_ms(self) -> int:
        times = [t for t in (self.egress.next_deadline(), self.ingress.next_deadline(),
                             self.wire.next_deadline() if self.wire else None) if t is not None]
        if not times:
            return -1
        return max(0, -(-(min(times) - time.monotonic_ns()) // 1_000_000))

    def _timers(self) -> None:
        now = time.monotonic_ns()
        if self.wire is not None:
            had_hub = self.wire.hub is not None
            self.wire.tick(now)
            if not had_hub and self.wire.hub is not None:
                log(f"{self.name}: hub of wire {self.wire.name}")
                self._watch_wire()
        for frame in self.egress.due(now):
            self._to_media(frame)
        due = self.ingress.due(now)
        if due and self.core is not None:
            self.core.receive(due)

    def _push(self) -> None:
        if self.core is not None and self.core.push():
            self.irqs += 1
            self.raise_irq()

    def raise_irq(self) -> None:
        self.send_irq()

    # ---- media (rule 3) --------------------------------------------------------------

    def _to_media(self, frame: bytes) -> None:
        if self.wire is not None:
            self.wire.send(frame)
        if self.tap is not None:
            self.tap.send(frame)

    def _from_media(self, frames: list[bytes]) -> None:
        if self.ingress.settings.clean and not self.ingress.queue:
            if self.core is not None:
                self.core.receive(frames)
            return
        now = time.monotonic_ns()
        for frame in frames:
            self.ingress.offer(frame, now)
        self._timers()

    def _on_wire(self) -> None:
        self._from_media(self.wire.recv_all())

    def _on_tap(self) -> None:
        self._from_media(self.tap.recv_all())

    def _send_frames(self, frames: list[bytes]) -> None:
        if self.egress.settings.clean and not self.egress.queue:
            for frame in frames:
                self._to_media(frame)
            return
        now = time.monotonic_ns()
        for frame in frames:
            self.egress.offer(frame, now)
        for frame in self.egress.due(now):
            self._to_media(frame)

    # ---- MMIO (rule 2) ------------------------------------------------------------

    def describe(self) -> str:
        media = [f"wire {self.wire.name}"] if self.wire else []
        media += [f"TAP {self.tap.name}" + (f" in netns {self.tap.netns}" if self.tap.netns
                                            else "")] if self.tap else []
        return (f"MAC {self.mac.hex(':')}, {' and '.join(media) or 'no medium'}, "
                f"faults {self.egress.settings.describe()}")

    def _mmio_init(self, msg: dict) -> None:
        info = self._init_info_page(msg)
        if info is None:
            return
        try:
            tx = BackRing(self.iommu.contiguous(msg["tx_ring_bfn"], msg["tx_ring_pages"], True),
                          TX_SLOT_SIZE)
            rx = BackRing(self.iommu.contiguous(msg["rx_ring_bfn"], msg["rx_ring_pages"], True),
                          RX_SLOT_SIZE)
        except (DmaFault, ValueError) as exc:
            log(f"{self.name}: init refused, rings: {exc}")
            self._write_nic_info(info, 0, 0, InitStatus.bad_ring)
            return
        self.core = NicCore(tx, rx, self.iommu)
        self._write_nic_info(info, tx.size, rx.size, InitStatus.ok)
        log(f"{self.name}: init: TX ring {tx.size} slots at {msg['tx_ring_bfn']:#x}, "
            f"RX ring {rx.size} slots at {msg['rx_ring_bfn']:#x}")

    def _write_nic_info(self, page: memoryview, tx: int, rx: int, status: int) -> None:
        features = (NicFeature.sg | (NicFeature.wire if self.wire else 0)
                    | (NicFeature.tap if self.tap else 0))
        page[:INFO_SIZE] = pack_info(self.mac, features, tx, rx, MODEL, status,
                                     self.link_changes, self._link_flags())
        self.info = page.cast("I")
        page.release()
        self.info[0] = NIC_INFO_MAGIC  # stored last (nicdev rule 4)
        self.raise_irq()

    def _link_flags(self) -> int:
        s = self.egress.settings
        return ((LINK_PARTITIONED if s.partition else 0)
                | (LINK_FAULTY if s.drop or s.dup or s.reorder or s.delay_ms else 0))

    def _reset(self) -> None:
        if self.core is not None:
            self.core.release()
            self.core = None
        if self.info is not None:
            self.info.release()
            self.info = None

    def _mmio_kick(self, _msg: dict) -> None:
        if self.core is None:
            return
        self.kicks += 1
        frames = self.core.kick()
        if frames:
            self._send_frames(frames)

    def _mmio_wire(self, msg: dict) -> None:
        s = self.egress.settings.updated(
            drop=msg.get("drop"), dup=msg.get("dup"), reorder=msg.get("reorder"),
            delay_ms=msg.get("delay_ms"), partition=msg.get("partition"))
        self.egress.set(s)
        self.ingress.set(s)
        self.link_changes += 1
        if self.info is not None:  # the link status register (nicdev rule 4)
            self.info[LINK_FLAGS_WORD] = self._link_flags()
            self.info[LINK_CHANGES_WORD] = self.link_changes & 0xFFFFFFFF
        log(f"{self.name}: wire faults: {s.describe()}")

    def statistics(self) -> dict:
        counts = dict(self.core.counts) if self.core is not None else {}
        return {**counts, "kicks": self.kicks, "irqs": self.irqs,
                "egress": self.egress.counts, "ingress": self.ingress.counts}

    def close(self) -> None:
        log(f"{self.name}: {self.statistics()}")
        self._reset()
        if self.wire is not None:
            self.wire.close()
        if self.tap is not None:
            self.tap.close()
        self.close_channels()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = device_parser("devices.nic", __doc__)
    p.add_argument("--mac", default="")
    p.add_argument("--wire", default="")
    p.add_argument("--tap", default="")
    p.add_argument("--tap-netns", default="")
    for opt in ("--drop", "--dup", "--reorder", "--delay-ms"):
        p.add_argument(opt, type=float, default=0.0)
    p.add_argument("--partition", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    as_hardware(a, "nic")
    dev = NicDevice(a)
    try:
        dev.run()
    finally:
        dev.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
