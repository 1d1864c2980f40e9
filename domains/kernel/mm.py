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

    def release(self, pfn: int) -> None:
        self.free.append(pfn)

    @property
    def nr_free(self) -> int:
        return len(self.free)
