"""PV memory management (xen.h): mmu_update, mmuext_op, PTE bits, paging geometry.

Rules:
1. Geometry is classic 32-bit x86 two-level paging, as in the SOSP'03 paper:
   4 KiB pages, 4-byte PTEs, 1024 entries per table, and a virtual address
   is 10 bits of L2 index | 10 bits of L1 index | 12 bits of offset. A PTE is
   ``mfn << 12 | flags``, so machine frame numbers are below 2**20.
2. Xen owns the top 64 MB of every address space: L2 slots from
   HYPERVISOR_VIRT_START up are Xen's and a guest can never install an entry
   there (mmu_update answers -EPERM).
3. The guest allocates and fills its page tables in its own frames, but once
   a frame is a page table it changes it only through ``mmu_update``; Xen
   validates every entry (reference 6.4). ``ptr`` of a request is the machine
   address of the PTE, its low two bits the command.
4. On the wire a batch is the packed array of its C structs (``reqs`` or
   ``ops``, bytes) plus ``foreigndom``; the reply's rc is 0 or the first
   failing entry's negated errno, and ``out["done"]`` counts the entries
   that took effect (the batch stops at the first failure, like Xen).
"""

import struct

from hypervisor.public.xen import PAGE_SHIFT, PAGE_SIZE

# ---- geometry ------------------------------------------------------------

PAGING_LEVELS = 2
PTE_SIZE = 4
PTE_FORMAT = "<I"
L1_PAGETABLE_SHIFT = PAGE_SHIFT  # 12
L2_PAGETABLE_SHIFT = 22
L1_PAGETABLE_ENTRIES = PAGE_SIZE // PTE_SIZE  # 1024
L2_PAGETABLE_ENTRIES = PAGE_SIZE // PTE_SIZE  # 1024
L2_PAGE_SPAN = 1 << L2_PAGETABLE_SHIFT  # 4 MiB mapped by one L1 table
VA_LIMIT = 1 << 32
MAX_MFN = 1 << (32 - PAGE_SHIFT)  # machine frames a PTE can name: 2**20
HYPERVISOR_VIRT_START = 0xFC000000  # Xen's top 64 MB
L2_FIRST_XEN_SLOT = HYPERVISOR_VIRT_START >> L2_PAGETABLE_SHIFT  # 1008
MAX_MMU_BATCH = 512  # entries per call Xen accepts (hypervisor.hypercalls.MAX_BATCH)


def l2_table_offset(va: int) -> int:
    return (va >> L2_PAGETABLE_SHIFT) & (L2_PAGETABLE_ENTRIES - 1)


def l1_table_offset(va: int) -> int:
    return (va >> L1_PAGETABLE_SHIFT) & (L1_PAGETABLE_ENTRIES - 1)


def pte_mfn(pte: int) -> int:
    return pte >> PAGE_SHIFT


def pte_flags(pte: int) -> int:
    return pte & (PAGE_SIZE - 1)


def make_pte(mfn: int, flags: int) -> int:
    return mfn << PAGE_SHIFT | flags


# ---- PTE flag bits (x86) ---------------------------------------------------

_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_PWT = 0x008
_PAGE_PCD = 0x010
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
_PAGE_PSE = 0x080  # in an L1 entry the same bit is PAT
_PAGE_GLOBAL = 0x100
_PAGE_AVAIL = 0xE00  # free for the guest OS

# Xen's BASE_DISALLOW_MASK restricted to a 32-bit PTE: cache attributes
# (a domain without I/O memory may not choose them), PSE (superpages need
# MMUEXT_MARK_SUPER) and GLOBAL. Modern Xen allows GLOBAL in an L1 entry.
BASE_DISALLOW_MASK = _PAGE_PWT | _PAGE_PCD | _PAGE_PSE | _PAGE_GLOBAL
L1_DISALLOW_MASK = BASE_DISALLOW_MASK & ~_PAGE_GLOBAL
L2_DISALLOW_MASK = BASE_DISALLOW_MASK
# Bits whose change alone needs no revalidation (mm.c FASTPATH_FLAG_WHITELIST).
FASTPATH_FLAG_WHITELIST = _PAGE_AVAIL | _PAGE_GLOBAL | _PAGE_DIRTY | _PAGE_ACCESSED | _PAGE_USER

# ---- mmu_update ------------------------------------------------------------

MMU_NORMAL_PT_UPDATE = 0  # checked *ptr = val
MMU_MACHPHYS_UPDATE = 1  # M2P[ptr >> 12] = val
MMU_PT_UPDATE_PRESERVE_AD = 2  # as 0, keeping the entry's A/D bits
MMU_PT_UPDATE_NO_TRANSLATE = 3  # as 0; val is never translated
MMU_CMD_MASK = PTE_SIZE - 1  # ptr[1:0]

MMU_UPDATE_FORMAT = "<QQ"  # struct mmu_update { u64 ptr; u64 val; }
MMU_UPDATE_SIZE = struct.calcsize(MMU_UPDATE_FORMAT)

# ---- mmuext_op -------------------------------------------------------------

MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7
MMUEXT_TLB_FLUSH_MULTI = 8
MMUEXT_INVLPG_MULTI = 9
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_INVLPG_ALL = 11
MMUEXT_FLUSH_CACHE = 12
MMUEXT_SET_LDT = 13
MMUEXT_NEW_USER_BASEPTR = 15
MMUEXT_CLEAR_PAGE = 16
MMUEXT_COPY_PAGE = 17
MMUEXT_FLUSH_CACHE_GLOBAL = 18
MMUEXT_MARK_SUPER = 19
MMUEXT_UNMARK_SUPER = 20

# struct mmuext_op { unsigned int cmd; union { xen_pfn_t mfn; unsigned long
# linear_addr; } arg1; union { unsigned int nr_ents; const void *vcpumask;
# xen_pfn_t src_mfn; } arg2; } on x86_64. The model has no guest pointers:
# TLB_FLUSH_MULTI/INVLPG_MULTI carry the vCPU bitmap itself in arg2.
MMUEXT_NAMES = {
    MMUEXT_PIN_L1_TABLE: "PIN_L1", MMUEXT_PIN_L2_TABLE: "PIN_L2", MMUEXT_UNPIN_TABLE: "UNPIN",
    MMUEXT_NEW_BASEPTR: "NEW_BASEPTR", MMUEXT_TLB_FLUSH_LOCAL: "TLB_FLUSH",
    MMUEXT_INVLPG_LOCAL: "INVLPG", MMUEXT_TLB_FLUSH_ALL: "TLB_FLUSH_ALL",
}


def ext_names(ops) -> str:
    """The commands of an mmuext_op batch, for traces: "PIN_L2,NEW_BASEPTR"."""
    return ",".join(MMUEXT_NAMES.get(op[0], str(op[0])) for op in ops)[:32]


MMUEXT_OP_FORMAT = "<I4xQQ"
MMUEXT_OP_SIZE = struct.calcsize(MMUEXT_OP_FORMAT)

_UPDATE = struct.Struct(MMU_UPDATE_FORMAT)
_EXT = struct.Struct(MMUEXT_OP_FORMAT)


def pack_mmu_updates(reqs) -> bytes:
    """[(ptr, val), ...] -> the packed ``struct mmu_update`` array."""
    return b"".join(_UPDATE.pack(ptr, val) for ptr, val in reqs)


def unpack_mmu_updates(raw: bytes) -> list[tuple[int, int]]:
    """Raises ValueError unless ``raw`` is whole structs."""
    if len(raw) % MMU_UPDATE_SIZE:
        raise ValueError("not a whole number of struct mmu_update")
    return list(_UPDATE.iter_unpack(raw))


def pack_mmuext_ops(ops) -> bytes:
    """[(cmd, arg1, arg2), ...] -> the packed ``struct mmuext_op`` array."""
    return b"".join(_EXT.pack(cmd, arg1, arg2) for cmd, arg1, arg2 in ops)


def unpack_mmuext_ops(raw: bytes) -> list[tuple[int, int, int]]:
    """Raises ValueError unless ``raw`` is whole structs."""
    if len(raw) % MMUEXT_OP_SIZE:
        raise ValueError("not a whole number of struct mmuext_op")
    return list(_EXT.iter_unpack(raw))
