"""A process's memory: its areas (text, heap, stack, mmaps) over an
address space whose page tables Xen validates (domains.xenolinux.vm).

Rules:
1. User space is 0..VMMAX. Text sits at TEXT_START (read-only), the heap
   follows it and grows with brk, the stack ends at VMMAX, anonymous mmaps
   come down from below the stack's reserve. Above VMMAX is the kernel's,
   mapped supervisor-only: a user access there is a protection fault.
2. Pages are demand-zero: an area only reserves addresses; the first touch
   faults, the kernel takes a free frame, zeroes it and installs it with
   mmu_update. A fault outside every area (or a write to text) is SIGSEGV.
3. Loads and stores of a program go through the page walker (the model's
   CPU); they never touch a frame the tables do not map for user mode.
"""

import errno
from dataclasses import dataclass

from domains.xenolinux import trace as T
from hypervisor.public.xen import PAGE_SIZE

TEXT_START = 0x0804_8000
STACK_SIZE = 256 * 1024
MMAP_GAP = 16 * 1024 * 1024  # kept free below the stack
MAX_AREAS = 256


class Segfault(BaseException):  # noqa: N818 - a signal, not an error a program may catch
    """A user access the kernel cannot satisfy: the process gets SIGSEGV.
    BaseException, so a program's `except Exception` cannot swallow it."""

    def __init__(self, va: int, write: bool, why: str) -> None:
        super().__init__(f"{'write' if write else 'read'} at {va:#010x}: {why}")
        self.va, self.write, self.why = va, write, why


@dataclass
class Area:
    start: int
    end: int
    writable: bool
    name: str

    def __contains__(self, va: int) -> bool:
        return self.start <= va < self.end


def _page_up(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


class ProcessMemory:
    def __init__(self, kernel, aspace, cpu) -> None:
        self.k, self.aspace, self.cpu = kernel, aspace, cpu
        self.vmmax = aspace.vmmax
        self.areas: list[Area] = []
        self.brk_start = self.brk = TEXT_START
        self.mmap_top = self.vmmax - STACK_SIZE - MMAP_GAP
        self.frames: dict[int, int] = {}  # page va -> pfn we gave it
        self.faults = 0
        self.pid = 0  # whose memory (for traces)

    # ---- layout ------------------------------------------------------------

    def load_text(self, image: bytes) -> None:
        """exec: copy the program into text pages, then map them read-only."""
        end = TEXT_START + _page_up(max(len(image), 1))
        for off in range(0, end - TEXT_START, PAGE_SIZE):
            pfn = self.k.frames.alloc()
            page = self.k.page(pfn)
            chunk = image[off:off + PAGE_SIZE]
            page[:len(chunk)] = chunk
            page[len(chunk):] = bytes(PAGE_SIZE - len(chunk))
            self.frames[TEXT_START + off] = pfn
            self.aspace.map_page(TEXT_START + off, pfn, writable=False)
        self.aspace.flush()
        self.areas.append(Area(TEXT_START, end, False, "text"))
        self.brk_start = self.brk = end
        self.areas.append(Area(end, end, True, "heap"))
        self.areas.append(Area(self.vmmax - STACK_SIZE, self.vmmax, True, "stack"))

    @property
    def stack_top(self) -> int:
        return self.vmmax

    def area(self, va: int) -> Area | None:
        return next((a for a in self.areas if va in a), None)

    def set_brk(self, new: int) -> int:
        """brk(2): returns the break, unchanged when the request is refused."""
        heap = next(a for a in self.areas if a.name == "heap")
        if new == 0 or new < self.brk_start or new > self.mmap_top:
            return self.brk
        if new < self.brk:
            self._unmap_range(_page_up(new), _page_up(self.brk))
        self.brk = new
        heap.end = _page_up(new)
        return self.brk

    def mmap(self, length: int) -> int:
        """Anonymous, private, read-write: an area; pages come on first touch."""
        size = _page_up(length)
        if length <= 0 or size > self.mmap_top - self.brk or len(self.areas) >= MAX_AREAS:
            raise OSError(errno.ENOMEM, "no room for the mapping")
        self.mmap_top -= size
        self.areas.append(Area(self.mmap_top, self.mmap_top + size, True, "mmap"))
        return self.mmap_top

    def munmap(self, addr: int, length: int) -> int:
        a = next((a for a in self.areas if a.name == "mmap" and a.start == addr), None)
        if a is None or _page_up(length) != a.end - a.start:
            raise OSError(errno.EINVAL, "not a mapping made by mmap")
        self._unmap_range(a.start, a.end)
        self.areas.remove(a)
        return 0

    def _unmap_range(self, start: int, end: int) -> None:
        for va in range(start, end, PAGE_SIZE):
            pfn = self.frames.pop(va, None)
            if pfn is not None:
                self.aspace.unmap_page(va)
                self.k.frames.release(pfn)
        self.aspace.flush()

    # ---- the CPU's view ----------------------------------------------------

    def fault(self, va: int, write: bool, why: str) -> None:
        """The page-fault handler: demand-zero inside an area, else SIGSEGV."""
        a = self.area(va) if va < self.vmmax else None
        if a is None:
            where = "beyond VMMAX (kernel space)" if va >= self.vmmax else "outside every mapping"
            raise Segfault(va, write, where)
        if write and not a.writable:
            raise Segfault(va, write, f"write to read-only {a.name}")
        if why != "not-present":
            raise Segfault(va, write, why)
        T.stamp(T.PAGE_FAULT, T.current(), va, self.pid)
        page_va = va & ~(PAGE_SIZE - 1)
        pfn = self.k.frames.alloc()
        self.k.page(pfn)[:] = bytes(PAGE_SIZE)
        self.frames[page_va] = pfn
        self.aspace.map_page(page_va, pfn, writable=a.writable)
        self.aspace.flush()
        self.faults += 1

    def load(self, va: int, n: int) -> bytes:
        return self._faulting(lambda: self.cpu.load(va, n), va, n, False)

    def store(self, va: int, data: bytes) -> None:
        self._faulting(lambda: self.cpu.store(va, data), va, len(data), True)

    def _faulting(self, access, va: int, n: int, write: bool):
        """Run a load or store, handling each page fault it takes, as a CPU
        re-executes the instruction after the fault handler (one per page)."""
        for _ in range(n // PAGE_SIZE + 3):
            try:
                return access()
            except self.cpu.PageFault as pf:
                self.fault(pf.va, pf.write, pf.reason)
        raise Segfault(va, write, "fault not resolved")

    def destroy(self) -> None:
        self.aspace.destroy()
        for pfn in self.frames.values():
            self.k.frames.release(pfn)
        self.frames.clear()
