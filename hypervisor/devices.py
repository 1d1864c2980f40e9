"""Xen's side of the platform: the devices, their hello, IRQs and replacement.

Rules (hypervisor.public.platform):
1. `devices` holds every device by name, whatever its state; only a live
   one (booting or up) is reachable: by its secret on the ROUTER and by its
   control socket, which the main loop polls for end of file.
2. End of file on a device's control socket is its death (only the device
   holds the other end, and it never writes): its secret is forgotten, the
   socket closed, and VIRQ_DEVICE raised. Xen restarts nothing: that is the
   firmware's job (the launcher), which sends "replace" with a fresh secret
   and control socket, or "remove" when it gives up. The launcher sends
   "replace" before it starts the process, and the main loop reads the
   firmware channel before the ROUTER, so the hello always finds its secret.
3. A replacement keeps the name, kind, IRQ and image, so Dom0's pirq port
   and MMIO address stay valid; it starts with no memory given. Its hello
   gets the IOMMU table, Dom0's memory and the memory of every domain an
   IOMMU entry names (so commands re-submitted by Dom0 can be served),
   then its state is "up" and VIRQ_DEVICE tells Dom0.
4. Nothing on the firmware channel or a device socket raises out of the
   loop: malformed messages are logged to Xen's console and dropped.
"""

import os
import socket

from hypervisor.domain import Domain
from hypervisor.iommu import Device
from hypervisor.public import envelope, hops, trace
from hypervisor.public.grant_table import GNTMAP_readonly
from hypervisor.public.platform import (
    IOMMU_ENTRIES,
    IOMMU_FOREIGN_BASE,
    PLATFORM_OP,
    DeviceState,
    FirmwareError,
    PlatformOp,
    decode_firmware,
    mmio_endpoint,
)
from hypervisor.public.xen import Virq


class DevicesMixin:
    """The Hypervisor's device methods (its attributes: see rule 1)."""

    def _init_devices(self, firmware_fd: int = -1) -> None:
        self.devices: dict[str, Device] = {}
        self.device_ids: dict[bytes, Device] = {}  # live devices by secret
        self.device_ctls: dict[int, Device] = {}  # live devices by control fd
        self.firmware = socket.socket(fileno=firmware_fd) if firmware_fd >= 0 else None

    def add_device(self, name: str, kind: str, secret: bytes, fd: int, irq: int,
                   image: str = "", generation: int = 0) -> Device:
        dev = Device(name, kind, secret, socket.socket(fileno=fd), irq, image=image,
                     generation=generation)
        self.devices[name] = dev
        self.device_ids[secret] = dev
        self.device_ctls[fd] = dev
        self._pidfds_changed = True  # the loop polls the control socket
        return dev

    def firmware_fds(self) -> list[int]:
        return [self.firmware.fileno()] if self.firmware is not None else []

    def on_device_fd(self, fd: int) -> None:
        if fd in self.device_ctls:
            self.device_died(self.device_ctls[fd])
        elif self.firmware is not None and fd == self.firmware.fileno():
            self.on_firmware()

    def device_died(self, dev: Device) -> None:
        """Rule 2: the device's link is down."""
        if dev.state in (DeviceState.dead, DeviceState.removed):
            return
        self.device_ids.pop(dev.secret, None)
        self.device_ctls.pop(dev.ctl.fileno(), None)
        self._pidfds_changed = True
        dev.ctl.close()
        dev.state = DeviceState.dead
        self.console.write(f"Device {dev.name} (generation {dev.generation}) is gone")
        self.evtchn.raise_global_virq(Virq.DEVICE)

    def on_firmware(self) -> None:
        try:
            raw, fds, _, _ = socket.recv_fds(self.firmware, 1024, 1)
        except OSError:
            raw, fds = b"", []
        if not raw and not fds:  # the launcher is gone; PDEATHSIG ends us soon
            self.firmware.close()
            self.firmware = None
            self._pidfds_changed = True
            return
        try:
            msg = decode_firmware(raw)
            if msg["op"] == "replace":
                if not fds:
                    raise FirmwareError("replace without a control socket")
                self.replace_device(msg["name"], msg["secret"], fds.pop(0))
            else:
                self.remove_device(msg["name"])
        except FirmwareError as exc:
            self.console.write(f"firmware: {exc}")
        for fd in fds:
            os.close(fd)

    def replace_device(self, name: str, secret: bytes, fd: int) -> None:
        """Rule 3: a hot-replaced controller on the same IRQ."""
        old = self.devices.get(name)
        if old is None or old.state is DeviceState.removed or secret in self.device_ids:
            os.close(fd)
            raise FirmwareError(f"replace {name}: no such device, or removed")
        self.device_died(old)  # the firmware may see the death before we do
        self.add_device(old.name, old.kind, secret, fd, old.irq, old.image, old.generation + 1)
        self.console.write(f"Device {name} replaced (generation {old.generation + 1})")

    def remove_device(self, name: str) -> None:
        dev = self.devices.get(name)
        if dev is None:
            raise FirmwareError(f"remove {name}: no such device")
        self.device_died(dev)
        dev.state = DeviceState.removed
        self.console.write(f"Device {name} removed")
        self.evtchn.raise_global_virq(Virq.DEVICE)

    def handle_device_frame(self, dev: Device, frame: bytes) -> None:
        try:
            req = envelope.decode_request(frame)
        except envelope.EnvelopeError:
            return
        if req.hypercall != PLATFORM_OP:
            return
        if req.cmd == PlatformOp.irq:
            hops.stamp(hops.XEN_PIRQ, dev.irq)
            trace.stamp(trace.XEN_PIRQ, 0, dev.irq)
            self.evtchn.raise_pirq(dev.irq)
        elif req.cmd == PlatformOp.hello and dev.state is DeviceState.booting:
            self._device_hello(dev, req.seq)

    def _device_hello(self, dev: Device, seq: int) -> None:
        dom0 = self.domains[0]
        ok = self.iommu.give_table(dev) and self.iommu.give_memory(dev, 0, dom0.mem)
        for domid in sorted(self.iommu.granters()):  # rule 3
            g = self.domains.get(domid)
            if ok and g is not None:
                ok = self.iommu.give_memory(dev, domid, g.mem)
        if not ok:
            return  # it died meanwhile; the loop sees its socket close
        dev.state = DeviceState.up
        self.console.write(f"Device {dev.name} ({dev.kind}) up on IRQ {dev.irq}")
        self._send(dev.secret, envelope.encode_reply(seq, 0, {
            "irq": dev.irq, "dom0_pages": dom0.nr_pages, "foreign_base": IOMMU_FOREIGN_BASE,
            "entries": IOMMU_ENTRIES}))
        self.evtchn.raise_global_virq(Virq.DEVICE)

    def iommu_map(self, mapper: Domain, granter: int, pfn: int, handle: int, flags: int) -> int:
        """GNTMAP_device_map by the hardware domain: a bus frame for DMA."""
        if mapper.domid != 0 or not self.devices:
            return 0
        g = self.domains[granter]
        for dev in list(self.device_ids.values()):
            if dev.up:
                self.iommu.give_memory(dev, granter, g.mem)
        return self.iommu.map(0, handle, granter, pfn, not flags & GNTMAP_readonly)

    def device_list(self) -> list[dict]:
        return [{"name": d.name, "kind": d.kind, "irq": d.irq, "image": d.image,
                 "mmio": mmio_endpoint(self.host, d.name), "state": str(d.state),
                 "generation": d.generation}
                for d in sorted(self.devices.values(), key=lambda d: d.irq)]

    def close_devices(self) -> None:
        for dev in self.devices.values():
            if dev.state in (DeviceState.booting, DeviceState.up):
                dev.ctl.close()  # the device powers off (devices.platform rule 1)
        if self.firmware is not None:
            self.firmware.close()
