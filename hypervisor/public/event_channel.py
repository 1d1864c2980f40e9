"""Event channels (event_channel.h) and where their bits live in shared_info.

Model difference from Xen's 2-level ABI: a port's pending and mask state is
one *byte* each, not one bit, and there is no selector word. Python has no
atomic bit operation on memory shared between processes; a one-byte store is
a single store, so Xen (which only sets pending 0->1) and the guest (which
only clears it 1->0) can never lose each other's update. The guest scans the
whole 1 KiB pending array with one bytes search per upcall.
"""

import enum
import struct

NR_EVENT_CHANNELS = 1024


class EvtchnOp(enum.IntEnum):
    bind_interdomain = 0
    bind_virq = 1
    bind_pirq = 2
    close = 3
    send = 4
    status = 5
    alloc_unbound = 6
    bind_ipi = 7
    bind_vcpu = 8
    unmask = 9
    reset = 10


class EvtchnStat(enum.IntEnum):
    closed = 0
    unbound = 1
    interdomain = 2
    pirq = 3
    virq = 4
    ipi = 5


# shared_info page layout (the model's; 3136 bytes like Xen's x86_64 one).
SHARED_INFO_SIZE = 3136
VCPU_INFO_SIZE = 64
LEGACY_MAX_VCPUS = 16
VCPU_UPCALL_PENDING = 0  # u8, set by Xen when it sends an upcall
VCPU_UPCALL_MASK = 1  # u8, the guest's "interrupts disabled" flag
EVTCHN_PENDING_OFFSET = LEGACY_MAX_VCPUS * VCPU_INFO_SIZE  # 1024
EVTCHN_MASK_OFFSET = EVTCHN_PENDING_OFFSET + NR_EVENT_CHANNELS  # 2048
WALLCLOCK_OFFSET = EVTCHN_MASK_OFFSET + NR_EVENT_CHANNELS  # 3072
WALLCLOCK_FORMAT = "<IIII"  # wc_version, wc_sec, wc_nsec, wc_sec_hi

assert WALLCLOCK_OFFSET + 64 == SHARED_INFO_SIZE
assert struct.calcsize(WALLCLOCK_FORMAT) == 16
