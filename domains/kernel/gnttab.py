"""The guest's grant-table driver: grant our frames, map other domains'.

Rules (reference 4.2):
1. Creating an entry: write domid and frame, then flags last (one aligned
   16-bit store), so Xen never sees a valid type with stale fields.
2. Revoking: only when Xen has not set GTF_reading/GTF_writing; an entry in
   use cannot be revoked (end_access returns False and the caller retries).
3. Mapping: Xen validates and pins; it hands our kernel the granter's memory
   object once (see hypervisor.core.send_memory for the model difference);
   we expose only the granted frame and drop the object with our last
   mapping of that granter.
"""

import mmap
import socket
from dataclasses import dataclass, field

import msgpack

from domains.kernel.hypercall import HypercallClient, XenError
from hypervisor.public.grant_table import (
    GNTST,
    GNTTAB_NR_RESERVED_ENTRIES,
    GRANT_ENTRIES_PER_FRAME,
    GNTMAP_device_map,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GnttabOp,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_writing,
)
from hypervisor.public.xen import DOMID_SELF, PAGE_SIZE, DomctlCmd, Errno, Hypercall

OP = Hypercall.grant_table_op


class GrantError(OSError):
    def __init__(self, status: int, what: str) -> None:
        super().__init__(-status, f"{what}: {GNTST(status).name}")
        self.status = status


@dataclass
class ForeignMemory:
    """A memory object Xen handed us; `refs` counts mappings that use it."""

    domid: int
    map: mmap.mmap
    view: memoryview
    refs: int = 0

    def page(self, pfn: int) -> memoryview:
        return self.view[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE]

    def close(self) -> None:
        self.view.release()
        self.map.close()


@dataclass
class GrantMapping:
    handle: int
    dom: int
    ref: int
    pfn: int
    readonly: bool
    page: memoryview = field(repr=False)
    bus_addr: int = 0  # for DMA by Dom0's devices (GNTMAP_device_map)


def receive_memory(ctl: socket.socket) -> ForeignMemory:
    msg, fds, _, _ = socket.recv_fds(ctl, 256, 1)
    tag = msgpack.unpackb(msg)
    try:
        m = mmap.mmap(fds[0], tag["nr_pages"] * PAGE_SIZE)
    finally:
        for fd in fds:
            socket.close(fd)
    return ForeignMemory(tag["dom"], m, memoryview(m))


class Granter:
    """The grant side a frontend core sees: grant to its one backend, end access."""

    def __init__(self, kernel, backend: int) -> None:
        self.k, self.backend = kernel, backend

    def grant(self, pfn: int, readonly: bool) -> int:
        return self.k.gnttab.grant_access(self.backend, pfn, readonly)

    def end_access(self, gref: int) -> bool:
        return self.k.gnttab.end_access(gref)


class GrantTableDriver:
    def __init__(self, client: HypercallClient, mem: memoryview, ctl: socket.socket) -> None:
        self.client, self.mem, self.ctl = client, mem, ctl
        self.flags = self.domid = self.frame = None
        self.free: list[int] = []
        self.foreign: dict[int, ForeignMemory] = {}
        self.maps: dict[int, GrantMapping] = {}

    def setup(self, nr_frames: int) -> list[int]:
        """GNTTABOP_setup_table: learn where our table lives, then use it."""
        _, out = self.client.check(OP, GnttabOp.setup_table,
                                   {"dom": DOMID_SELF, "nr_frames": nr_frames})
        if out["status"] != GNTST.okay:
            raise GrantError(out["status"], "setup_table")
        frames = out["frame_list"]
        first = frames[0] * PAGE_SIZE
        table = self.mem[first:first + len(frames) * PAGE_SIZE]
        self.flags, self.frame = table.cast("H"), table.cast("I")
        n = len(frames) * GRANT_ENTRIES_PER_FRAME
        self.free = list(range(n - 1, GNTTAB_NR_RESERVED_ENTRIES - 1, -1))
        return frames

    # ---- granting ------------------------------------------------------

    def grant_access(self, domid: int, pfn: int, readonly: bool = False) -> int:
        if not self.free:
            raise XenError(-Errno.ENOSPC, "grant table full")
        ref = self.free.pop()
        self.write_entry(ref, domid, pfn, readonly)
        return ref

    def write_entry(self, ref: int, domid: int, pfn: int, readonly: bool = False) -> None:
        self.flags[ref * 4 + 1] = domid  # domid: u16 at byte 2
        self.frame[ref * 2 + 1] = pfn  # frame: u32 at byte 4
        self.flags[ref * 4] = GTF_permit_access | (GTF_readonly if readonly else 0)

    def end_access(self, ref: int) -> bool:
        """Revoke an entry; False while the grantee still has it mapped."""
        if self.flags[ref * 4] & (GTF_reading | GTF_writing):
            return False
        self.flags[ref * 4] = 0
        if ref >= GNTTAB_NR_RESERVED_ENTRIES:
            self.free.append(ref)
        return True

    def in_use(self, ref: int) -> bool:
        return bool(self.flags[ref * 4] & (GTF_reading | GTF_writing))

    # ---- mapping -------------------------------------------------------

    def map_grants(self, ops: list[tuple[int, int, bool]],
                   device: bool = False) -> list[GrantMapping | int]:
        """Batch map (dom, ref, readonly); each result is a mapping or a GNTST
        code. `device` also maps the frame for DMA by our devices (its bus
        address is in the mapping)."""
        base = GNTMAP_host_map | (GNTMAP_device_map if device else 0)
        batch = [{"dom": d, "ref": r, "flags": base | (GNTMAP_readonly if ro else 0)}
                 for d, r, ro in ops]
        _, out = self.client.check(OP, GnttabOp.map_grant_ref, batch, "map_grant_ref")
        return [self._mapped(res, op) for res, op in zip(out, ops, strict=True)]

    def _mapped(self, res: dict, op: tuple[int, int, bool]) -> GrantMapping | int:
        if res["status"] != GNTST.okay:
            return res["status"]
        fm = self.foreign.get(res["dom"])
        if fm is None:
            fm = self.foreign[res["dom"]] = receive_memory(self.ctl)
        fm.refs += 1
        pfn = res["frame"]
        page = fm.page(pfn)
        if op[2]:
            page = page.toreadonly()
        m = GrantMapping(res["handle"], res["dom"], op[1], pfn, op[2], page,
                         res.get("dev_bus_addr", 0))
        self.maps[m.handle] = m
        return m

    def map_grant(self, dom: int, ref: int, readonly: bool = False) -> GrantMapping:
        res = self.map_grants([(dom, ref, readonly)])[0]
        if isinstance(res, int):
            raise GrantError(res, f"map d{dom} ref {ref}")
        return res

    def unmap_grants(self, maps: list[GrantMapping]) -> list[int]:
        _, out = self.client.check(OP, GnttabOp.unmap_grant_ref,
                                   [{"handle": m.handle} for m in maps], "unmap_grant_ref")
        for m, status in zip(maps, out, strict=True):
            if status == GNTST.okay:
                self._release(m)
        return out

    def unmap_grant(self, m: GrantMapping) -> int:
        return self.unmap_grants([m])[0]

    def _release(self, m: GrantMapping) -> None:
        self.maps.pop(m.handle, None)
        m.page.release()
        fm = self.foreign[m.dom]
        fm.refs -= 1
        if fm.refs == 0:
            del self.foreign[m.dom]
            fm.close()

    def copy(self, ops: list[dict]) -> list[int]:
        _, out = self.client.check(OP, GnttabOp.copy, ops, "grant copy")
        return out

    # ---- privileged ----------------------------------------------------

    def map_foreign(self, domid: int) -> ForeignMemory:
        """Dom0 only: map all of a domain's memory (privcmd); caller closes it."""
        self.client.check(Hypercall.domctl, DomctlCmd.map_foreign, {"domid": domid},
                          f"map_foreign d{domid}")
        return receive_memory(self.ctl)
