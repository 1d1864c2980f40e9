"""Toolstack operations on Dom0's physical disks (`xenolab xl phys_*`).

They exercise the physical path alone (Dom0 driver -> device -> image), the
way `dd` on a real Dom0's /dev/sda would, for tests and checks.

Rules:
1. Data goes through DMA buffers: frames of Dom0's own memory (bus address
   = pfn), filled or read by the device itself. The frames are freed when
   the last command naming them completes, never earlier, even if the
   caller gave up waiting (diskdev rule: the buffer is the device's until
   then).
2. An op that waits for the device returns a `Wait`; the completion IRQ
   re-checks the parked requests, so the event loop never blocks.
3. A status other than ok is an error naming the DiskStatus.
4. `phys_submit` sends one raw command with the caller's bus addresses:
   it tests the device's own checks (IOMMU refusal, bad segments), with
   `phys_map_grant` giving the bus address of a guest's granted frame.
"""

from collections.abc import Callable

from domains.dom0.toolstack.control import Wait
from domains.dom0.toolstack.toolstack import ToolstackError
from hypervisor.public.diskdev import (
    DISK_FLAG_FUA,
    DISK_MAX_SEGMENTS,
    FAULT_MODES,
    SECTOR_SHIFT,
    SECTORS_PER_PAGE,
    DiskOp,
    DiskStatus,
)
from hypervisor.public.platform import bus_addr
from hypervisor.public.xen import PAGE_SIZE

MAX_PHYS_SECTORS = 2048  # 1 MiB per operation
DEFAULT_TIMEOUT_MS = 10_000


class Transfer:
    """One read or write split into commands of at most DISK_MAX_SEGMENTS frames."""

    def __init__(self, kernel, nr_sectors: int, on_done: Callable[["Transfer"], None]) -> None:
        self.k, self.nr_sectors, self.on_done = kernel, nr_sectors, on_done
        self.pfns = _alloc_frames(kernel, -(-nr_sectors // SECTORS_PER_PAGE))
        self.outstanding = 0
        self.status: int | None = None  # the first error, or ok once all completed

    def start(self, disk, op: int, sector: int, flags: int = 0) -> None:
        left = [self.nr_sectors - i * SECTORS_PER_PAGE for i in range(len(self.pfns))]
        segs = [(bus_addr(pfn), 0, min(SECTORS_PER_PAGE, n) - 1)
                for pfn, n in zip(self.pfns, left, strict=True)]
        chunks = [segs[i:i + DISK_MAX_SEGMENTS] for i in range(0, len(segs), DISK_MAX_SEGMENTS)]
        self.outstanding = len(chunks)
        for i, chunk in enumerate(chunks):
            first = sector + i * DISK_MAX_SEGMENTS * SECTORS_PER_PAGE
            disk.submit(op, first, chunk, flags, self._completed)

    def _completed(self, status: int) -> None:
        if status != DiskStatus.ok and (self.status is None or self.status == DiskStatus.ok):
            self.status = status
        self.outstanding -= 1
        if self.outstanding == 0:
            if self.status is None:
                self.status = DiskStatus.ok
            self.on_done(self)
            self.free()

    def copy_in(self, data: bytes) -> None:
        for i, pfn in enumerate(self.pfns):
            chunk = data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
            self.k.mem[pfn * PAGE_SIZE:pfn * PAGE_SIZE + len(chunk)] = chunk

    def copy_out(self) -> bytes:
        n = self.nr_sectors << SECTOR_SHIFT
        return b"".join(bytes(self.k.page(pfn)) for pfn in self.pfns)[:n]

    def free(self) -> None:
        for pfn in self.pfns:
            self.k.frames.release(pfn)
        self.pfns = []


def _alloc_frames(kernel, n: int) -> list[int]:
    pfns: list[int] = []
    try:
        for _ in range(n):
            pfns.append(kernel.frames.alloc())
    except MemoryError:
        for pfn in pfns:
            kernel.frames.release(pfn)
        raise ToolstackError(f"no {n} free Dom0 frames for DMA buffers") from None
    return pfns


def _op(op) -> int:
    if isinstance(op, str) and op in DiskOp.__members__:
        return int(DiskOp[op])
    if isinstance(op, int):
        return op  # raw opcodes reach the device, which judges them
    raise ToolstackError(f"bad opcode {op!r}: one of {', '.join(DiskOp.__members__)}")


def build_phys_ops(dom0) -> dict:
    k = dom0.kernel

    def disk(dev):
        d = getattr(dom0, "disks", {}).get(dev)
        if d is None:
            raise ToolstackError(f"no physical disk {dev!r}")
        if d.error:
            raise ToolstackError(f"disk {dev}: {d.error}")
        return d

    def wake(_=None) -> None:
        k.call_soon(dom0.control.recheck)  # answer parked requests (rule 2)

    def waiter(box: dict, result: Callable[[], object], timeout_ms: int, what: str) -> Wait:
        def check(expired):
            if "status" in box:
                if box["status"] != DiskStatus.ok:
                    raise ToolstackError(f"{what}: {_status(box['status'])['name']}")
                return result()
            if expired:
                raise ToolstackError(f"{what}: timed out (the device holds the buffers)")
            return None
        return Wait(check, timeout_ms)

    def transfer(dev, op: int, sector: int, nr_sectors: int, data: bytes | None,
                 flags: int, timeout_ms: int, what: str) -> Wait:
        d = disk(dev)
        if not 0 < nr_sectors <= MAX_PHYS_SECTORS or sector < 0:
            raise ToolstackError(f"{what}: 1..{MAX_PHYS_SECTORS} sectors at a sector >= 0")
        box: dict = {}

        def done(t: Transfer) -> None:
            box["status"] = t.status
            if op == DiskOp.read:
                box["data"] = t.copy_out()
            wake()
        t = Transfer(k, nr_sectors, done)
        if data is not None:
            t.copy_in(data)
        t.start(d, op, sector, flags)
        return waiter(box, lambda: box.get("data", len(data or b"")), timeout_ms, what)

    def phys_list(**_):
        return [d.describe() for d in getattr(dom0, "disks", {}).values()]

    def phys_info(dev, **_):
        return disk(dev).describe()

    def phys_write(dev, sector, data, fua=False, timeout_ms=DEFAULT_TIMEOUT_MS, **_):
        data = bytes(data)
        if not data or len(data) % (1 << SECTOR_SHIFT):
            raise ToolstackError("phys_write: data must be whole 512-byte sectors")
        return transfer(dev, DiskOp.write, int(sector), len(data) >> SECTOR_SHIFT, data,
                        DISK_FLAG_FUA if fua else 0, timeout_ms, f"write {dev}")

    def phys_read(dev, sector, count, timeout_ms=DEFAULT_TIMEOUT_MS, **_):
        return transfer(dev, DiskOp.read, int(sector), int(count), None, 0, timeout_ms,
                        f"read {dev}")

    def phys_flush(dev, timeout_ms=DEFAULT_TIMEOUT_MS, **_):
        box: dict = {}
        disk(dev).flush(lambda status: (box.update(status=status), wake()))
        return waiter(box, lambda: True, timeout_ms, f"flush {dev}")

    def phys_submit(dev, opcode, sector=0, segments=(), flags=0, nr_sectors=None,
                    timeout_ms=DEFAULT_TIMEOUT_MS, **_):
        """Rule 4: one raw command; returns {"status", "name"} whatever it is.
        (`opcode`, not `op`: the control protocol's own key is "op".)"""
        box: dict = {}
        segs = [(int(b), int(f), int(la)) for b, f, la in segments]
        try:
            disk(dev).submit(_op(opcode), int(sector), segs, int(flags),
                             lambda status: (box.update(status=status), wake()), nr_sectors)
        except ValueError as exc:  # DiskDevError: too many segments to encode
            raise ToolstackError(f"phys_submit: {exc}") from None
        return _submit_wait(box, timeout_ms)

    maps: dict = {}  # handle -> GrantMapping, for phys_map_grant

    def phys_map_grant(domid, ref, readonly=False, **_):
        """Map a guest's grant for DMA (GNTMAP_device_map), as blkback does;
        returns {"handle", "bus_addr"} for phys_submit (rule 4)."""
        m = k.gnttab.map_grants([(int(domid), int(ref), bool(readonly))], device=True)[0]
        if isinstance(m, int):
            raise ToolstackError(f"map d{domid} ref {ref}: GNTST {m}")
        maps[m.handle] = m
        return {"handle": m.handle, "bus_addr": m.bus_addr}

    def phys_unmap_grant(handle, **_):
        m = maps.pop(int(handle), None)
        if m is None:
            raise ToolstackError(f"no DMA mapping with handle {handle}")
        return k.gnttab.unmap_grant(m)

    def phys_fault(dev, mode, rate=0, **_):
        """none|eio|hang|die; rate is the chance per command, 0 = every one
        ("die" with rate 0 kills the device at once)."""
        if mode not in FAULT_MODES or not 0 <= float(rate) <= 1:
            raise ToolstackError(f"fault mode one of {', '.join(FAULT_MODES)}, rate 0..1")
        disk(dev).set_fault(mode, float(rate))
        return True

    def phys_latency(dev, spec, **_):
        disk(dev).set_latency(str(spec))
        return True

    def phys_on_crash(dev, policy, **_):
        """What the driver does with the commands a dying device held."""
        if policy not in ("wait", "fail"):
            raise ToolstackError("on_crash is wait or fail")
        disk(dev).on_crash = policy
        return True

    return {"phys_list": phys_list, "phys_info": phys_info, "phys_write": phys_write,
            "phys_read": phys_read, "phys_flush": phys_flush, "phys_submit": phys_submit,
            "phys_fault": phys_fault, "phys_latency": phys_latency,
            "phys_on_crash": phys_on_crash,
            "phys_map_grant": phys_map_grant, "phys_unmap_grant": phys_unmap_grant}


def _status(status: int | None) -> dict:
    try:
        name = DiskStatus(status).name
    except ValueError:
        name = str(status)
    return {"status": status, "name": name}


def _submit_wait(box: dict, timeout_ms: int) -> Wait:
    def check(expired):
        if "status" in box:
            return _status(box["status"])
        if expired:
            raise ToolstackError("submit: timed out")
        return None
    return Wait(check, timeout_ms)
