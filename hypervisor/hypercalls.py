"""Hypercall handlers: validate, act, answer (rc, out) or None to defer.

Rules: domctl and sysctl are for privileged domains only (-EPERM); an
unknown domain is -ESRCH; a malformed argument is -EINVAL (args.BadArg);
grant-table batches answer a GNTST status per element, as Xen does.
"""

import os
import re
import time
from collections.abc import Callable
from typing import Any

from hypervisor import args as A
from hypervisor.args import BadArg
from hypervisor.domain import DomState, TransitionError
from hypervisor.public import trace
from hypervisor.public.event_channel import NR_EVENT_CHANNELS, EvtchnOp
from hypervisor.public.grant_table import (
    DEFAULT_MAX_GRANT_FRAMES,
    GNTST,
    GNTMAP_device_map,
    GnttabOp,
)
from hypervisor.public.platform import PhysdevOp
from hypervisor.public.xen import (
    XEN_EXTRAVERSION,
    XEN_VERSION,
    ConsoleIO,
    DomctlCmd,
    Errno,
    Hypercall,
    SchedOp,
    ShutdownReason,
    SysctlCmd,
    XenVersionCmd,
)

TABLE: dict[tuple[int, int], Callable] = {}
MAX_BATCH = 512
KERNEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def hypercall(nr: int, cmd: int = 0):
    def register(fn):
        TABLE[(int(nr), int(cmd))] = fn
        return fn
    return register


def privileged(fn):
    def check(xen, dom, seq, args):
        if not dom.privileged:
            return (-Errno.EPERM, None)
        return fn(xen, dom, seq, args)
    return check


def target(xen, args: Any, key: str = "domid"):
    domid = A.get_int(args, key, 0, 0x7FEF)
    d = xen.domains.get(domid)
    if d is None:
        raise _Esrch()
    return d


class _Esrch(BadArg):
    errno = Errno.ESRCH


# ---- misc ----------------------------------------------------------------

@hypercall(Hypercall.xen_version, XenVersionCmd.version)
def xen_version(xen, dom, seq, args):
    return (XEN_VERSION[0] << 16 | XEN_VERSION[1], None)


@hypercall(Hypercall.xen_version, XenVersionCmd.extraversion)
def xen_extraversion(xen, dom, seq, args):
    return (0, XEN_EXTRAVERSION)


@hypercall(Hypercall.console_io, ConsoleIO.write)
@privileged
def console_write(xen, dom, seq, args):
    data = A.get_bytes(args, "data", 4096)
    xen.console.write(data.decode(errors="replace"), prefix=f"(d{dom.domid}) ")
    return (len(data), None)


@hypercall(Hypercall.set_timer_op)
def set_timer_op(xen, dom, seq, args):
    xen.arm_timer(dom, A.get_int(args, "deadline_ns"))
    return (0, None)


# ---- sysctl --------------------------------------------------------------

@hypercall(Hypercall.sysctl, SysctlCmd.readconsole)
@privileged
def readconsole(xen, dom, seq, args):
    clear = bool(A.get_int(args, "clear", 0, 1, default=0))
    return (0, xen.console.read(clear))


@hypercall(Hypercall.sysctl, SysctlCmd.physinfo)
@privileged
def physinfo(xen, dom, seq, args):
    return (0, {"nr_cpus": xen.cpus, "total_pages": xen.total_pages,
                "free_pages": xen.free_pages(), "xen_pid": os.getpid(),
                "boot_ns": xen.boot_ns, "rundir": xen.rundir, "host": xen.host,
                "xen_version": f"{XEN_VERSION[0]}.{XEN_VERSION[1]}{XEN_EXTRAVERSION}"})


@hypercall(Hypercall.sysctl, SysctlCmd.getdomaininfolist)
@privileged
def getdomaininfolist(xen, dom, seq, args):
    return (0, [_info(xen, d) for d in sorted(xen.domains.values(), key=lambda d: d.domid)])


def _info(xen, d):
    xen.cpu_time(d)
    return {**d.info(), "evtchn_sends": xen.evtchn.sends_from[d.domid]}  # a model extra


# ---- domctl --------------------------------------------------------------

@hypercall(Hypercall.domctl, DomctlCmd.createdomain)
@privileged
def createdomain(xen, dom, seq, args):
    name = A.get_str(args, "name", 64)
    kernel = A.get_str(args, "kernel", 200)
    if not NAME_RE.match(name) or not KERNEL_RE.match(kernel):
        raise BadArg("bad name or kernel")
    memory_kib = A.get_int(args, "memory_kib", 1024, 1 << 24)
    vcpus = A.get_int(args, "vcpus", 1, 16)
    frames = A.get_int(args, "max_grant_frames", 1, 64, default=DEFAULT_MAX_GRANT_FRAMES)
    if memory_kib // 4 < frames + 16:
        raise BadArg("memory too small")
    if memory_kib // 4 > xen.free_pages():
        return (-Errno.ENOMEM, None)
    return (xen.create_domain(name, memory_kib, vcpus, False, kernel, frames).domid, None)


def _transition(fn):
    def run(xen, dom, seq, args):
        d = target(xen, args)
        if d.domid == 0:
            return (-Errno.EPERM, None)
        try:
            fn(xen, d, args)
        except TransitionError:
            return (-Errno.EINVAL, None)
        return (0, None)
    return run


@hypercall(Hypercall.domctl, DomctlCmd.destroydomain)
@privileged
@_transition
def destroydomain(xen, d, args):
    xen.destroy(d)


@hypercall(Hypercall.domctl, DomctlCmd.pausedomain)
@privileged
@_transition
def pausedomain(xen, d, args):
    if d.state in (DomState.paused, DomState.created):
        raise TransitionError
    xen.pause(d)


@hypercall(Hypercall.domctl, DomctlCmd.unpausedomain)
@privileged
@_transition
def unpausedomain(xen, d, args):
    xen.unpause(d)


@hypercall(Hypercall.domctl, DomctlCmd.shutdown)
@privileged
@_transition
def remote_shutdown(xen, d, args):
    xen.shutdown(d, A.get_int(args, "reason", 0, max(ShutdownReason)))


@hypercall(Hypercall.domctl, DomctlCmd.getdomaininfo)
@privileged
def getdomaininfo(xen, dom, seq, args):
    return (0, _info(xen, target(xen, args)))


@hypercall(Hypercall.domctl, DomctlCmd.map_foreign)
@privileged
def map_foreign(xen, dom, seq, args):
    d = target(xen, args)
    if d.state is DomState.dying and d.mem.fd < 0:
        return (-Errno.ESRCH, None)
    xen.send_memory(dom, d, foreign=True)
    return (0, {"nr_pages": d.nr_pages})


@hypercall(Hypercall.physdev_op, PhysdevOp.device_list)
@privileged
def physdev_device_list(xen, dom, seq, args):
    """The physical devices assigned to the hardware domain (PCI enumeration)."""
    if dom.domid != 0:
        return (0, [])
    return (0, xen.device_list())


# ---- sched_op ------------------------------------------------------------

@hypercall(Hypercall.sched_op, SchedOp.yield_)
def sched_yield(xen, dom, seq, args):
    return (0, None)


@hypercall(Hypercall.sched_op, SchedOp.block)
def sched_block(xen, dom, seq, args):
    if xen.evtchn.events_pending(dom.domid):
        return (0, None)
    dom.block_seq = seq
    dom.transition("block")
    return None


@hypercall(Hypercall.sched_op, SchedOp.shutdown)
def sched_shutdown(xen, dom, seq, args):
    xen.shutdown(dom, A.get_int(args, "reason", 0, max(ShutdownReason)))
    return None


@hypercall(Hypercall.sched_op, SchedOp.poll)
def sched_poll(xen, dom, seq, args):
    ports = args.get("ports") if isinstance(args, dict) else None
    if not isinstance(ports, list) or not 0 < len(ports) <= 128 or not all(
            isinstance(p, int) and 0 < p < NR_EVENT_CHANNELS for p in ports):
        raise BadArg("bad ports")
    timeout = A.get_int(args, "timeout_ns", 0, 2**62, default=0)
    if xen.evtchn.poll(dom.domid, ports):
        return (0, None)
    xen.start_poll(dom, seq, ports, (time.monotonic_ns() + timeout) if timeout else 0)
    return None


# ---- event_channel_op ------------------------------------------------------

def _evtchn_rc(rc):
    if isinstance(rc, dict):
        return (0, rc)
    return (rc, None)


@hypercall(Hypercall.event_channel_op, EvtchnOp.alloc_unbound)
def evtchn_alloc_unbound(xen, dom, seq, args):
    return _evtchn_rc(xen.evtchn.alloc_unbound(
        dom.domid, A.get_int(args, "dom", 0, 0xFFFF), A.get_int(args, "remote_dom", 0, 0xFFFF)))


@hypercall(Hypercall.event_channel_op, EvtchnOp.bind_interdomain)
def evtchn_bind_interdomain(xen, dom, seq, args):
    return _evtchn_rc(xen.evtchn.bind_interdomain(
        dom.domid, A.get_int(args, "remote_dom", 0, 0xFFFF),
        A.get_int(args, "remote_port", 0, 2**32 - 1)))


@hypercall(Hypercall.event_channel_op, EvtchnOp.bind_virq)
def evtchn_bind_virq(xen, dom, seq, args):
    return _evtchn_rc(xen.evtchn.bind_virq(
        dom.domid, A.get_int(args, "virq", 0, 2**32 - 1), A.get_int(args, "vcpu", 0, 2**32 - 1,
                                                                   default=0)))


@hypercall(Hypercall.event_channel_op, EvtchnOp.bind_pirq)
def evtchn_bind_pirq(xen, dom, seq, args):
    return _evtchn_rc(xen.evtchn.bind_pirq(dom.domid, A.get_int(args, "pirq", 0, 2**32 - 1)))


def _port_op(method: str, point: int = 0):
    def run(xen, dom, seq, args):
        port = A.get_int(args, "port", 0, 2**32 - 1)
        if point:
            trace.stamp(point, 0, dom.domid, port)
        return _evtchn_rc(getattr(xen.evtchn, method)(dom.domid, port))
    return run


TABLE[(Hypercall.event_channel_op, EvtchnOp.close)] = _port_op("close")
TABLE[(Hypercall.event_channel_op, EvtchnOp.send)] = _port_op("send", trace.XEN_EVTCHN_SEND)
TABLE[(Hypercall.event_channel_op, EvtchnOp.unmask)] = _port_op("unmask")


@hypercall(Hypercall.event_channel_op, EvtchnOp.status)
def evtchn_status(xen, dom, seq, args):
    return _evtchn_rc(xen.evtchn.status(
        dom.domid, A.get_int(args, "dom", 0, 0xFFFF), A.get_int(args, "port", 0, 2**32 - 1)))


# ---- grant_table_op --------------------------------------------------------

@hypercall(Hypercall.grant_table_op, GnttabOp.setup_table)
def gnttab_setup_table(xen, dom, seq, args):
    status, frames = xen.gnttab.setup_table(
        dom.domid, A.get_int(args, "dom", 0, 0xFFFF), A.get_int(args, "nr_frames", 0, 2**32 - 1))
    return (0, {"status": status, "frame_list": frames})


@hypercall(Hypercall.grant_table_op, GnttabOp.query_size)
def gnttab_query_size(xen, dom, seq, args):
    status, nr, mx = xen.gnttab.query_size(dom.domid, A.get_int(args, "dom", 0, 0xFFFF))
    return (0, {"status": status, "nr_frames": nr, "max_nr_frames": mx})


@hypercall(Hypercall.grant_table_op, GnttabOp.map_grant_ref)
def gnttab_map(xen, dom, seq, args):
    out = [_map_one(xen, dom, op) for op in A.get_list(args, MAX_BATCH)]
    trace.stamp(trace.XEN_GNTTAB_MAP, 0, dom.domid, len(out))
    return (0, out)


def _map_one(xen, dom, op) -> dict:
    try:
        granter = A.get_int(op, "dom", 0, 0xFFFF)
        ref = A.get_int(op, "ref", 0, 2**32 - 1)
        flags = A.get_int(op, "flags", 0, 2**32 - 1)
    except BadArg:
        return {"status": int(GNTST.general_error)}
    status, handle, pfn = xen.gnttab.map_grant_ref(dom.domid, granter, ref, flags)
    if status != GNTST.okay:
        return {"status": int(status)}
    xen.send_memory(dom, xen.domains[granter], foreign=False)
    bfn = xen.iommu_map(dom, granter, pfn, handle, flags) if flags & GNTMAP_device_map else 0
    return {"status": 0, "handle": handle, "frame": pfn, "dom": granter,
            "dev_bus_addr": bfn << 12}


@hypercall(Hypercall.grant_table_op, GnttabOp.unmap_grant_ref)
def gnttab_unmap(xen, dom, seq, args):
    out = []
    for op in A.get_list(args, MAX_BATCH):
        try:
            handle = A.get_int(op, "handle", 0, 2**32 - 1)
        except BadArg:
            out.append(int(GNTST.bad_handle))
            continue
        out.append(int(xen.unmap_grant(dom, handle)))
    return (0, out)


@hypercall(Hypercall.grant_table_op, GnttabOp.copy)
def gnttab_copy(xen, dom, seq, args):
    out = [int(xen.gnttab.copy(dom.domid, op)) for op in A.get_list(args, MAX_BATCH)]
    trace.stamp(trace.XEN_GNTTAB_COPY, 0, dom.domid, len(out))
    return (0, out)
