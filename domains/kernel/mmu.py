"""The guest's side of PV memory management: P2M, batched MMU hypercalls, and
the CPU's page walker.

Rules:
1. Frames. ``pfn`` is a pseudo-physical frame of our memory, ``mfn`` the
   machine frame Xen gave it: mfn = mfn_base + pfn (the boot dict's
   ``mfn_base``; real Xen keeps a P2M array, the model's is base + pfn).
   PTEs and hypercalls speak machine frames.
2. Once a frame is a page table the guest never writes it: every change is
   queued in an MmuBatch and sent to Xen, which validates every entry
   (hypervisor.mm). ``flush()`` sends each run of consecutive updates as ONE
   mmu_update and each run of extended ops as ONE mmuext_op, in queue order
   (a normal batch, updates then ops, is two traps). Not one multicall:
   the model's multicall answers only its last call, and Linux checks every
   entry's result. A failure raises MmuError naming the first entry that did
   not take effect; the entries before it did, the rest of the batch is
   dropped.
3. The walker (Mmu, one per kernel: the vCPU's MMU) models the CPU. It walks
   from the base pointer Xen acknowledged (a NEW_BASEPTR that succeeded),
   reads both levels from our own frames, and both levels must allow the
   access (present; RW for a write; USER for a user access; writes honour
   RW in supervisor mode too, as with CR0.WP). Xen's top 64 MB faults.
4. The TLB caches translations by page number. As on hardware, only a flush
   clears it: NEW_BASEPTR, TLB_FLUSH_* and INVLPG_* done through an
   MmuBatch; an update alone leaves a stale entry until the guest flushes.
   An entry that lacks the rights an access needs is walked again.
5. Model limits: the walker sets no accessed/dirty bits, and a frame of
   another domain (a privileged foreign mapping) is not reachable through it:
   it faults with reason "foreign".
"""

from __future__ import annotations

import struct
import weakref
from dataclasses import dataclass
from typing import NoReturn

from hypervisor.public import trace
from hypervisor.public.mmu import (
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_USER,
    HYPERVISOR_VIRT_START,
    L1_PAGETABLE_ENTRIES,
    L2_PAGETABLE_SHIFT,
    MAX_MMU_BATCH,
    MMU_NORMAL_PT_UPDATE,
    MMUEXT_INVLPG_ALL,
    MMUEXT_INVLPG_LOCAL,
    MMUEXT_INVLPG_MULTI,
    MMUEXT_NEW_BASEPTR,
    MMUEXT_TLB_FLUSH_ALL,
    MMUEXT_TLB_FLUSH_LOCAL,
    MMUEXT_TLB_FLUSH_MULTI,
    PTE_FORMAT,
    PTE_SIZE,
    ext_names,
    pack_mmu_updates,
    pack_mmuext_ops,
)
from hypervisor.public.xen import DOMID_SELF, PAGE_SHIFT, PAGE_SIZE, Errno, Hypercall

FAULT_NOT_PRESENT = "not-present"
FAULT_PROTECTION = "protection"
FAULT_FOREIGN = "foreign"
TLB_ENTRIES = 64
_PTE = struct.Struct(PTE_FORMAT)
_OFFSET = PAGE_SIZE - 1
_L1_MASK = L1_PAGETABLE_ENTRIES - 1
_FLUSH_ALL = (MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_TLB_FLUSH_MULTI, MMUEXT_TLB_FLUSH_ALL)
_INVLPG = (MMUEXT_INVLPG_LOCAL, MMUEXT_INVLPG_MULTI, MMUEXT_INVLPG_ALL)


def pfn_to_mfn(kernel, pfn: int) -> int:
    """Our pseudo-physical frame -> its machine frame (ValueError if not ours)."""
    if not 0 <= pfn < kernel.boot["nr_pages"]:
        raise ValueError(f"pfn {pfn:#x} is not ours")
    return kernel.boot["mfn_base"] + pfn


def mfn_to_pfn(kernel, mfn: int) -> int:
    """A machine frame of ours -> its pfn (ValueError for another domain's)."""
    pfn = mfn - kernel.boot["mfn_base"]
    if not 0 <= pfn < kernel.boot["nr_pages"]:
        raise ValueError(f"mfn {mfn:#x} is not ours")
    return pfn


def pte_ptr(mfn: int, index: int, cmd: int = MMU_NORMAL_PT_UPDATE) -> int:
    """mmu_update's ptr: the machine address of entry ``index`` of table ``mfn``."""
    return mfn << PAGE_SHIFT | index * PTE_SIZE | cmd


class MmuError(OSError):
    """Xen refused entry ``index`` of a flushed batch (errno = -rc)."""

    def __init__(self, rc: int, index: int, hypercall: str) -> None:
        try:
            name = Errno(-rc).name
        except ValueError:
            name = str(rc)
        super().__init__(-rc, f"{hypercall}: entry {index} refused: {name}")
        self.rc, self.index, self.hypercall = rc, index, hypercall


class PageFault(Exception):  # noqa: N818 - the CPU's name for it
    """The walker found no translation allowing this access."""

    def __init__(self, va: int, write: bool, user: bool, reason: str) -> None:
        kind = "write" if write else "read"
        super().__init__(f"{'user' if user else 'kernel'} {kind} at {va:#010x}: {reason}")
        self.va, self.write, self.user, self.reason = va, write, user, reason


# ---- batches ------------------------------------------------------------------

_UPDATE, _EXT = "mmu_update", "mmuext_op"


class MmuBatch:
    """Queued mmu_update / mmuext_op entries, sent by ``flush()`` (Rule 2)."""

    def __init__(self, kernel, foreigndom: int = DOMID_SELF) -> None:
        self.k, self.foreigndom = kernel, foreigndom
        self._queue: list[tuple[str, tuple]] = []
        self.traps = 0

    def queue_update(self, ptr: int, val: int) -> None:
        self._queue.append((_UPDATE, (ptr, val)))

    def queue_ext(self, cmd: int, arg1: int = 0, arg2: int = 0) -> None:
        self._queue.append((_EXT, (cmd, arg1, arg2)))

    def __len__(self) -> int:
        return len(self._queue)

    def flush(self) -> None:
        """Send everything queued; MmuError on the first refused entry."""
        queue, self._queue = self._queue, []
        index = 0
        while index < len(queue):
            kind = queue[index][0]
            run = []
            while (index + len(run) < len(queue) and len(run) < MAX_MMU_BATCH
                   and queue[index + len(run)][0] == kind):
                run.append(queue[index + len(run)][1])
            self._send(kind, run, index)
            index += len(run)

    def _send(self, kind: str, run: list, index: int) -> None:
        if kind == _UPDATE:
            hc, args = Hypercall.mmu_update, {"reqs": pack_mmu_updates(run)}
        else:
            hc, args = Hypercall.mmuext_op, {"ops": pack_mmuext_ops(run)}
        args["foreigndom"] = self.foreigndom
        self.traps += 1
        if trace.on:
            if kind == _UPDATE:
                trace.stamp(trace.MMU_UPDATE, trace.current, len(run))
            else:
                trace.stamp(trace.MMUEXT_OP, trace.current, len(run), 0, ext_names(run))
        rc, out = self.k.xen.call(hc, 0, args)
        done = out.get("done", 0) if isinstance(out, dict) else 0
        if kind == _EXT and self.foreigndom == DOMID_SELF:
            Mmu.of(self.k)._acknowledge(run[:done])
        if rc < 0:
            raise MmuError(rc, index + done, kind)


# ---- the walker ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MmuStatistics:
    base: int  # mfn of the current base pointer, 0 before the first NEW_BASEPTR
    tlb_hits: int
    tlb_misses: int
    faults: int
    tlb_flushes: int
    invlpgs: int


_MMUS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Mmu:
    """The vCPU's MMU: ``Mmu.of(kernel)`` is the only one a kernel has."""

    PageFault = PageFault

    def __init__(self, kernel) -> None:
        if kernel in _MMUS:
            raise RuntimeError("a kernel has one MMU: use Mmu.of(kernel)")
        _MMUS[kernel] = self
        self.mem: memoryview = kernel.mem
        self.mfn_base: int = kernel.boot["mfn_base"]
        self.nr_pages: int = kernel.boot["nr_pages"]
        self.base = 0  # the base pointer's mfn, once Xen acknowledged it
        self._tlb: dict[int, tuple[int, bool, bool]] = {}  # vpn -> (pa, rw, user)
        self._n = dict.fromkeys(("hits", "misses", "faults", "flushes", "invlpgs"), 0)

    @classmethod
    def of(cls, kernel) -> Mmu:
        return _MMUS.get(kernel) or cls(kernel)

    def translate(self, va: int, write: bool = False, user: bool = True) -> int:
        """Guest-physical byte address of ``va`` for this access, or PageFault."""
        hit = self._tlb.get(va >> PAGE_SHIFT)
        if hit is not None and (hit[1] or not write) and (hit[2] or not user):
            self._n["hits"] += 1
            return hit[0] | (va & _OFFSET)
        self._n["misses"] += 1
        pa, rw, us = self._walk(va, write, user)
        if len(self._tlb) >= TLB_ENTRIES:
            del self._tlb[next(iter(self._tlb))]
        self._tlb[va >> PAGE_SHIFT] = (pa, rw, us)
        return pa | (va & _OFFSET)

    def load(self, va: int, n: int, user: bool = True) -> bytes:
        """Read ``n`` bytes at ``va``, across pages; a fault copies nothing."""
        spans = self._spans(va, n, False, user)
        return b"".join(self.mem[pa:pa + length] for pa, length in spans)

    def store(self, va: int, data: bytes, user: bool = True) -> None:
        """Write ``data`` at ``va``, across pages; a fault writes nothing."""
        off = 0
        for pa, length in self._spans(va, len(data), True, user):
            self.mem[pa:pa + length] = data[off:off + length]
            off += length

    def statistics(self) -> MmuStatistics:
        n = self._n
        return MmuStatistics(self.base, n["hits"], n["misses"], n["faults"], n["flushes"],
                             n["invlpgs"])

    def _spans(self, va: int, n: int, write: bool, user: bool) -> list[tuple[int, int]]:
        spans = []
        while n > 0:
            length = min(n, PAGE_SIZE - (va & _OFFSET))
            spans.append((self.translate(va, write, user), length))
            va, n = va + length, n - length
        return spans

    def _walk(self, va: int, write: bool, user: bool) -> tuple[int, bool, bool]:
        """The two-level walk; returns (page's guest-physical address, rw, user)."""
        if not 0 <= va < HYPERVISOR_VIRT_START:
            self._fault(va, write, user, FAULT_PROTECTION)  # Xen's area, or no such address
        l2e = self._entry(self.base, va >> L2_PAGETABLE_SHIFT, va, write, user)
        l1e = self._entry(l2e >> PAGE_SHIFT, (va >> PAGE_SHIFT) & _L1_MASK, va, write, user)
        rw, us = bool(l2e & l1e & _PAGE_RW), bool(l2e & l1e & _PAGE_USER)
        if (write and not rw) or (user and not us):
            self._fault(va, write, user, FAULT_PROTECTION)
        return self._frame(l1e >> PAGE_SHIFT, va, write, user) * PAGE_SIZE, rw, us

    def _entry(self, table_mfn: int, index: int, va: int, write: bool, user: bool) -> int:
        if not table_mfn:
            self._fault(va, write, user, FAULT_NOT_PRESENT)  # no base pointer yet
        pfn = self._frame(table_mfn, va, write, user)
        pte = _PTE.unpack_from(self.mem, pfn * PAGE_SIZE + index * PTE_SIZE)[0]
        if not pte & _PAGE_PRESENT:
            self._fault(va, write, user, FAULT_NOT_PRESENT)
        return pte

    def _frame(self, mfn: int, va: int, write: bool, user: bool) -> int:
        pfn = mfn - self.mfn_base
        if not 0 <= pfn < self.nr_pages:
            self._fault(va, write, user, FAULT_FOREIGN)
        return pfn

    def _fault(self, va: int, write: bool, user: bool, reason: str) -> NoReturn:
        self._n["faults"] += 1
        raise PageFault(va, write, user, reason)

    def _acknowledge(self, ops: list[tuple[int, int, int]]) -> None:
        """Extended ops Xen carried out: the base pointer and the TLB follow."""
        for cmd, arg1, _ in ops:
            if cmd == MMUEXT_NEW_BASEPTR:
                self.base = arg1
                self._flush_tlb()
            elif cmd in _FLUSH_ALL:
                self._flush_tlb()
            elif cmd in _INVLPG:
                self._tlb.pop(arg1 >> PAGE_SHIFT, None)
                self._n["invlpgs"] += 1

    def _flush_tlb(self) -> None:
        self._tlb.clear()
        self._n["flushes"] += 1
