"""The disk device process: a controller in front of a raw image file.

Rules:
1-2. Process and channels: devices.platform's (a secret, a control socket
   for the IOMMU table and domains' memory, an IRQ, MMIO on a PULL read once
   Dom0's memory is here); the launcher also names the image (--image).
3. Register semantics (hypervisor.public.diskdev): "init" resets the
   controller (held and pending commands are dropped, like a reset) and
   attaches to the driver's ring (a restarted Domain-0 sends it again, from
   new memory); "kick" runs the queue pair; "fault" and
   "latency" flip the experiment switches. "fault" mode "die" with rate 0
   exits at once; with a rate, a command draws death (devices.diskcore).
4. One thread: zmq_poll until a message or the next completion deadline
   (the last millisecond is spun, so fixed:USEC latencies stay precise).
   Nothing a driver writes can raise out of the loop.
"""

import argparse
import os
import random
import sys
import time
import zlib

from devices.diskcore import FEATURES, MAX_DISCARD_SECTORS, DeviceDeath, DiskCore, Faults
from devices.dma import DmaFault
from devices.image import ImageFile
from devices.latency import LatencyModel, parse_latency
from devices.platform import PlatformDevice, as_hardware, device_parser, log
from devices.queue import QueuePair
from domains.kernel.ring import BackRing
from hypervisor.public import hops, trace
from hypervisor.public.diskdev import (
    CMD_SIZE,
    DISK_INFO_MAGIC,
    INFO_SIZE,
    SECTOR_SIZE,
    DiskDevError,
    InitStatus,
    decode_mmio,
    pack_info,
)

MODEL, FIRMWARE = "Xenolab Virtual Disk", "1.0"
DEATH_EXIT = 70


class DiskDevice(PlatformDevice):
    kind, mmio_error = "disk", DiskDevError
    decode_mmio = staticmethod(decode_mmio)

    def __init__(self, a: argparse.Namespace) -> None:
        self.image = ImageFile(a.image)
        self.capacity = self.image.size // SECTOR_SIZE
        self.faults = Faults("eio" if a.fail_rate > 0 else "none", a.fail_rate, a.seed)
        self.rng = random.Random(a.seed)
        self.latency: LatencyModel = parse_latency(a.latency, self.capacity, self.rng)
        self.qp: QueuePair | None = None
        super().__init__(a)

    # ---- the loop --------------------------------------------------------

    def run(self) -> None:
        self.running = True
        self.hello()
        while self.running:
            for sock, _ in self.poller.poll(self._timeout_ms()):
                self.handlers[sock]()
            self._complete_due()

    def _timeout_ms(self) -> int:
        deadline = self.qp.next_deadline() if self.qp is not None else None
        if deadline is None:
            return -1
        return max(0, (deadline - time.monotonic_ns()) // 1_000_000)  # early, then spin

    def _complete_due(self) -> None:
        if self.qp is not None and self.qp.complete_due():
            self.raise_irq()

    def raise_irq(self) -> None:
        hops.stamp(hops.DEV_IRQ)
        trace.stamp(trace.DEVICE_IRQ, 0, self.irq)
        self.send_irq()

    def describe(self) -> str:
        return (f"{self.capacity} sectors, latency {self.latency.spec}, "
                f"fault {self.faults.mode}")

    # ---- MMIO --------------------------------------------------------------

    def _mmio_init(self, msg: dict) -> None:
        info = self._init_info_page(msg)
        if info is None:
            return
        try:
            ring = BackRing(self.iommu.contiguous(msg["ring_bfn"], msg["ring_pages"], True),
                            CMD_SIZE)
        except (DmaFault, ValueError) as exc:
            log(f"{self.name}: init refused, ring: {exc}")
            self._write_info(info, 0, InitStatus.bad_ring)
            return
        core = DiskCore(self.image, self.iommu, self.capacity, self.latency, self.faults)
        self.qp = QueuePair(ring, core, time.monotonic_ns)
        self._write_info(info, ring.size, InitStatus.ok)
        log(f"{self.name}: init: ring at bfn {msg['ring_bfn']:#x} "
            f"({msg['ring_pages']} pages, {ring.size} slots), info at {msg['info_bfn']:#x}")

    def _write_info(self, page: memoryview, slots: int, status: int) -> None:
        serial = f"XL{zlib.crc32(f'{self.host}/{self.name}'.encode()):08X}"
        raw = pack_info(self.capacity, FEATURES, slots, MODEL, serial, FIRMWARE, status,
                        MAX_DISCARD_SECTORS)
        page[:INFO_SIZE] = raw  # magic still 0 ...
        with page[:4].cast("I") as magic:
            magic[0] = DISK_INFO_MAGIC  # ... and stored last, in one go
        page.release()
        self.raise_irq()

    def _reset(self) -> None:
        if self.qp is not None:
            self.qp.ring.release()
            self.qp = None

    def _mmio_kick(self, _msg: dict) -> None:
        hops.stamp(hops.DEV_KICK)
        if self.qp is None:
            return
        before = self.qp.commands
        trace.stamp(trace.DEVICE_KICK, 0, self.irq, self.qp.kicks + 1, "doorbell")
        due = self.qp.kick()
        if trace.on and self.qp.commands > before:
            trace.stamp(trace.DEVICE_DMA, 0, self.irq, self.qp.commands - before, "commands")
        if due:
            self.raise_irq()

    def _mmio_fault(self, msg: dict) -> None:
        mode, rate = msg["mode"], float(msg["rate"])
        log(f"{self.name}: fault {mode} rate {rate}")
        if mode == "die" and rate == 0:
            raise DeviceDeath("die fault set")
        if self.qp is None:
            self.faults.set(mode, rate)
        elif self.qp.set_fault(mode, rate):
            self.raise_irq()

    def _mmio_latency(self, msg: dict) -> None:
        try:
            self.latency = parse_latency(msg["spec"], self.capacity, self.rng)
        except ValueError as exc:
            log(f"{self.name}: {exc}")
            return
        if self.qp is not None:
            self.qp.core.latency = self.latency
        log(f"{self.name}: latency {self.latency.spec}")

    def close(self) -> None:
        if self.qp is not None:
            log(f"{self.name}: {self.qp.commands} commands, {self.qp.kicks} doorbells, "
                f"{self.qp.irqs} IRQs, {dict(self.qp.core.counts)}")
        self._reset()
        self.close_channels()
        self.image.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = device_parser("devices.disk", __doc__, "--image")
    p.add_argument("--latency", default="none")
    p.add_argument("--fail-rate", type=float, default=0.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    as_hardware(a, "disk")
    dev = DiskDevice(a)
    try:
        dev.run()
    except DeviceDeath as exc:
        log(f"{dev.name}: {exc}: the device dies")
        os._exit(DEATH_EXIT)  # no cleanup, no flush of anything: a dead controller
    dev.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
