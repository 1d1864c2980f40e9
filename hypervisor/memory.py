"""Domain memory: anonymous memory objects that Xen creates and hands over.

Rule: every domain's pseudo-physical memory and its shared_info page are
memfds created here. They have no name (nothing can be opened by guessing)
and vanish with the last process that holds them, so kill -9 of anyone
leaks nothing. Xen keeps its own mapping of each to read grant entries and
set event bits.
"""

import mmap
import os

from hypervisor.public.xen import PAGE_SIZE


class MemoryObject:
    """One memfd and Xen's own mapping of it."""

    def __init__(self, label: str, size: int) -> None:
        self.size = size
        self.fd = os.memfd_create(label, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.view = memoryview(self.map)

    @property
    def nr_pages(self) -> int:
        return self.size // PAGE_SIZE

    def close(self) -> None:
        """Drop Xen's reference; the pages live on while another process maps them."""
        if self.fd < 0:
            return
        self.view.release()
        try:
            self.map.close()
        except BufferError:
            pass  # a core still holds a view: the mapping goes with it
        os.close(self.fd)
        self.fd = -1
