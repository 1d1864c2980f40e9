"""Page-table updates Xen must refuse, made on purpose (`mmuprobe`, the demo).

A buggy or malicious guest kernel can ask Xen for anything; what keeps
other domains and the page tables safe is Xen's validation, not the
guest's good manners. Each probe sends one bad mmu_update against the
calling process's own tables and returns Xen's answer as -errno:
- foreign-frame: an L1 entry naming a machine frame we do not own;
- writable-pagetable: a writable user mapping of our own pinned L2;
- xen-slot: an L2 entry in Xen's reserved top 64 MB.
"""

import errno

from domains.kernel.mmu import MmuBatch, MmuError, pfn_to_mfn, pte_ptr
from hypervisor.public.mmu import (
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_USER,
    HYPERVISOR_VIRT_START,
    L2_PAGETABLE_SHIFT,
    make_pte,
)

PROBE_VA = 0x0800_0000  # an unmapped user page in the L1 that maps the text
USER_RW = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER


def _foreign_mfn(k) -> int:
    base, n = k.boot["mfn_base"], k.boot["nr_pages"]
    return base - 1 if base > 0 else base + n


def _request(k, mm, kind: str) -> tuple[int, int]:
    aspace = mm.aspace
    l1s = aspace.l1_tables()
    slot = PROBE_VA >> L2_PAGETABLE_SHIFT
    if kind == "xen-slot":
        xen_slot = HYPERVISOR_VIRT_START >> L2_PAGETABLE_SHIFT
        l1_mfn = aspace.l2_mfn if slot not in l1s else pfn_to_mfn(k, l1s[slot])
        return pte_ptr(aspace.l2_mfn, xen_slot + 1), make_pte(l1_mfn, USER_RW)
    if slot not in l1s:
        raise OSError(errno.EFAULT, "no L1 table to probe with")
    l1_mfn = pfn_to_mfn(k, l1s[slot])
    index = (PROBE_VA >> 12) & 0x3FF
    if kind == "foreign-frame":
        return pte_ptr(l1_mfn, index), make_pte(_foreign_mfn(k), _PAGE_PRESENT | _PAGE_USER)
    if kind == "writable-pagetable":
        return pte_ptr(l1_mfn, index), make_pte(aspace.l2_mfn, USER_RW)
    raise OSError(errno.EINVAL, f"unknown probe {kind!r}")


def probe(k, mm, kind: str) -> int:
    ptr, val = _request(k, mm, kind)
    batch = MmuBatch(k)
    batch.queue_update(ptr, val)
    try:
        batch.flush()
    except MmuError as err:
        return -err.errno
    batch.queue_update(ptr, 0)  # accepted (it must not be): take it back
    batch.flush()
    return 0
