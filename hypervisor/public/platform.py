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
6. Link down and hot replacement. Xen watches each device's control socket:
   end of file means the device is gone (its link went down). The launcher
   (the firmware) restarts a dead device under the same name, IRQ and
   image, and hands Xen the new secret and control socket on the firmware
   channel (`--firmware-fd`, SOCK_SEQPACKET, `encode_firmware`); when it
   gives up on a device it says "remove". Each change of a device's state
   raises the global VIRQ_DEVICE (hypervisor.public.xen) for Dom0, which
   reads the states and generations in `device_list`.
"""

import enum

import msgpack

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

    device_list = 100  # -> [{"name", "kind", "irq", "image", "mmio", "state", "generation"}]


class DeviceState(enum.StrEnum):
    """A device as Xen sees it (rule 6), in device_list's "state"."""

    booting = "booting"  # started, no hello yet
    up = "up"  # hello done: it has its memory and may DMA
    dead = "dead"  # its process is gone; a replacement may follow
    removed = "removed"  # the firmware gave up on it: gone for good


FIRMWARE_OPS = ("replace", "remove")


class FirmwareError(ValueError):
    """A malformed message on the firmware channel."""


def encode_op(op: str, **fields) -> bytes:
    """A message of the device interfaces: a msgpack map with its "op"."""
    return msgpack.packb({"op": op, **fields})


def decode_op(raw: bytes, ops: tuple[str, ...], error: type[Exception], what: str) -> dict:
    """A msgpack map whose "op" is one of `ops`; raises `error` otherwise.
    Each interface then checks its own fields."""
    try:
        msg = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise error(f"not msgpack: {exc.__class__.__name__}") from None
    if not isinstance(msg, dict) or msg.get("op") not in ops:
        raise error(what)
    return msg


def int_field(msg: dict, key: str, lo: int, hi: int, error: type[Exception]) -> int:
    v = msg.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise error(f"{msg.get('op')}: {key} must be an integer in {lo}..{hi}")
    return v


def encode_firmware(op: str, name: str, secret: bytes = b"") -> bytes:
    """A firmware message: "replace" (one fd rides along: the new control
    socket) or "remove"."""
    return encode_op(op, name=name, secret=secret)


def decode_firmware(raw: bytes) -> dict:
    msg = decode_op(raw, FIRMWARE_OPS, FirmwareError, "not a firmware message")
    if not isinstance(msg.get("name"), str) or not isinstance(msg.get("secret"), bytes):
        raise FirmwareError("firmware message: name must be text and secret bytes")
    if msg["op"] == "replace" and len(msg["secret"]) != 16:
        raise FirmwareError("replace: a 16-byte secret")
    return msg


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
