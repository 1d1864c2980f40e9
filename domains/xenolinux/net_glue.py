"""The guest's network subsystem: one TCP/IP stack, its timers, its interfaces.

Rules:
1. The stack (domains.xenolinux.net, sans-IO) is entered only through `call()`
   (socket calls), a received frame, or the stack timer; each entry ends with
   stack.flush(), which hands each device its one batch of frames. Frames that
   netfront delivers in one upcall share one flush (one call_soon per upcall).
2. One kernel timer (kernel.call_at) follows stack.next_deadline_ns(); it is
   re-armed when the stack's on_change fires and after every entry.
3. `lo` (127.0.0.1/8) always exists. A netdev (netfront's, contract §1) is brought
   up when it attaches if Linux's `ip=` boot parameter names it (the core's
   parser: no device means eth0); the default route is set from its gateway.
   Without `ip=` a netdev stays down, as in Linux without a configuration.
4. The stack class is injected (tests) or imported lazily, so a kernel without
   the TCP/IP core still boots; its socket() is then EAFNOSUPPORT.
"""

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass

from domains.kernel.framesum import summary
from hypervisor.public import trace as T


def ip_config(cmdline: str, printk: Callable[[str], None]):
    """The static configuration in the cmdline's `ip=` (the core's parser,
    domains/xenolinux/net/config.py): fields ip, prefix, gateway, device; or None."""
    try:
        from domains.xenolinux.net.config import from_cmdline
    except ImportError:
        return None
    try:
        return from_cmdline(cmdline)
    except OSError as err:
        printk(f"IP-Config: bad ip= ({err.strerror}); not configuring")
        return None


@dataclass
class Interface:
    name: str
    dev: object | None  # None: lo
    ip: str | None = None
    prefix: int = 0
    # What crossed the device (Linux's rtnl_link_stats64); a GSO frame counts once.
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0


def _default_stack():
    from domains.xenolinux.net.stack import NetStack  # absent in a kernel without the core
    return NetStack


class NetGlue:
    def __init__(self, kernel, printk: Callable[[str], None], config=None,
                 stack_factory=None) -> None:
        self.k, self.printk = kernel, printk
        self.config = config  # from ip_config(): .ip, .prefix, .gateway, .device
        self.interfaces: dict[str, Interface] = {}
        self.stack = None
        self.timer = None
        self.armed_ns: int | None = None
        self.flush_queued = False
        try:
            factory = stack_factory or _default_stack()
        except ImportError:
            printk("NET: no TCP/IP stack in this kernel: sockets unavailable")
            return
        self.stack = factory(time.monotonic_ns)
        self.stack.on_change = self._arm
        self.call(self.stack.add_interface, "lo", None, "127.0.0.1", 8)
        self.interfaces["lo"] = Interface("lo", None, "127.0.0.1", 8)
        printk("NET: Registered PF_INET protocol family; lo: 127.0.0.1/8")

    # ---- entering the stack ---------------------------------------------------

    def call(self, fn, *args):
        """Run one stack operation, then flush its output and re-arm its timer."""
        try:
            return fn(*args)
        finally:
            self.stack.flush()
            self._arm()

    def socket(self, kind: int):
        if self.stack is None:
            raise OSError(errno.EAFNOSUPPORT, "no TCP/IP stack")
        return self.call(self.stack.socket, kind)

    def _arm(self) -> None:
        deadline = self.stack.next_deadline_ns()
        if deadline == self.armed_ns:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.armed_ns = deadline
        self.timer = None if deadline is None else self.k.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self.timer = self.armed_ns = None
        self.call(self.stack.on_timer)

    def _received(self) -> None:
        """After an upcall's frames: one flush for all of them."""
        self.flush_queued = False
        self.stack.flush()
        self._arm()

    # ---- devices ----------------------------------------------------------------

    def attach(self, dev) -> None:
        """guest.on_netdev: a netfront reached Connected (contract §1)."""
        if dev.name in self.interfaces:
            return
        iface = Interface(dev.name, dev)
        self.interfaces[dev.name] = iface
        mac = ":".join(f"{b:02x}" for b in dev.mac)
        cfg = self.config
        if self.stack is None or cfg is None or cfg.device != dev.name:
            self.printk(f"NET: {dev.name}: {mac}, not configured (no ip= for it)")
            return
        try:
            self.call(self.stack.add_interface, dev.name, dev, cfg.ip, cfg.prefix)
            if cfg.gateway:
                self.call(self.stack.set_default_route, cfg.gateway)
        except OSError as err:  # a bad ip= must not take the driver's upcall down
            self.printk(f"IP-Config: {dev.name}: {err.strerror}; not configured")
            return
        self._count_and_batch(iface)
        iface.ip, iface.prefix = cfg.ip, cfg.prefix
        self.printk(f"IP-Config: {dev.name} ({mac}) {cfg.ip}/{cfg.prefix}"
                    f"{f' via {cfg.gateway}' if cfg.gateway else ''}")

    def _count_and_batch(self, iface: Interface) -> None:
        """Wrap the receiver the stack set (frames go in, one flush follows later)
        and the device's transmit, counting both ways."""
        dev, inner, send = iface.dev, iface.dev.receiver, iface.dev.transmit

        def receive(frame: bytes, gso_size: int) -> None:
            iface.rx_packets += 1
            iface.rx_bytes += len(frame)
            if T.on:
                T.stamp(T.NET_RX, T.current, len(frame), 0, summary(frame))
            inner(frame, gso_size)
            if not self.flush_queued:
                self.flush_queued = True
                self.k.call_soon(self._received)

        def transmit(frames: list[tuple[bytes, int]]) -> None:
            iface.tx_packets += len(frames)
            iface.tx_bytes += sum(len(f) for f, _ in frames)
            if T.on:
                for f, _ in frames:
                    T.stamp(T.NET_TX, T.current, len(f), 0, summary(f))
            send(frames)
        dev.receiver, dev.transmit = receive, transmit

    def describe(self) -> list[dict]:
        """What ifconfig shows: one record per interface."""
        out = []
        for i in self.interfaces.values():
            dev = i.dev
            rec = {"name": i.name, "ip": i.ip, "prefix": i.prefix, "up": i.ip is not None,
                   "mac": dev.mac.hex(":") if dev is not None else "00:00:00:00:00:00",
                   "mtu": getattr(dev, "mtu", 65536), "gso": bool(getattr(dev, "gso", False))}
            if dev is not None:
                rec["stats"] = {k: getattr(i, k) for k in
                                ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")}
            out.append(rec)
        return out
