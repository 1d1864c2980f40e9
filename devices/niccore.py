"""The Ethernet controller's DMA engine, sans-IO: two rings and an IOMMU.

Rules (hypervisor.public.nicdev):
1. TX: `transmit()` consumes every published TX request (then FINAL_CHECKs,
   as blkback does, so the driver kicks again only once we went idle). Each
   slot copy is decoded once and checked whole, then every segment through
   the IOMMU, before any byte is read; the frame is gathered straight from
   the frames the descriptor names. It returns the frames to put on the
   medium; their completions are queued on the ring.
2. RX: `receive(frames)` puts each frame in a posted buffer (DMA straight
   into the frame the descriptor names). Buffers are taken from the ring as
   needed; with none left the frame waits in a bounded FIFO (RX_FIFO
   frames, then tail drop, counted) and req_event is armed so the driver's
   next post rings the doorbell; `kick()` drains the FIFO.
3. Responses are published by `push()`, once per batch of work; it says
   whether to raise the IRQ (ring.h event suppression: coalescing).
4. A driver that breaks the ring rules halts the core (`error`); nothing a
   driver writes raises out of here.
"""

from collections import Counter, deque

from devices.dma import DmaFault, Iommu
from domains.kernel.ring import BackRing, RingError
from hypervisor.public.nicdev import (
    ETH_HLEN,
    NIC_MAX_FRAME,
    NIC_MAX_TX_SEGS,
    NicStatus,
    pack_rx_rsp,
    pack_tx_rsp,
    unpack_rx,
    unpack_tx_header,
    unpack_tx_segments,
)
from hypervisor.public.xen import PAGE_SIZE

RX_FIFO = 512


class DescriptorError(Exception):
    def __init__(self, status: NicStatus, why: str) -> None:
        super().__init__(status, why)
        self.status, self.why = status, why


class NicCore:
    def __init__(self, tx: BackRing, rx: BackRing, iommu: Iommu, fifo: int = RX_FIFO) -> None:
        self.tx, self.rx, self.iommu = tx, rx, iommu
        self.buffers: deque[bytes] = deque()  # posted RX requests taken from the ring
        self.fifo: deque[bytes] = deque()
        self.fifo_max = fifo
        self.counts: Counter[str] = Counter()
        self.error: RingError | None = None
        self.last_error = ""
        self._tx_put = self._rx_put = 0

    # ---- TX (rule 1) -------------------------------------------------------

    def transmit(self) -> list[bytes]:
        frames: list[bytes] = []
        if self.error is not None:
            return frames
        try:
            while True:
                for raw in self.tx.take_requests():
                    frame = self._tx_one(raw)
                    if frame is not None:
                        frames.append(frame)
                if not self.tx.final_check_for_requests():
                    return frames
        except RingError as exc:
            self.error = exc
            return frames

    def _tx_one(self, raw: bytes) -> bytes | None:
        id_ = unpack_tx_header(raw)[0]
        try:
            frame = self.gather(raw)
        except DescriptorError as exc:
            self.counts["tx_errors"] += 1
            self.last_error = f"tx {id_}: {exc.status.name}: {exc.why}"
            self._tx_done(id_, exc.status)
            return None
        self.counts["tx_frames"] += 1
        self.counts["tx_bytes"] += len(frame)
        self._tx_done(id_, NicStatus.ok)
        return frame

    def _tx_done(self, id_: int, status: int) -> None:
        self.tx.put_response(pack_tx_rsp(id_, status))
        self._tx_put += 1

    def gather(self, raw: bytes) -> bytes:
        """Validate a TX slot copy, then DMA its segments (DescriptorError)."""
        _, nseg, _, total = unpack_tx_header(raw)
        if not 1 <= nseg <= NIC_MAX_TX_SEGS:
            raise DescriptorError(NicStatus.invalid, f"{nseg} segments")
        segs = unpack_tx_segments(raw, nseg)
        for _, off, n in segs:
            if n == 0 or off + n > PAGE_SIZE:
                raise DescriptorError(NicStatus.invalid, f"segment {off}+{n} leaves its frame")
        if sum(n for _, _, n in segs) != total or not ETH_HLEN <= total <= NIC_MAX_FRAME:
            raise DescriptorError(NicStatus.invalid, f"frame length {total}")
        try:
            views = [self.iommu.frame(bfn, write=False)[off:off + n] for bfn, off, n in segs]
        except DmaFault as exc:
            self.counts["dma_faults"] += 1
            raise DescriptorError(NicStatus.dma_fault, str(exc)) from None
        return b"".join(views)

    # ---- RX (rule 2) -------------------------------------------------------

    def receive(self, frames) -> None:
        for frame in frames:
            if self.fifo or not self._deliver(frame):
                self._hold(frame)

    def kick(self) -> list[bytes]:
        """The doorbell: new RX buffers drain the FIFO, new TX requests go out."""
        while self.fifo and self._deliver(self.fifo[0]):
            self.fifo.popleft()
        return self.transmit()

    def _hold(self, frame: bytes) -> None:
        if len(self.fifo) >= self.fifo_max:
            self.counts["rx_fifo_drops"] += 1
            return
        self.fifo.append(frame)

    def _deliver(self, frame: bytes) -> bool:
        """Put one frame in a buffer; False if there is none (the frame waits)."""
        raw = self._buffer()
        if raw is None:
            return False
        self._fill(raw, frame)
        return True

    def _buffer(self) -> bytes | None:
        if self.error is not None:
            return None
        if not self.buffers:
            try:
                self.buffers.extend(self.rx.take_requests())
                if not self.buffers and self.rx.final_check_for_requests():
                    self.buffers.extend(self.rx.take_requests())
            except RingError as exc:
                self.error = exc
                return None
        return self.buffers.popleft() if self.buffers else None

    def _fill(self, raw: bytes, frame: bytes) -> None:
        """DMA into one buffer; a refused buffer comes back with an error and
        the frame is dropped (nicdev rule 5)."""
        id_, bfn, off, size = unpack_rx(raw)
        status = NicStatus.ok
        if off + size > PAGE_SIZE:
            status = NicStatus.invalid
        elif len(frame) > size:
            status = NicStatus.too_small
        else:
            try:
                page = self.iommu.frame(bfn, write=True)
            except DmaFault as exc:
                self.counts["dma_faults"] += 1
                self.last_error = f"rx {id_}: {exc}"
                status = NicStatus.dma_fault
            else:
                page[off:off + len(frame)] = frame
        if status != NicStatus.ok:
            self.counts["rx_errors"] += 1
        else:
            self.counts["rx_frames"] += 1
            self.counts["rx_bytes"] += len(frame)
        self.rx.put_response(pack_rx_rsp(id_, status, len(frame) if status == 0 else 0))
        self._rx_put += 1

    # ---- interrupt (rule 3) --------------------------------------------------

    def push(self) -> bool:
        """Publish this batch's responses; True = raise the IRQ."""
        if self.error is not None:
            return False
        notify = False
        if self._tx_put:
            notify |= self.tx.push_responses()
        if self._rx_put:
            notify |= self.rx.push_responses()
        self._tx_put = self._rx_put = 0
        return notify

    def release(self) -> None:
        self.tx.release()
        self.rx.release()
