"""In-memory fakes for the block split-driver cores (no processes, no hypercalls).

Rules the fakes keep, as Xen does:
1. A grant is an entry in the granting guest's table: (pfn, readonly, maps).
   ``end_access`` fails while the grantee maps it (GTF_reading/GTF_writing).
2. A mapping exists only through a valid grant: an unknown gref is
   GNTST_bad_gntref, a writable map of a read-only grant GNTST_permission_denied.
   A read-only mapping hands out a read-only page, so a backend that writes
   through it fails loudly.
3. The disk is a bytearray of 512-byte sectors; ``execute`` does DMA straight
   into or out of the mapped pages, and logs every operation in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from domains.dom0.blkback import BlkbackCore, BlkbackOutput, DiskOp, IoPlan, VbdConfig
from domains.dom0.blkback import backend_keys as _backend_keys
from domains.kernel.ring import BackRing, FrontRing
from domains.xenolinux.blkfront_core import BlkfrontCore
from domains.xenolinux.blkfront_io import BackendFeatures, BlockIo, Completion
from hypervisor.public.blkif import (
    BLKIF_ENTRY_SIZE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_OKAY,
    SECTOR_SIZE,
)
from hypervisor.public.grant_table import GNTST
from hypervisor.public.ring import REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD
from hypervisor.public.xen import PAGE_SIZE

M = 0xFFFFFFFF


@dataclass
class Entry:
    pfn: int
    readonly: bool
    maps: int = 0


class Guest:
    """A guest's pseudo-physical memory and its grant table (the Granter)."""

    def __init__(self, nr_pages: int = 4096, first_gref: int = 8) -> None:
        self.mem = bytearray(nr_pages * PAGE_SIZE)
        self.free_pfns = list(range(nr_pages - 1, -1, -1))
        self.entries: dict[int, Entry] = {}
        self.next_gref = first_gref  # past GNTTAB_NR_RESERVED_ENTRIES
        self.grant_calls = 0

    def page(self, pfn: int) -> memoryview:
        return memoryview(self.mem)[pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE]

    # PageAllocator
    def alloc(self) -> tuple[int, memoryview]:
        pfn = self.free_pfns.pop()
        return pfn, self.page(pfn)

    def free(self, pfn: int) -> None:
        self.free_pfns.append(pfn)

    # Granter
    def grant(self, pfn: int, readonly: bool) -> int:
        gref, self.next_gref = self.next_gref, self.next_gref + 1
        self.entries[gref] = Entry(pfn, readonly)
        self.grant_calls += 1
        return gref

    def end_access(self, gref: int) -> bool:
        if self.entries[gref].maps:
            return False
        del self.entries[gref]
        return True

    def buffers(self, nr_sectors: int, fill: bytes | None = None) -> tuple:
        """Fresh data pages for ``nr_sectors`` sectors, optionally filled."""
        bufs = tuple(self.alloc() for _ in range(-(-nr_sectors // 8)))
        if fill is not None:
            put(bufs, fill)
        return bufs


def put(buffers, data: bytes) -> None:
    for i, (_, page) in enumerate(buffers):
        chunk = data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
        page[: len(chunk)] = chunk


def get(buffers, nr_sectors: int) -> bytes:
    return b"".join(bytes(page) for _, page in buffers)[: nr_sectors * SECTOR_SIZE]


@dataclass(eq=False)
class Mapping:
    gref: int
    page: memoryview
    live: bool = True


@dataclass
class Mapper:
    """The backend's grant operations on one frontend (the GrantMapper)."""

    guest: Guest
    map_calls: int = 0
    unmap_calls: int = 0
    live: list[Mapping] = field(default_factory=list)

    def map(self, refs):
        self.map_calls += 1
        return [self._map_one(gref, ro) for gref, ro in refs]

    def _map_one(self, gref: int, readonly: bool):
        entry = self.guest.entries.get(gref)
        if entry is None:
            return int(GNTST.bad_gntref)
        if entry.readonly and not readonly:
            return int(GNTST.permission_denied)
        entry.maps += 1
        page = self.guest.page(entry.pfn)
        m = Mapping(gref, page.toreadonly() if readonly else page)
        self.live.append(m)
        return m

    def unmap(self, mappings) -> None:
        self.unmap_calls += 1
        for m in mappings:
            assert m.live, "unmapped twice"
            m.live = False
            self.live.remove(m)
            self.guest.entries[m.gref].maps -= 1

    def drop_all(self) -> None:
        """Xen on the backend's death: every mapping it held goes."""
        if self.live:
            self.unmap(list(self.live))


class Disk:
    """A disk of 512-byte sectors; executes IoPlans with DMA into mapped pages."""

    def __init__(self, sectors: int) -> None:
        self.data = bytearray(sectors * SECTOR_SIZE)
        self.log: list[tuple[DiskOp, int, int, int]] = []  # op, sector, nr, request id

    def execute(self, plan: IoPlan) -> int:
        self.log.append((plan.disk_op, plan.sector, plan.nr_sectors, plan.id))
        if plan.disk_op is DiskOp.DISCARD:
            start = plan.sector * SECTOR_SIZE
            self.data[start : start + plan.nr_sectors * SECTOR_SIZE] = bytes(
                plan.nr_sectors * SECTOR_SIZE
            )
            return BLKIF_RSP_OKAY
        sector = plan.sector
        for seg in plan.segments:
            n = (seg.last_sect - seg.first_sect + 1) * SECTOR_SIZE
            disk = slice(sector * SECTOR_SIZE, sector * SECTOR_SIZE + n)
            page = slice(seg.first_sect * SECTOR_SIZE, seg.first_sect * SECTOR_SIZE + n)
            if plan.disk_op is DiskOp.READ:
                seg.mapping.page[page] = self.data[disk]
            else:
                self.data[disk] = seg.mapping.page[page]
            sector += n // SECTOR_SIZE
        return BLKIF_RSP_OKAY


def ring_pair(start: int = 0, nbytes: int = PAGE_SIZE) -> tuple[bytearray, FrontRing, BackRing]:
    """One ring page, both ends attached at free-running index ``start``."""
    buf = bytearray(nbytes)
    front = FrontRing(buf, BLKIF_ENTRY_SIZE)
    if start:
        view = memoryview(buf)[:16].cast("I")
        view[REQ_PROD // 4] = view[RSP_PROD // 4] = start & M
        view[REQ_EVENT // 4] = view[RSP_EVENT // 4] = (start + 1) & M
        view.release()
        front.attach(start, start)
    back = BackRing(buf, BLKIF_ENTRY_SIZE)
    back.attach(start, start)
    return buf, front, back


def backend_features(vbd: VbdConfig) -> BackendFeatures:
    return BackendFeatures.from_keys(_backend_keys(vbd))


class Pair:
    """A blkfront core and a blkback core on one ring (h11's ConnectionPair).

    Events are delivered only when a push said to notify, so a lost wake-up
    stalls ``run()`` and fails the test. The device completes plans in the
    order ``pick`` chooses (default: oldest first).
    """

    def __init__(self, *, sectors: int = 4096, start: int = 0, persistent: bool = True,
                 vbd: VbdConfig | None = None, disk: Disk | None = None,
                 guest: Guest | None = None) -> None:  # fmt: skip
        self.vbd = vbd or VbdConfig(sectors=sectors)
        self.disk = disk or Disk(self.vbd.sectors)
        self.guest = guest or Guest()
        self.front = BlkfrontCore(self.guest, self.guest, handle=51712, want_persistent=persistent)
        self.done: list[Completion] = []
        self.notifies = {"front_to_back": 0, "back_to_front": 0}
        self.connect(start)

    def connect(self, start: int = 0) -> list[BlockIo]:
        """A new ring and a new backend instance (first connect or after a restart)."""
        self.buf, front_ring, back_ring = ring_pair(start)
        self.mapper = Mapper(self.guest)
        persistent = self.front.want_persistent and self.vbd.feature_persistent
        self.back = BlkbackCore(back_ring, self.vbd, self.mapper, persistent=persistent)
        self.device: list[IoPlan] = []
        self.to_back = self.to_front = False
        self.disconnects: list = []
        reissued = self.front.connect(front_ring, backend_features(self.vbd))
        self.kick()
        return reissued

    def submit(self, *ios: BlockIo) -> None:
        for io in ios:
            self.front.submit(io)
        self.kick()

    def kick(self) -> None:
        if self.front.push():
            self.to_back = True
            self.notifies["front_to_back"] += 1

    def absorb(self, out: BlkbackOutput) -> None:
        self.device.extend(out.plans)
        if out.disconnect is not None:
            self.disconnects.append(out.disconnect)
        if out.notify:
            self.to_front = True
            self.notifies["back_to_front"] += 1

    def step(self, pick=None) -> bool:
        """One round of every party; False when nothing happened."""
        busy = False
        if self.to_back:
            self.to_back, busy = False, True
            self.absorb(self.back.poll())
        if self.device:
            i = pick(len(self.device)) if pick else 0
            plan = self.device.pop(i)
            self.absorb(self.back.complete(plan.tag, self.disk.execute(plan)))
            busy = True
        if self.to_front:
            self.to_front, busy = False, True
            self.done.extend(self.front.handle_responses())
            self.kick()
        return busy

    def run(self, pick=None, max_steps: int = 100_000) -> list[Completion]:
        for _ in range(max_steps):
            if not self.step(pick):
                break
        done, self.done = self.done, []
        return done


def read_io(guest: Guest, sector: int, nr: int, cookie=None) -> BlockIo:
    return BlockIo(BLKIF_OP_READ, sector, nr, guest.buffers(nr), cookie=cookie)


def write_io(guest: Guest, sector: int, data: bytes, cookie=None) -> BlockIo:
    nr = len(data) // SECTOR_SIZE
    return BlockIo(BLKIF_OP_WRITE, sector, nr, guest.buffers(nr, data), cookie=cookie)


def pattern(tag: int, nr_sectors: int) -> bytes:
    """Recognisable data: each sector says who wrote it and where."""
    return b"".join(
        f"{tag:08x}:{i:08x}|".encode().ljust(SECTOR_SIZE, bytes([tag & 0xFF]))
        for i in range(nr_sectors)
    )
