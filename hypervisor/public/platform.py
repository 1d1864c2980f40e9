"""The platform: how device processes (hardware) meet Xen and Domain-0.

Rules:
1. Devices exist before Xen boots: the launcher starts each one with a
   secret, a control socket (SOCK_SEQPACKET, for memory objects) and an IRQ
   number, and tells Xen the same three things. A device speaks to Xen on
   the hypercall ROUTER with its secret as routing id, using the hypercall
   envelope with hypercall number PLATFORM_OP.
2. Every device is assigned to Domain-0 (the hardware domain). Its DMA goes
   through the IOMMU: a bus frame number (bfn) below Dom0's nr_pages is
   Dom0's own pfn (identity map); a bfn at or above IOMMU_FOREIGN_BASE is an
   entry of the IOMMU table that Xen writes when Dom0 maps a grant with
   GNTMAP_device_map, and clears when it is unmapped. The device may touch
   nothing else.
3. Xen hands the device the IOMMU table and the memory objects it needs over
   the control socket (msgpack tag + one fd, like send_memory to domains):
   {"iommu": N} for the table (N u64 entries), {"dom": d, "nr_pages": n}
   for a domain's memory, always *before* an entry naming d is written.
4. Interrupts: the device posts PlatformOp.irq; Xen raises the physical IRQ,
   which reaches Dom0 as the event-channel port it bound with bind_pirq.
5. MMIO: Domain-0's driver writes to the device directly (PUSH to the
   device's `mmio_endpoint`), as a PV Dom0 writes a passed-through BAR.
"""

import enum

from hypervisor.public.xen import PAGE_SHIFT

PLATFORM_OP = 0x7000  # not a Xen hypercall: the model's device-to-Xen channel
IOMMU_FOREIGN_BASE = 1 << 24  # first bfn of the grant-mapping window
IOMMU_ENTRIES = 1 << 16  # table size: 64 Ki frames (256 MiB) of mapped grants
IOMMU_VALID = 1 << 0
IOMMU_WRITE = 1 << 1
FIRST_DEVICE_IRQ = 16


class PlatformOp(enum.IntEnum):
    hello = 1  # device -> Xen: reply {"irq", "dom0_pages", "foreign_base", "entries"}
    irq = 2  # device -> Xen, posted: raise my IRQ


class PhysdevOp(enum.IntEnum):
    """PHYSDEVOP_* used by Dom0 (model numbers beyond Xen's)."""

    device_list = 100  # -> [{"name", "kind", "irq", "image", "mmio"}]


def iommu_entry(domid: int, pfn: int, writable: bool) -> int:
    return IOMMU_VALID | (IOMMU_WRITE if writable else 0) | (domid << 16) | (pfn << 32)


def iommu_decode(entry: int) -> tuple[int, int, bool] | None:
    """(domid, pfn, writable) of a valid entry, else None."""
    if not entry & IOMMU_VALID:
        return None
    return (entry >> 16) & 0xFFFF, entry >> 32, bool(entry & IOMMU_WRITE)


def bus_addr(bfn: int, offset: int = 0) -> int:
    return (bfn << PAGE_SHIFT) | offset


def mmio_endpoint(host: str, device: str) -> str:
    import os
    return f"ipc://@xenolab-{os.getuid()}/{host}/dev/{device}"
