"""What every device process shares with the platform (disk, NIC).

Rules (the devices' rules 1-2):
1. Process. The launcher starts a device before Xen with a secret, a
   control socket (--ctl-fd) and an IRQ. It dies with the launcher
   (PR_SET_PDEATHSIG) and exits when Xen closes the control socket.
2. Channels (hypervisor.public.platform): a DEALER to Xen's ROUTER whose
   routing id is the secret (hello, then posted IRQs); the control socket,
   where Xen hands over the IOMMU table (mapped read-only) and domains'
   memory; and a PULL at mmio_endpoint(host, name) for Dom0's MMIO writes.
   MMIO is read only once Dom0's memory and the table are here: until then
   ZeroMQ holds the writes, so an early "init" is never lost. A write the
   device's ABI cannot decode is logged and ignored.
"""

import argparse
import mmap
import os
import signal
import socket
import sys
import time

import msgpack
import zmq

from devices.dma import DmaFault, Iommu, map_memory
from hypervisor.public import envelope
from hypervisor.public.platform import IOMMU_FOREIGN_BASE, PLATFORM_OP, PlatformOp, mmio_endpoint
from hypervisor.public.xen import PAGE_SIZE

PR_SET_PDEATHSIG = 1
HELLO_SEQ = 1
IRQ_FRAME = envelope.encode_request(envelope.POSTED, PLATFORM_OP, PlatformOp.irq, None)


def log(msg: str) -> None:
    print(f"[{time.monotonic():12.6f}] {msg}", flush=True)


class PlatformDevice:
    kind = "device"
    mmio_error: type[Exception] = ValueError

    def __init__(self, a: argparse.Namespace) -> None:
        self.name, self.host, self.irq = a.name, a.host, a.irq
        self.iommu = Iommu(0, IOMMU_FOREIGN_BASE, refresh=self._drain_ctl)
        self.maps: dict[object, mmap.mmap] = {}  # "iommu" or a domid -> its mapping
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

    def hello(self) -> None:
        self.xen.send(envelope.encode_request(HELLO_SEQ, PLATFORM_OP, PlatformOp.hello,
                                              {"name": self.name, "kind": self.kind}))

    def send_irq(self) -> None:
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
        log(f"{self.name}: up on IRQ {out['irq']}, {self.describe()}")
        self._check_ready()

    def describe(self) -> str:
        """What the device says about itself once it is up."""
        return self.kind

    def _on_ctl(self) -> None:
        if not self._recv_ctl(0):
            log(f"{self.name}: Xen closed the control socket; powering off")
            self.running = False
        self._check_ready()

    def _init_info_page(self, msg: dict) -> memoryview | None:
        """An "init" write's first steps, alike for every controller: take the
        memory Xen has already sent (a restarted Domain-0 inits us with rings
        in its new memory, sent before that Domain-0 ran), forget the old
        rings (`_reset`), then map the info page; None if it is refused."""
        self._drain_ctl()
        self._reset()
        try:
            return self.iommu.frame(msg["info_bfn"], write=True)
        except DmaFault as exc:
            log(f"{self.name}: init refused, info page: {exc}")
            return None

    def _reset(self) -> None:
        """Drop the rings and state of the last init (each controller's own)."""

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

    @staticmethod
    def decode_mmio(frame: bytes) -> dict:
        raise NotImplementedError

    def _on_mmio(self) -> None:
        while self.running:
            try:
                frame = self.mmio.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = self.decode_mmio(frame)
            except self.mmio_error as exc:
                log(f"{self.name}: ignored MMIO write: {exc}")
                continue
            getattr(self, "_mmio_" + msg["op"])(msg)

    def close_channels(self) -> None:
        self.xen.close(0)
        self.mmio.close(0)
        self.ctx.term()
        self.ctl.close()


def device_parser(prog: str, doc: str, *required: str) -> argparse.ArgumentParser:
    """The options every device takes (the launcher's firmware passes them)."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    for opt in ("--host", "--name", "--endpoint", "--secret", *required):
        p.add_argument(opt, required=True)
    p.add_argument("--ctl-fd", type=int, required=True)
    p.add_argument("--irq", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    return p


def as_hardware(a: argparse.Namespace, kind: str) -> None:
    """Die with the launcher, ignore Ctrl-C (the launcher's), be named."""
    import ctypes

    from setproctitle import setproctitle
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setproctitle(f"xenolab[{a.host}]: {a.name} ({kind} device)")
