"""netback's adapter in Domain-0: the data path over all vifs (one Dom0 turn).

Rules:
1. Devices are found like blkback's: a watch on /local/domain/0/backend/vif;
   each <frontend>/<devid> becomes a ``VifBackend`` (netback/vif.py), which
   runs xenbus, maps the rings and is a bridge port.
2. One Dom0 turn (``NetbackService.run``) serves every vif that had an
   event: copy out all tx slots, fetch all their data, hand the frames to
   the bridges, write everything the bridges queued for the guests, then
   push responses and notify each frontend at most once. No other
   hypercall is on the fast path; notifications are posted.
3. Data movement, per vif. With persistent grants (both ends offered
   ``feature-persistent``; netback/persistent.py) the data is read and
   written through netback's persistent mappings of the frontend's pool
   pages: after warm-up a turn makes no hypercall but the posted
   notifications. Otherwise (upstream Linux's way) all tx data is fetched
   with one batched GNTTABOP_copy and all rx data written with a second,
   through Dom0 scratch pages (a grant copy names our frames by gmfn):
   nothing of such a guest stays mapped except its two ring pages.
4. A bug while serving a vif cuts those vifs off; it never takes Domain-0
   down.
"""

from __future__ import annotations

import traceback

from domains.dom0.netback.core import RxPacket, TxPacket
from domains.dom0.netback.vif import ROOT, VifBackend
from hypervisor.public import trace as T
from hypervisor.public.grant_table import GNTST, GNTCOPY_dest_gref, GNTCOPY_source_gref
from hypervisor.public.netif import NETIF_RSP_ERROR, NETIF_RSP_OKAY
from hypervisor.public.xen import DOMID_SELF

COPY_BATCH = 512  # Xen's limit of ops per GNTTABOP_copy call in this model
STATS_PERIOD_S = 1.0


class Scratch:
    """Dom0 frames that grant copies move packet data through."""

    def __init__(self, kernel) -> None:
        self.k = kernel
        self.pages: list[tuple[int, memoryview]] = []

    def get(self, n: int) -> list[tuple[int, memoryview]]:
        while len(self.pages) < n:
            pfn = self.k.frames.alloc()
            self.pages.append((pfn, self.k.page(pfn)))
        return self.pages[:n]


class NetbackService:
    """Watches backend/vif and runs one Dom0 turn for all vifs with work."""

    def __init__(self, dom0) -> None:
        self.dom0, self.k, self.xs = dom0, dom0.kernel, dom0.xs
        self.backends: dict[tuple[int, int], VifBackend] = {}
        self.dirty: dict[VifBackend, None] = {}
        self.tx_scratch, self.rx_scratch = Scratch(self.k), Scratch(self.k)
        self.stats_timer = None
        self.turning = False
        self.xs.watch(ROOT, "netback", lambda *_: self.scan())

    def scan(self) -> None:
        xs = self.xs
        for fe in xs.try_directory(ROOT):
            for devid in xs.try_directory(f"{ROOT}/{fe}"):
                key = (int(fe), int(devid))
                if key not in self.backends and xs.try_read(f"{ROOT}/{fe}/{devid}/state"):
                    self.backends[key] = VifBackend(self, *key)
        for be in list(self.backends.values()):
            if xs.try_read(f"{be.path}/state") is None:
                be.remove()

    def forget(self, be: VifBackend) -> None:
        self.backends.pop((be.fe, be.devid), None)
        self.dirty.pop(be, None)

    def kick(self, vif: VifBackend) -> None:
        self.dirty[vif] = None
        if not self.turning:  # a kick during a turn is picked up at its end
            self.k.call_soon_once(self.run)

    def statistics(self, fe: int) -> list[dict]:
        return [be.describe() for (f, _), be in sorted(self.backends.items()) if f == fe]

    # ---- one turn ----------------------------------------------------------

    def run(self) -> None:
        vifs = [v for v in self.dirty if v.core is not None]
        self.dirty = {}
        self.turning = True
        try:
            self._turn(vifs)
        except Exception as exc:  # noqa: BLE001 - a bug here must not take Dom0 down
            traceback.print_exc()
            for vif in vifs:
                vif.fatal(f"netback failed serving this vif: {exc!r}")
        finally:
            self.turning = False
        if self.dirty:
            self.k.call_soon_once(self.run)

    def _turn(self, vifs: list[VifBackend]) -> None:
        frames = self._tx(vifs)
        touched = dict.fromkeys(vifs)
        for vif, pkt, data in frames:
            vif.capture(data)
            vif.bridge_input(data, pkt.gso_size)
        touched.update(self.dirty)  # vifs the bridge queued frames for
        self.dirty = {}
        self._rx([v for v in touched if v.core is not None])
        for vif in touched:
            vif.finish_turn()
        if self.stats_timer is None and touched:
            self.stats_timer = self.k.call_later(STATS_PERIOD_S, self._publish_stats)

    def _tx(self, vifs: list[VifBackend]) -> list[tuple[VifBackend, TxPacket, bytes]]:
        batch = [(vif, pkt) for vif in vifs for pkt in vif.core.poll_tx()]
        good = [(vif, pkt) for vif, pkt in batch if pkt.status == NETIF_RSP_OKAY]
        data = self._tx_mapped([(v, p) for v, p in good if v.pmaps is not None])
        data.update(self._tx_copied([(v, p) for v, p in good if v.pmaps is None]))
        out = []
        for vif, pkt in batch:
            if pkt.status != NETIF_RSP_OKAY:
                vif.log_drop(pkt.reason)
                vif.core.respond_tx(pkt, pkt.status)
                continue
            frame = data[pkt]
            vif.core.respond_tx(pkt, NETIF_RSP_OKAY if frame is not None else NETIF_RSP_ERROR)
            if frame is not None:
                out.append((vif, pkt, frame))
        return out

    def _tx_mapped(self, good: list[tuple[VifBackend, TxPacket]]) -> dict:
        """Rule 3, persistent: read each frame through the vif's mappings."""
        out: dict[TxPacket, bytes | None] = {}
        for vif, pkts in _by_vif(good).items():
            maps = vif.pmaps.lookup([f[0] for p in pkts for f in p.frags], writable=False)
            T.stamp(T.NETBACK_TX_MAPPED, 0, vif.fe, len(pkts))
            for pkt in pkts:
                pieces = [(maps[gref], offset, size) for gref, offset, size in pkt.frags]
                out[pkt] = None if any(isinstance(m, int) for m, _, _ in pieces) else b"".join(
                    m.page[offset:offset + size] for m, offset, size in pieces)
        return out

    def _tx_copied(self, good: list[tuple[VifBackend, TxPacket]]) -> dict:
        """Rule 3, copy: one batched GNTTABOP_copy into our scratch pages."""
        pages = self.tx_scratch.get(sum(len(p.frags) for _, p in good))
        ops, where = [], []
        for vif, pkt in good:
            for gref, offset, size in pkt.frags:
                pfn, page = pages[len(where)]
                where.append((page, size))
                ops.append({"source": {"ref": gref, "domid": vif.fe, "offset": offset},
                            "dest": {"gmfn": pfn, "domid": DOMID_SELF, "offset": 0},
                            "len": size, "flags": GNTCOPY_source_gref})
        if T.on:
            for vif in dict.fromkeys(v for v, _ in good):
                T.stamp(T.NETBACK_TX, 0, vif.fe, sum(1 for v, _ in good if v is vif))
        status = self._copy(ops)
        out: dict[TxPacket, bytes | None] = {}
        k = 0
        for _vif, pkt in good:
            n = len(pkt.frags)
            ok = all(s == GNTST.okay for s in status[k:k + n])
            out[pkt] = b"".join(page[:size] for page, size in where[k:k + n]) if ok else None
            k += n
        return out

    def _rx(self, vifs: list[VifBackend]) -> None:
        batch = [(vif, pkt) for vif in vifs for pkt in vif.core.build_rx()]
        ok = self._rx_mapped([(v, p) for v, p in batch if v.pmaps is not None])
        ok.update(self._rx_copied([(v, p) for v, p in batch if v.pmaps is None]))
        for vif, pkt in batch:
            vif.core.respond_rx(pkt, ok[pkt])
            if ok[pkt]:
                vif.capture(pkt.frame)

    def _rx_mapped(self, batch: list[tuple[VifBackend, RxPacket]]) -> dict:
        """Rule 3, persistent: write each frame through the vif's mappings."""
        out: dict[RxPacket, bool] = {}
        for vif, pkts in _by_vif(batch).items():
            maps = vif.pmaps.lookup([pc[1] for p in pkts for pc in p.pieces], writable=True,
                                    ahead=vif.core.posted_rx_grefs)
            T.stamp(T.NETBACK_RX_MAPPED, 0, vif.fe, len(pkts))
            for pkt in pkts:
                frame = memoryview(pkt.frame)
                ok = out[pkt] = not any(isinstance(maps[pc[1]], int) for pc in pkt.pieces)
                if ok:
                    for _id, gref, start, length in pkt.pieces:
                        maps[gref].page[:length] = frame[start:start + length]
        return out

    def _rx_copied(self, batch: list[tuple[VifBackend, RxPacket]]) -> dict:
        """Rule 3, copy: one batched GNTTABOP_copy out of our scratch pages."""
        pages = self.rx_scratch.get(sum(len(p.pieces) for _, p in batch))
        ops, n = [], 0
        for vif, pkt in batch:
            frame = pkt.frame
            for _id, gref, start, length in pkt.pieces:
                pfn, page = pages[n]
                page[:length] = frame[start:start + length]
                n += 1
                ops.append({"source": {"gmfn": pfn, "domid": DOMID_SELF, "offset": 0},
                            "dest": {"ref": gref, "domid": vif.fe, "offset": 0},
                            "len": length, "flags": GNTCOPY_dest_gref})
        if T.on:
            for vif in dict.fromkeys(v for v, _ in batch):
                T.stamp(T.NETBACK_RX, 0, vif.fe, sum(1 for v, _ in batch if v is vif))
        status = self._copy(ops)
        out: dict[RxPacket, bool] = {}
        k = 0
        for _vif, pkt in batch:
            m = len(pkt.pieces)
            out[pkt] = all(s == GNTST.okay for s in status[k:k + m])
            k += m
        return out

    def _copy(self, ops: list[dict]) -> list[int]:
        if not ops:
            return []
        out: list[int] = []
        for i in range(0, len(ops), COPY_BATCH):
            out += self.k.gnttab.copy(ops[i:i + COPY_BATCH])
        if len(out) != len(ops):
            raise OSError(f"GNTTABOP_copy answered {len(out)} of {len(ops)} ops")
        return out

    def _publish_stats(self) -> None:
        self.stats_timer = None
        for be in list(self.backends.values()):
            be.publish_stats()


def _by_vif(pairs: list) -> dict:
    """[(vif, packet)] -> {vif: [packet, ...]}, in order."""
    out: dict = {}
    for vif, pkt in pairs:
        out.setdefault(vif, []).append(pkt)
    return out
