"""Domain-0's physical NIC driver (the controller of hypervisor.public.nicdev).

The driver is a bridge port (domains/dom0/bridge.py's BridgePort: `name`,
`gso`, `deliver`), named eth0, eth1 ... in probe order, attached to the
bridge its device description names (`bridge`, default "xenbr0").

Rules:
1. Dom0 owns every page: the TX and RX rings (contiguous frames of its own
   memory, so bus address = pfn), the info page, one TX buffer page per TX
   slot and one RX buffer page per RX slot. Rings are initialised
   (SHARED_RING_INIT) and every RX buffer posted before "init" goes out.
2. RX: the IRQ handler takes every RX response (FINAL_CHECK), copies each
   frame out of its buffer, posts the buffer again at once, and only then
   hands the frames to the bridge (`bridge.input(self, frame, 0)`), so the
   device has buffers while the bridge works. The last frames are also kept
   in `captured` (a tcpdump on the port, for `nic_recv` and tests).
3. TX: `deliver(frame, gso_size)` copies the frame into a free TX buffer and
   queues the request; requests of one event-loop turn are published
   together and the doorbell rung only if push_requests() says so (for
   either ring). With no free buffer the frame waits in a backlog of
   TXQUEUELEN frames (then it is dropped and counted, like a full qdisc).
   gso is False: the bridge cuts GSO frames first; one that still comes
   is cut here with domains.kernel.gso.segment.
4. The device is not trusted: a response with an id we never posted is
   counted and dropped; a lying rsp_prod halts the driver (`error`).
5. Link down and reset, as the disk driver (drivers.disk rule 6): when Xen
   says the device is gone the port stops sending (frames queue in the
   backlog); when a replacement is up, fresh rings are laid, every RX
   buffer is posted again, TX requests in flight are forgotten (lost frames,
   as after a controller reset) and "init" goes out again.
"""

import json
import os
import time
from collections import Counter, deque

import zmq

from domains.dom0.drivers.devinfo import InfoPageDriver
from domains.kernel.ring import FrontRing, RingError
from hypervisor.public.nicdev import (
    ETH_HLEN,
    INFO_SIZE,
    LINK_CHANGES_WORD,
    LINK_FLAGS_WORD,
    NIC_INFO_MAGIC,
    NIC_MAX_FRAME,
    NIC_RX_RING_PAGES,
    NIC_TX_RING_PAGES,
    RX_SLOT_SIZE,
    TX_SLOT_SIZE,
    NicStatus,
    check_wire,
    encode_mmio,
    pack_rx,
    pack_tx,
    unpack_info,
    unpack_rx_rsp,
    unpack_tx_rsp,
)
from hypervisor.public.xen import PAGE_SIZE

KICK = encode_mmio("kick")
TXQUEUELEN = 1000
CAPTURE = 64
DEFAULT_BRIDGE = "xenbr0"


class NicDriver(InfoPageDriver):
    INFO_MAGIC, INFO_SIZE, unpack_info = NIC_INFO_MAGIC, INFO_SIZE, staticmethod(unpack_info)

    gso = False  # BridgePort: TSO frames are cut by the bridge (contract §3)

    def __init__(self, kernel, dev: dict, ctx: zmq.Context, name: str = "eth0",
                 bridge: str = DEFAULT_BRIDGE) -> None:
        self.k, self.dev_name, self.irq = kernel, dev["name"], dev["irq"]
        self.name, self.bridge_name = name, bridge
        self.bridge = None  # set by attach()
        self.generation = dev.get("generation", 0)
        self.link = "up"
        self.tx_ring_pfns = kernel.frames.alloc_contiguous(NIC_TX_RING_PAGES)
        self.rx_ring_pfns = kernel.frames.alloc_contiguous(NIC_RX_RING_PAGES)
        self.info_pfn = kernel.frames.alloc()
        self.tx_buf = self._span(self.tx_ring_pfns)
        self.rx_buf = self._span(self.rx_ring_pfns)
        self.info_page = kernel.page(self.info_pfn)
        self.tx = self.rx = None
        self._new_rings()
        self.tx_pfns = [kernel.frames.alloc() for _ in range(self.tx.size)]
        self.rx_pfns = [kernel.frames.alloc() for _ in range(self.rx.size)]
        self.tx_free = list(range(self.tx.size - 1, -1, -1))
        self.rx_posted: set[int] = set()
        self.backlog: deque[bytes] = deque()
        self.captured: deque[bytes] = deque(maxlen=CAPTURE)
        self.info: dict | None = None
        self.error = ""
        self.counts: Counter[str] = Counter()
        self.ctx, self.mmio_addr = ctx, dev["mmio"]
        self._open_mmio()
        self.port = kernel.evtchn.bind_pirq(self.irq)
        kernel.evtchn.on(self.port, self._on_irq)
        self._init()

    def _span(self, pfns: list[int]) -> memoryview:
        return self.k.mem[pfns[0] * PAGE_SIZE:(pfns[-1] + 1) * PAGE_SIZE]

    def _new_rings(self) -> None:
        for ring in (self.tx, self.rx):
            if ring is not None:
                ring.release()
        self.tx = FrontRing(self.tx_buf, TX_SLOT_SIZE)  # SHARED_RING_INIT
        self.rx = FrontRing(self.rx_buf, RX_SLOT_SIZE)

    def _open_mmio(self) -> None:
        self.mmio = self.ctx.socket(zmq.PUSH)
        self.mmio.setsockopt(zmq.LINGER, 0)
        self.mmio.connect(self.mmio_addr)

    def _init(self) -> None:
        """Rule 1: info page zeroed, every RX buffer posted, then "init"."""
        self.info = None
        self.info_page[:] = bytes(PAGE_SIZE)
        self.rx_posted.clear()
        for id_ in range(len(self.rx_pfns)):
            self._post_rx(id_)
        self._send(encode_mmio(
            "init", tx_ring_bfn=self.tx_ring_pfns[0], tx_ring_pages=len(self.tx_ring_pfns),
            rx_ring_bfn=self.rx_ring_pfns[0], rx_ring_pages=len(self.rx_ring_pfns),
            info_bfn=self.info_pfn))
        self._schedule_push()

    def _post_rx(self, id_: int) -> None:
        self.rx.put_request(pack_rx(id_, self.rx_pfns[id_], 0, PAGE_SIZE))
        self.rx_posted.add(id_)

    # ---- bring-up --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.info is not None and not self.error and self.link == "up"

    def _info_ready(self) -> None:
        self._drain_backlog()

    # ---- TX: the bridge port (rule 3) ----------------------------------------------

    def deliver(self, frame: bytes, gso_size: int = 0) -> None:
        if gso_size > 0:
            from domains.kernel.gso import segment  # lazily: written in parallel (contract §2)
            for piece in segment(frame, gso_size):
                self.deliver(piece, 0)
            return
        if self.error or not ETH_HLEN <= len(frame) <= NIC_MAX_FRAME:
            self.counts["tx_dropped"] += 1
            return
        if self.backlog or not self.ready or not self.tx_free:
            if len(self.backlog) >= TXQUEUELEN:
                self.counts["tx_dropped"] += 1
                return
            self.backlog.append(bytes(frame))
            return
        self._put_tx(frame)

    def _put_tx(self, frame: bytes) -> None:
        id_ = self.tx_free.pop()
        pfn = self.tx_pfns[id_]
        self.k.mem[pfn * PAGE_SIZE:pfn * PAGE_SIZE + len(frame)] = frame
        self.tx.put_request(pack_tx(id_, [(pfn, 0, len(frame))]))
        self.counts["tx_frames"] += 1
        self._schedule_push()

    def _drain_backlog(self) -> None:
        while self.backlog and self.tx_free and self.ready:
            self._put_tx(self.backlog.popleft())

    def _schedule_push(self) -> None:
        self.k.call_soon_once(self._push)

    def _push(self) -> None:
        if self.error:
            return
        notify = self.tx.push_requests()
        notify = self.rx.push_requests() or notify
        if notify:
            self.counts["doorbells"] += 1
            self._send(KICK)

    # ---- the interrupt (rules 2, 4) ----------------------------------------------------

    def _on_irq(self, _port: int) -> None:
        self.counts["irqs"] += 1
        if not self._check_info():
            return
        try:
            frames = self._take_rx()
            self._take_tx()
        except RingError as exc:
            self._halt(str(exc))
            return
        self._drain_backlog()
        self._schedule_push()
        for frame in frames:
            self.captured.append(frame)
            if self.bridge is not None:
                self.bridge.input(self, frame, 0)

    def _take_rx(self) -> list[bytes]:
        frames = []
        while True:
            for raw in self.rx.take_responses():
                frame = self._rx_one(*unpack_rx_rsp(raw))
                if frame is not None:
                    frames.append(frame)
            if not self.rx.final_check_for_responses():
                return frames

    def _rx_one(self, id_: int, status: int, length: int, _flags: int) -> bytes | None:
        if id_ not in self.rx_posted:
            self.counts["unknown_responses"] += 1
            return None
        self.rx_posted.discard(id_)
        frame = None
        if status == NicStatus.ok and ETH_HLEN <= length <= PAGE_SIZE:
            pfn = self.rx_pfns[id_]
            frame = bytes(self.k.mem[pfn * PAGE_SIZE:pfn * PAGE_SIZE + length])
            self.counts["rx_frames"] += 1
        else:
            self.counts["rx_errors"] += 1
        self._post_rx(id_)  # rule 2: the buffer goes back at once
        return frame

    def _take_tx(self) -> None:
        while True:
            for raw in self.tx.take_responses():
                id_, status = unpack_tx_rsp(raw)
                if not 0 <= id_ < len(self.tx_pfns) or id_ in self.tx_free:
                    self.counts["unknown_responses"] += 1
                    continue
                self.tx_free.append(id_)
                if status != NicStatus.ok:
                    self.counts["tx_errors"] += 1
            if not self.tx.final_check_for_responses():
                return

    def _halt(self, why: str) -> None:
        self.error = why
        self.backlog.clear()
        print(f"nic {self.dev_name}: halted: {why}", flush=True)

    # ---- link down and reset (rule 5) ---------------------------------------------------

    def device_changed(self, dev: dict) -> None:
        """Xen's device_list entry for us, after VIRQ_DEVICE (drivers.watch)."""
        state, generation = dev.get("state"), dev.get("generation", 0)
        if self.error:
            return
        if state == "removed":
            self.link = "down"
            self._halt("the device was removed")
        elif generation > self.generation:
            self.link = "down"
            if state == "up":
                self.reset(generation)
        elif state == "dead":
            self.link = "down"

    def reset(self, generation: int) -> None:
        self.generation, self.link = generation, "up"
        self.counts["resets"] += 1
        self._new_rings()
        self.tx_free = list(range(len(self.tx_pfns) - 1, -1, -1))
        self.mmio.close(0)
        self._open_mmio()
        self._init()
        print(f"nic {self.dev_name}: generation {generation} up, re-init", flush=True)

    # ---- MMIO, description ------------------------------------------------------------------

    def set_wire(self, **settings) -> None:
        """The link's fault model (nicdev "wire"); NicDevError on bad values."""
        msg = check_wire({"op": "wire", **{k: v for k, v in settings.items() if v is not None}})
        self._send(encode_mmio(**msg))

    def _send(self, frame: bytes) -> None:
        try:
            self.mmio.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            pass  # a dead device: the MMIO write goes nowhere

    def link_status(self) -> tuple[int, int]:
        """(link_changes, link_flags): the device's live status words."""
        if self.info is None:
            return 0, 0
        with self.info_page.cast("I") as words:
            return words[LINK_CHANGES_WORD], words[LINK_FLAGS_WORD]

    def describe(self) -> dict:
        info = dict(self.info or {})
        info.pop("magic", None)
        info["link_changes"], info["link_flags"] = self.link_status()
        return {"name": self.dev_name, "port_name": self.name, "bridge": self.bridge_name,
                "attached": self.bridge is not None, "irq": self.irq, "port": self.port,
                "ready": self.ready, "error": self.error, "link": self.link,
                "generation": self.generation, **info, "backlog": len(self.backlog),
                "statistics": dict(self.counts)}


# ---- probe, attach, ops -----------------------------------------------------------------------

def _config(kernel) -> dict:
    """<rundir>/nics.json, written by the launcher: {device: {"bridge": NAME}}."""
    try:
        with open(os.path.join(kernel.rundir, "nics.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def probe(kernel, timeout_s: float = 5.0) -> dict[str, NicDriver]:
    """Bring up every NIC of Xen's device list; never raises."""
    from domains.dom0.drivers import _context, device_list  # the disk's probe shares them
    cfg = _config(kernel)
    nics: dict[str, NicDriver] = {}
    for dev in device_list(kernel):
        if dev.get("kind") != "nic":
            continue
        bridge = cfg.get(dev.get("name"), {}).get("bridge", DEFAULT_BRIDGE)
        try:
            nics[dev["name"]] = NicDriver(kernel, dev, _context(), f"eth{len(nics)}", bridge)
        except (OSError, MemoryError, KeyError, ValueError) as exc:
            print(f"nic {dev.get('name')}: not probed: {exc}", flush=True)
    deadline = time.monotonic() + timeout_s
    for name, nic in nics.items():
        ok = nic.wait_ready(max(0.0, deadline - time.monotonic()))
        state = f"MAC {nic.info['mac']}" if ok else f"not ready yet ({nic.error or 'no info'})"
        print(f"nic {name}: {nic.name}, {state}, IRQ {nic.irq} on port {nic.port}", flush=True)
    return nics


def attach(bridges: dict, nics: dict[str, NicDriver]) -> None:
    """Make each NIC's driver a port of its bridge (contract §3)."""
    for nic in nics.values():
        bridge = bridges.get(nic.bridge_name)
        if bridge is None:
            print(f"nic {nic.dev_name}: no bridge {nic.bridge_name}; port left out", flush=True)
            continue
        bridge.add_port(nic)
        nic.bridge = bridge


def build_nic_ops(dom0) -> dict:
    """Toolstack ops on the physical NICs (`xenolab dev wire`, tests)."""
    from domains.dom0.toolstack.toolstack import ToolstackError
    from hypervisor.public.nicdev import NicDevError

    def nic(dev):
        d = getattr(dom0, "nics", {}).get(dev)
        if d is None:
            raise ToolstackError(f"no NIC {dev!r}")
        return d

    def nic_list(**_):
        return [d.describe() for d in getattr(dom0, "nics", {}).values()]

    def nic_send(dev, frame, **_):
        """Send one raw frame out of the NIC (a packet socket on the port)."""
        nic(dev).deliver(bytes(frame), 0)
        return True

    def nic_recv(dev, clear=True, **_):
        """The frames the NIC received lately (oldest first)."""
        d = nic(dev)
        frames = list(d.captured)
        if clear:
            d.captured.clear()
        return frames

    def nic_wire(dev, drop=None, dup=None, reorder=None, delay_ms=None, partition=None, **_):
        try:
            nic(dev).set_wire(drop=drop, dup=dup, reorder=reorder, delay_ms=delay_ms,
                              partition=partition)
        except NicDevError as exc:
            raise ToolstackError(str(exc)) from None
        return True

    return {"nic_list": nic_list, "nic_send": nic_send, "nic_recv": nic_recv,
            "nic_wire": nic_wire}
