"""HYPERVISOR_mmu_update and HYPERVISOR_mmuext_op: decode, then the frame table acts.

Rules: the arguments are ``{"reqs" | "ops": the packed C structs (bytes),
"foreigndom": int}`` (foreigndom defaults to DOMID_SELF); a batch holds at
most MAX_BATCH entries. Anything malformed is -EINVAL before any entry runs.
The reply is ``(rc, {"done": n})``: rc is 0 or the first failing entry's
errno, and n entries took effect (hypervisor.mm, Rule 6). Importing this
module registers the handlers (hypervisor.core imports it).
"""

from collections.abc import Callable

from hypervisor import args as A
from hypervisor.args import BadArg
from hypervisor.hypercalls import MAX_BATCH, hypercall
from hypervisor.public import trace
from hypervisor.public.mmu import (
    MMU_UPDATE_SIZE,
    MMUEXT_OP_SIZE,
    ext_names,
    unpack_mmu_updates,
    unpack_mmuext_ops,
)
from hypervisor.public.xen import DOMID_SELF, Errno, Hypercall


def _batch(args, key: str, size: int, unpack: Callable[[bytes], list]) -> list:
    raw = A.get_bytes(args, key, MAX_BATCH * size)
    try:
        return unpack(raw)
    except ValueError:
        raise BadArg(f"{key}: not whole structs") from None


def _foreigndom(args, bits: int) -> int:
    return A.get_int(args, "foreigndom", 0, (1 << bits) - 1, default=DOMID_SELF)


@hypercall(Hypercall.mmu_update)
def mmu_update(xen, dom, seq, args):
    reqs = _batch(args, "reqs", MMU_UPDATE_SIZE, unpack_mmu_updates)
    rc, done = xen.mm.mmu_update(dom.domid, reqs, _foreigndom(args, 32))
    trace.stamp(trace.XEN_MMU_UPDATE, 0, dom.domid, len(reqs), _verdict(rc, done))
    return (rc, {"done": done})


@hypercall(Hypercall.mmuext_op)
def mmuext_op(xen, dom, seq, args):
    ops = _batch(args, "ops", MMUEXT_OP_SIZE, unpack_mmuext_ops)
    rc, done = xen.mm.mmuext_op(dom.domid, ops, _foreigndom(args, 16))
    if trace.on:
        trace.stamp(trace.XEN_MMUEXT_OP, 0, dom.domid, len(ops),
                    f"{ext_names(ops)}{_verdict(rc, done)}")
    return (rc, {"done": done})


def _verdict(rc: int, done: int) -> str:
    """What a trace says about a refused batch: which entry, which errno."""
    if rc >= 0:
        return ""
    try:
        name = Errno(-rc).name
    except ValueError:
        name = str(rc)
    return f" REFUSED {name} at entry {done}"

