"""The guest kernel's side of tracing (hypervisor.public.trace), plus the
trace id of the work in progress.

Rule: a system call runs under its own trace id. Task.advance sets
hypervisor.public.trace.current before it runs a kernel generator, so the layers below it (ext2,
the block layer, blkfront) stamp their records with the id of the request
that caused them without every call passing it down.
"""

from hypervisor.public import trace as _public
from hypervisor.public.trace import (  # noqa: F401 - re-exported for the guest kernel
    ASPACE_CREATE,
    BCACHE_MISS,
    BLOCK_READ,
    BLOCK_WRITE,
    EXT2_LOOKUP,
    MMU_UPDATE,
    MMUEXT_OP,
    PAGE_FAULT,
    PCB_CREATE,
    PROC_BLOCK,
    PROC_EXEC,
    PROC_EXIT,
    PROC_WAKE,
    SCHED_IN,
    SIGNAL,
    SYSCALL_ENTER,
    SYSCALL_EXIT,
    new_id,
    stamp,
)


def set_current(trace_id: int) -> None:
    """The system call now running (public trace.current, read by every layer)."""
    _public.current = trace_id


def current() -> int:
    return _public.current


def on() -> bool:
    return _public.on


def ext2_hook(kind: str, **info) -> None:
    """ext2's trace hook: its lookups and buffer-cache misses."""
    if not _public.on:
        return
    if kind == "ext2.lookup":
        stamp(EXT2_LOOKUP, _public.current, info.get("dir", 0), info.get("ino") or 0,
              str(info.get("name", ""))[:48])
    elif kind == "ext2.bread":
        stamp(BCACHE_MISS, _public.current, info.get("first", 0), info.get("blocks", 0))
