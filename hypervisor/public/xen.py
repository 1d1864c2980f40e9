"""Hypercall numbers, domain ids, VIRQs, errno values and scheduler ops (xen.h)."""

import enum

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# Special domain ids (xen.h, DOMID_FIRST_RESERVED = 0x7FF0).
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_ANY = 0x7FF5
DOMID_IDLE = 0x7FFF
DOMID_FIRST_RESERVED = 0x7FF0


class Hypercall(enum.IntEnum):
    """__HYPERVISOR_* numbers (xen.h)."""

    mmu_update = 1
    memory_op = 12
    multicall = 13
    set_timer_op = 15
    xen_version = 17
    console_io = 18
    grant_table_op = 20
    vcpu_op = 24
    mmuext_op = 26
    sched_op = 29
    event_channel_op = 32
    physdev_op = 33
    sysctl = 35
    domctl = 36


class Errno(enum.IntEnum):
    """Xen's errno values (public/errno.h); hypercalls return them negated."""

    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4
    EIO = 5
    E2BIG = 7
    EBADF = 9
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EINVAL = 22
    ENOSPC = 28
    ENOSYS = 38
    EOPNOTSUPP = 95
    ETIMEDOUT = 110


class SchedOp(enum.IntEnum):
    yield_ = 0
    block = 1
    shutdown = 2
    poll = 3
    remote_shutdown = 4


class ShutdownReason(enum.IntEnum):
    """SHUTDOWN_* (sched.h); the xl list state letter is in SHUTDOWN_LETTER."""

    poweroff = 0
    reboot = 1
    suspend = 2
    crash = 3
    watchdog = 4
    soft_reset = 5


SHUTDOWN_LETTER = {
    ShutdownReason.poweroff: "-",
    ShutdownReason.reboot: "r",
    ShutdownReason.suspend: "s",
    ShutdownReason.crash: "c",
    ShutdownReason.watchdog: "w",
    ShutdownReason.soft_reset: "S",
}


class Virq(enum.IntEnum):
    """Virtual IRQs (xen.h). TIMER is per-vCPU; CONSOLE, DOM_EXC and DEVICE are
    global. DEVICE is the model's (not in xen.h): a device's link went down,
    its replacement came up or it was removed; the hardware domain then asks
    PHYSDEVOP device_list, as Dom0 asks for pCPU info on VIRQ_PCPU_STATE."""

    TIMER = 0
    DEBUG = 1
    CONSOLE = 2
    DOM_EXC = 3
    DEVICE = 14


NR_VIRQS = 24
GLOBAL_VIRQS = frozenset({Virq.CONSOLE, Virq.DOM_EXC, Virq.DEVICE})


class DomctlCmd(enum.IntEnum):
    """XEN_DOMCTL_* (domctl.h). ``shutdown`` is the model's name for
    SCHEDOP_remote_shutdown issued by the toolstack; ``map_foreign`` models
    privcmd's foreign mapping (IOCTL_PRIVCMD_MMAPBATCH) of a guest's memory."""

    createdomain = 1
    destroydomain = 2
    pausedomain = 3
    unpausedomain = 4
    getdomaininfo = 5
    shutdown = 48
    map_foreign = 49


class SysctlCmd(enum.IntEnum):
    readconsole = 1
    physinfo = 3
    getdomaininfolist = 6


class ConsoleIO(enum.IntEnum):
    write = 0
    read = 1


class XenVersionCmd(enum.IntEnum):
    version = 0
    extraversion = 1


XEN_VERSION = (4, 19)
XEN_EXTRAVERSION = "-xenolab"
