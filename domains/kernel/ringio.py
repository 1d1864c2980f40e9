"""Shared-memory adapters for ring.h rings: grants, mapping and notifications.

Rules:
1. The frontend owns the ring's frames: it allocates contiguous frames,
   initialises the sring, grants every frame to the backend and allocates
   an unbound port for it (the split-driver handshake publishes grefs and
   port through xenstore).
2. The backend maps those grants and binds the port; it attaches to the
   ring and never re-initialises it.
3. `push()` notifies the peer only when ring.h's check says so; the cores
   decide, the adapters only move events.
"""

from domains.kernel.ring import BackRing, FrontRing
from hypervisor.public.ring import REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD
from hypervisor.public.xen import PAGE_SIZE


class FrontendRing:
    def __init__(self, kernel, backend: int, entry_size: int, order: int = 0,
                 start: int = 0) -> None:
        self.k, self.backend = kernel, backend
        n = 1 << order
        self.pfns = kernel.frames.alloc_contiguous(n)
        self.buf = kernel.mem[self.pfns[0] * PAGE_SIZE:(self.pfns[0] + n) * PAGE_SIZE]
        self.ring = FrontRing(self.buf, entry_size)
        if start:
            _start_at(self.buf, start)
            self.ring.attach(start, start)
        self.grefs = [kernel.gnttab.grant_access(backend, pfn) for pfn in self.pfns]
        self.port = kernel.evtchn.alloc_unbound(backend)

    def push(self) -> bool:
        notify = self.ring.push_requests()
        if notify:
            self.k.evtchn.notify(self.port)
        return notify

    def close(self) -> bool:
        """Revoke the grants (False while the backend still maps them)."""
        if not all(self.k.gnttab.end_access(g) for g in self.grefs):
            return False
        self.k.evtchn.close(self.port)
        self.ring.release()
        self.buf.release()
        for pfn in self.pfns:
            self.k.frames.release(pfn)
        return True


class BackendRing:
    def __init__(self, kernel, frontend: int, grefs: list[int], remote_port: int,
                 entry_size: int, start: int | None = None) -> None:
        self.k, self.frontend = kernel, frontend
        self.maps = kernel.gnttab.map_grants([(frontend, g, False) for g in grefs])
        if any(isinstance(m, int) for m in self.maps):
            codes = [m for m in self.maps if isinstance(m, int)]
            kernel.gnttab.unmap_grants([m for m in self.maps if not isinstance(m, int)])
            raise OSError(f"cannot map the ring from d{frontend}: GNTST {codes}")
        self.buf = _contiguous(kernel, frontend, self.maps)
        self.ring = BackRing(self.buf, entry_size)
        if start is None:  # BACK_RING_ATTACH where the frontend left the indices
            with self.buf[:16].cast("I") as idx:
                start = idx[RSP_PROD // 4]
        if start:
            self.ring.attach(start, start)
        self.port = kernel.evtchn.bind_interdomain(frontend, remote_port)

    def push(self) -> bool:
        notify = self.ring.push_responses()
        if notify:
            self.k.evtchn.notify(self.port)
        return notify

    def close(self) -> None:
        self.k.evtchn.close(self.port)
        self.ring.release()
        if self.buf is not self.maps[0].page:
            self.buf.release()
        self.k.gnttab.unmap_grants(self.maps)


def _contiguous(kernel, frontend: int, maps) -> memoryview:
    """One view over the mapped frames (the frontend allocated them contiguous)."""
    if len(maps) == 1:
        return maps[0].page
    first = maps[0].pfn
    if [m.pfn for m in maps] != list(range(first, first + len(maps))):
        raise OSError(f"d{frontend}'s ring frames are not contiguous")
    fm = kernel.gnttab.foreign[frontend]
    return fm.view[first * PAGE_SIZE:(first + len(maps)) * PAGE_SIZE]


def _start_at(buf: memoryview, start: int) -> None:
    """Start the free-running indices at `start` (tests of 2^32 wrap-around)."""
    idx = buf[:16].cast("I")
    idx[REQ_PROD // 4] = idx[RSP_PROD // 4] = start
    idx[REQ_EVENT // 4] = idx[RSP_EVENT // 4] = (start + 1) & 0xFFFFFFFF
    idx.release()
