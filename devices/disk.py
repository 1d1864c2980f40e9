"""The disk device process: a controller in front of a raw image file.

Rules:
1. Process. The launcher starts us before Xen with a secret, a control
   socket (--ctl-fd), an IRQ and the image. We die with the launcher
   (PR_SET_PDEATHSIG) and exit when Xen closes the control socket.
2. Channels (hypervisor.public.platform): a DEALER to Xen's ROUTER whose
   routing id is the secret (hello, then posted IRQs); the control socket,
   where Xen hands us the IOMMU table (mapped read-only) and domains'
   memory; and a PULL at mmio_endpoint(host, name) for Dom0's MMIO writes.
   MMIO is read only once Dom0's memory and the table are here: until then
   ZeroMQ holds the writes, so an early "init" is never lost.
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
import mmap
import os
import random
import signal
import socket
import sys
import time
import zlib

import msgpack
import zmq

from devices.diskcore import FEATURES, MAX_DISCARD_SECTORS, DeviceDeath, DiskCore, Faults
from devices.dma import DmaFault, Iommu, map_memory
from devices.image import ImageFile
from devices.latency import LatencyModel, parse_latency
from devices.queue import QueuePair
from domains.kernel.ring import BackRing
from hypervisor.public import envelope, hops, trace
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
from hypervisor.public.platform import IOMMU_FOREIGN_BASE, PLATFORM_OP, PlatformOp, mmio_endpoint
from hypervisor.public.xen import PAGE_SIZE

PR_SET_PDEATHSIG = 1
HELLO_SEQ = 1
IRQ_FRAME = envelope.encode_request(envelope.POSTED, PLATFORM_OP, PlatformOp.irq, None)
MODEL, FIRMWARE = "Xenolab Virtual Disk", "1.0"
DEATH_EXIT = 70


def log(msg: str) -> None:
    print(f"[{time.monotonic():12.6f}] {msg}", flush=True)


class DiskDevice:
    def __init__(self, a: argparse.Namespace) -> None:
        self.name, self.host, self.kind = a.name, a.host, "disk"
        self.irq = a.irq
        self.image = ImageFile(a.image)
        self.capacity = self.image.size // SECTOR_SIZE
        self.faults = Faults("eio" if a.fail_rate > 0 else "none", a.fail_rate, a.seed)
        self.rng = random.Random(a.seed)
        self.latency: LatencyModel = parse_latency(a.latency, self.capacity, self.rng)
        self.iommu = Iommu(0, IOMMU_FOREIGN_BASE, refresh=self._drain_ctl)
        self.maps: dict[object, mmap.mmap] = {}  # "iommu" or a domid -> its mapping
        self.qp: QueuePair | None = None
        self.hello_done = self.running = False
        self._open_channels(a)

    def _open_channels(self, a: argparse.Namespace) -> None:
        self.ctx = zmq.Context(io_threads=1)  # after the fork (STYLE.md 14)
        self.xen = self.ctx.socket(zmq.DEALER)
        self.xen.setsockopt(zmq.ROUTING_ID, bytes.fromhex(a.secret))
        self.xen.setsockopt(zmq.LINGER, 0)
        self.xen.connect(a.endpoint)
        self.mmio = self.ctx.socket(zmq.PULL)
        self.mmio.setsockopt(zmq.LINGER, 0)
        self.mmio.bind(mmio_endpoint(a.host, a.name))
        self.ctl = socket.socket(fileno=a.ctl_fd)
        self.poller = zmq.Poller()
        # zmq_poll reports a plain socket by its fd
        self.handlers = {self.xen: self._on_xen, self.ctl.fileno(): self._on_ctl,
                         self.mmio: self._on_mmio}
        self.poller.register(self.xen, zmq.POLLIN)
        self.poller.register(self.ctl.fileno(), zmq.POLLIN)

    # ---- the loop --------------------------------------------------------

    def run(self) -> None:
        self.running = True
        self.xen.send(envelope.encode_request(HELLO_SEQ, PLATFORM_OP, PlatformOp.hello,
                                              {"name": self.name, "kind": self.kind}))
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
        try:
            self.xen.send(IRQ_FRAME, zmq.NOBLOCK)
        except zmq.Again:
            pass  # Xen is gone or wedged: the interrupt line goes nowhere

    # ---- Xen: hello reply, control socket ----------------------------------

    def _on_xen(self) -> None:
        while self.xen.get(zmq.EVENTS) & zmq.POLLIN:
            try:
                kind, seq, rc, out = envelope.decode_from_xen(self.xen.recv())
            except envelope.EnvelopeError:
                continue
            if kind == envelope.REPLY and seq == HELLO_SEQ:
                self._hello_reply(rc, out)

    def _hello_reply(self, rc: int, out) -> None:
        if rc != 0 or not isinstance(out, dict):
            log(f"{self.name}: Xen refused hello (rc {rc}); stopping")
            self.running = False
            return
        self.iommu.dom0_pages = int(out["dom0_pages"])
        self.iommu.foreign_base = int(out["foreign_base"])
        self.hello_done = True
        log(f"{self.name}: up on IRQ {out['irq']}, {self.capacity} sectors, "
            f"latency {self.latency.spec}, fault {self.faults.mode}")
        self._check_ready()

    def _on_ctl(self) -> None:
        if not self._recv_ctl(0):
            log(f"{self.name}: Xen closed the control socket; powering off")
            self.running = False
        self._check_ready()

    def _drain_ctl(self) -> None:
        """IOMMU refresh: take memory objects Xen has already sent."""
        try:
            while self._recv_ctl(socket.MSG_DONTWAIT):
                pass
        except BlockingIOError:
            pass

    def _recv_ctl(self, flags: int) -> bool:
        """One control message; False at end of file."""
        # socket.recv_fds drops its flags before Python 3.12: a "non-blocking"
        # drain would block, so call recvmsg ourselves.
        msg, anc, _, _ = self.ctl.recvmsg(256, socket.CMSG_LEN(4), flags)
        fds = [int.from_bytes(data[i:i + 4], sys.byteorder)
               for level, kind, data in anc
               if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for i in range(0, len(data) - len(data) % 4, 4)]
        if not msg and not fds:
            return False
        try:
            self._memory_arrived(msgpack.unpackb(msg), fds[0])
        except (ValueError, KeyError, IndexError, TypeError, OSError) as exc:
            log(f"{self.name}: bad control message: {exc!r}")
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _memory_arrived(self, tag: dict, fd: int) -> None:
        if "iommu" in tag:
            self.maps["iommu"], view = map_memory(fd, int(tag["iommu"]) * 8, writable=False)
            self.iommu.set_table(view)
            return
        domid, nr_pages = int(tag["dom"]), int(tag["nr_pages"])
        self.maps[domid], view = map_memory(fd, nr_pages * PAGE_SIZE)
        self.iommu.add_memory(domid, view)  # an old object of this domid goes to the GC

    def _check_ready(self) -> None:
        """Rule 2: read MMIO once we can reach Dom0's memory."""
        ready = self.hello_done and self.iommu.table is not None and 0 in self.iommu.memories
        if ready and self.mmio not in self.poller:
            self.poller.register(self.mmio, zmq.POLLIN)
            self._on_mmio()

    # ---- MMIO --------------------------------------------------------------

    def _on_mmio(self) -> None:
        while self.running:
            try:
                frame = self.mmio.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode_mmio(frame)
            except DiskDevError as exc:
                log(f"{self.name}: ignored MMIO write: {exc}")
                continue
            getattr(self, "_mmio_" + msg["op"])(msg)

    def _mmio_init(self, msg: dict) -> None:
        # A restarted Domain-0 inits us with rings in its new memory, which Xen
        # sent before that Domain-0 ran: take it before translating anything.
        self._drain_ctl()
        self._reset()
        try:
            info = self.iommu.frame(msg["info_bfn"], write=True)
        except DmaFault as exc:
            log(f"{self.name}: init refused, info page: {exc}")
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
        self.xen.close(0)
        self.mmio.close(0)
        self.ctx.term()
        self.ctl.close()
        self.image.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="devices.disk", description=__doc__.splitlines()[0])
    for opt in ("--host", "--name", "--endpoint", "--secret", "--image"):
        p.add_argument(opt, required=True)
    p.add_argument("--ctl-fd", type=int, required=True)
    p.add_argument("--irq", type=int, required=True)
    p.add_argument("--latency", default="none")
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _as_hardware(a: argparse.Namespace) -> None:
    import ctypes

    from setproctitle import setproctitle
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the launcher
    setproctitle(f"xenolab[{a.host}]: {a.name} (disk device)")


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    _as_hardware(a)
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
