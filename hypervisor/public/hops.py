"""Hop stamps: when an I/O passed a point of its path, recorded per process.

Rules:
1. Off unless $XENOLAB_HOPS names a directory when the process starts (a
   bench sets it before it boots its host; every process inherits it). Off,
   a stamp costs one global test.
2. On, each process maps its own file <dir>/<pid>.hops of NR_RECORDS
   16-byte records (point, a, b, t_ns) and writes them round-robin: a full
   file keeps the newest. t_ns is time.monotonic_ns(), one clock for every
   process. A stamp never raises and never blocks.
3. Points are numbered here in the order a block request meets them; a and
   b say whose flow a record belongs to (domids).
4. `read(dir)` merges every process's records as (t_ns, point, a, b),
   oldest first. Files stay until the bench removes the directory.
"""

import mmap
import os
import struct
import time

ENV = "XENOLAB_HOPS"
RECORD = struct.Struct("<HHIQ")
NR_RECORDS = 1 << 16

XEN_SEND = 1  # Xen ran EVTCHNOP_send: a = caller, b = the remote domid
BACK_SUBMIT = 2  # blkback handed a request to the disk driver: a = frontend domid
DRV_DOORBELL = 3  # Dom0's disk driver rang a device's doorbell
DEV_KICK = 4  # the disk device took a doorbell
DEV_IRQ = 5  # the disk device raised its IRQ
XEN_PIRQ = 6  # Xen took a device's IRQ: a = the IRQ
DRV_IRQ = 7  # Dom0's disk driver handled its interrupt: a = the IRQ
BACK_NOTIFY = 8  # blkback notified a frontend of responses: a = frontend domid


def _open() -> mmap.mmap | None:
    folder = os.environ.get(ENV)
    if not folder:
        return None
    try:
        fd = os.open(os.path.join(folder, f"{os.getpid()}.hops"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        os.ftruncate(fd, NR_RECORDS * RECORD.size)
        return mmap.mmap(fd, NR_RECORDS * RECORD.size)
    except OSError:
        return None
    finally:
        os.close(fd)


_map = _open()
on = _map is not None  # callers on hot paths test this before calling stamp()
_next = 0


def stamp(point: int, a: int = 0, b: int = 0) -> None:
    """Record that this process passed `point` now (rule 2)."""
    global _next
    if _map is None:
        return
    offset = (_next % NR_RECORDS) * RECORD.size
    RECORD.pack_into(_map, offset, point, a & 0xFFFF, b & 0xFFFFFFFF, time.monotonic_ns())
    _next += 1


def read(folder: str) -> list[tuple[int, int, int, int]]:
    """Every record under `folder`, as (t_ns, point, a, b), oldest first."""
    out = []
    for name in os.listdir(folder):
        if not name.endswith(".hops"):
            continue
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        for point, a, b, t in RECORD.iter_unpack(data[: len(data) // RECORD.size * RECORD.size]):
            if t:
                out.append((t, point, a, b))
    out.sort()
    return out
