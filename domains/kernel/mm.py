"""The guest's frame allocator: which of its own frames are free."""

from hypervisor.public.xen import Errno


class FrameAllocator:
    """Free frames between the builder's pages and the grant table."""

    def __init__(self, first: int, end: int) -> None:
        self.free = list(range(end - 1, first - 1, -1))
        self.total = end - first

    def alloc(self) -> int:
        if not self.free:
            raise MemoryError(Errno.ENOMEM, "out of guest frames")
        return self.free.pop()

    def alloc_contiguous(self, n: int) -> list[int]:
        """n frames with consecutive numbers (rings that span several pages)."""
        if n == 1:
            return [self.alloc()]
        free = sorted(self.free)
        for i in range(len(free) - n + 1):
            if free[i + n - 1] - free[i] == n - 1:
                run = free[i:i + n]
                taken = set(run)
                self.free = [p for p in self.free if p not in taken]
                return run
        raise MemoryError(Errno.ENOMEM, f"no {n} contiguous guest frames")

    def release(self, pfn: int) -> None:
        self.free.append(pfn)

    @property
    def nr_free(self) -> int:
        return len(self.free)
