"""Trace records: every interaction of an I/O, stamped where it happens.

Rules:
1. Off unless $XENOLAB_TRACE names a directory when the process starts (the
   launcher sets it for every process of a host booted with `--trace`; Xen's
   domains inherit it), or `enable(dir)` is called later. Off, `stamp` and
   `new_id` cost one global test; callers that build costly arguments test
   `trace.on` first.
2. On, each process maps its own file <dir>/<pid>.trace (<pid>.<n>.trace if a
   reused pid finds its name taken): a HEADER (who wrote it) and NR_RECORDS
   fixed-size RECORDs written round-robin, so a full file keeps the newest.
   The file is created at the first stamp or `identify`. Records sit in a
   shared file mapping: they survive a kill -9 of their writer. A stamp
   never raises and never blocks.
3. A record is (t_ns, trace_id, seq, point, phase, a, b, s): t_ns is
   time.monotonic_ns(), one clock for every process; seq orders a process's
   own records; `point` names the place (the Point table below), `phase`
   says whether it is an instant or opens or closes a slice; a, b are u32
   arguments whose meaning each point states; s is an optional string of at
   most S_MAX utf-8 bytes (a syscall name, a path, a program).
4. A trace id follows one request; 0 means none. `new_id()` is unique across
   processes: (pid << 32) | counter. Where the ABI cannot carry the id (a
   blkif request carries only its u64 `id`; a hypercall carries no trace id),
   each side stamps what it does know in a and b, and the collector
   (launcher.trace.LINKS) joins the records: the receiving side may stamp 0,
   or an id of its own that it then keeps on its later records.
5. `identify(who, domid, kind)` says who the process is ("xen", "Domain-0",
   "d1", "disk0"); a process that never calls it is named from its process
   title (`xenolab[host]: d1 (domid 1, ...)`), read at its first stamp.

Adding a point is one line in Point: a new number (never reuse one), its
component (the Chrome thread it is drawn on), its phase and the sentence
the numbered sequence prints. Template fields: {who} the stamping process
("d1/XenoLinux", "Xen"), {a} {b} (u32), {sa} {sb} (the same, signed), {s},
{adom} {bdom} (the domain whose domid is a or b), {id} (the trace id, hex).
An END point names the BEGIN point it closes (`opens`); an END record closes
the latest open slice of that point with the same `a` in the same process.
"""

import enum
import itertools
import mmap
import os
import struct
import time

ENV = "XENOLAB_TRACE"
MAGIC = b"XLTRACE1"
HEADER = struct.Struct("<8sHHIIi32s32s128s")  # magic, version, record size, nr, pid, domid...
HEADER_SIZE = 256
RECORD = struct.Struct("<QQIHBBII48s")  # t_ns, trace_id, seq, point, phase, slen, a, b, s
S_MAX = 48
NR_RECORDS = 1 << 16
VERSION = 1
NO_DOMID = -1

INSTANT, BEGIN, END = 0, 1, 2


class Point(enum.IntEnum):
    """Every place a record can be stamped (rule 3; how to add one: above)."""

    component: str
    phase: int
    text: str
    opens: str

    def __new__(cls, value: int, component: str, phase: int, text: str, opens: str = ""):
        obj = int.__new__(cls, value)
        obj._value_ = value
        obj.component, obj.phase, obj.text, obj.opens = component, phase, text, opens
        return obj

    # -- guest kernel: processes (a = the guest pid) ---------------------------------------
    PCB_CREATE = 1, "sched", INSTANT, "{who}: creates process {a} ({s}), child of {b}"
    PROC_EXEC = 2, "sched", INSTANT, "{who}: process {a} execs {s}"
    SCHED_IN = 3, "sched", INSTANT, "{who}: process {a} ({s}) runs"
    PROC_BLOCK = 4, "sched", BEGIN, "⏸ {who}: process {a} blocks in {s}()"
    PROC_WAKE = 5, "sched", END, "▶ {who}: process {a} ({s}) resumes", "PROC_BLOCK"
    PROC_EXIT = 6, "sched", INSTANT, "{who}: process {a} ({s}) exits, status {b}"
    SIGNAL = 7, "sched", INSTANT, "{who}: process {a} gets signal {b} {s}"
    SYSCALL_ENTER = 8, "syscall", BEGIN, "{who}: process {a} calls {s}()"
    SYSCALL_EXIT = 9, "syscall", END, "{who}: {s}() returns {sb} to process {a}", "SYSCALL_ENTER"
    # -- any domain kernel: its vCPU (a = 0) ----------------------------------------------
    KERNEL_BLOCK = 10, "sched", BEGIN, "⏸ {who} blocks in Xen (SCHEDOP_block)"
    KERNEL_WAKE = 11, "sched", END, "▶ {who} wakes up", "KERNEL_BLOCK"
    # -- guest memory: a = address or count, b = guest pid --------------------------------
    PAGE_FAULT = 12, "mm", INSTANT, "{who}: page fault at {a:#x} in process {b}"
    MMU_UPDATE = 13, "hypercall", INSTANT, "{who} → Xen: mmu_update ({a} entries)"
    MMUEXT_OP = 14, "hypercall", INSTANT, "{who} → Xen: mmuext_op {s}"
    HYPERCALL = 15, "hypercall", INSTANT, "{who} → Xen: {s}"  # a = nr, b = cmd
    # -- guest files: ext2 and the buffer cache -------------------------------------------
    EXT2_LOOKUP = 16, "ext2", INSTANT, "{who}: ext2 looks up \"{s}\" in inode {a}"
    BCACHE_MISS = 17, "ext2", INSTANT, "{who}: buffer cache misses block {a}"
    BLOCK_READ = 18, "ext2", INSTANT, "{who}: reads {b} block(s) from block {a}"
    BLOCK_WRITE = 19, "ext2", INSTANT, "{who}: writes {b} block(s) at block {a}"
    # -- blkfront and rings (a = the frontend's domid, b = the request id) ----------------
    BLKFRONT_SUBMIT = 20, "blkfront", INSTANT, "{who}: blkfront queues a {s}"  # b = sector
    RING_PUSH = 21, "ring", INSTANT, "{who}: pushes request {b} onto the ring"
    BLKFRONT_RESPONSE = 22, "blkfront", INSTANT, "{who}: blkfront completes request {b} {s}"
    # -- guest event channels (a = the local port) ----------------------------------------
    EVTCHN_SEND = 23, "evtchn", INSTANT, "{who} → Xen: EVTCHNOP_send on port {a}"
    EVTCHN_UPCALL = 24, "evtchn", INSTANT, "{who}: event on port {a}"
    # -- Xen (a = the domid it acts for) ---------------------------------------------------
    XEN_HYPERCALL = 25, "hypercall", INSTANT, "Xen: {s} from {adom}"  # b = nr
    XEN_EVTCHN_SEND = 26, "xen.evtchn", INSTANT, "Xen: {adom} sends on its port {b}"
    XEN_EVTCHN_PENDING = 27, "xen.evtchn", INSTANT, "Xen → {adom}: port {b} pending (upcall)"
    XEN_MMU_UPDATE = 28, "xen.mmu", INSTANT, "Xen: validates {b} page-table entries of {adom}{s}"
    XEN_MMUEXT_OP = 29, "xen.mmu", INSTANT, "Xen: mmuext_op {s} for {adom}"
    XEN_PIRQ = 30, "xen.irq", INSTANT, "Xen: IRQ {a} → Domain-0 (physical IRQ event)"
    # -- Domain-0's backends and drivers ---------------------------------------------------
    BLKBACK_DISPATCH = 31, "blkback", INSTANT, "{who}: blkback takes request {b} of {adom}"
    BLKBACK_RESPONSE = 32, "blkback", INSTANT, "{who}: blkback answers request {b} of {adom}"
    DRIVER_DOORBELL = 33, "disk-driver", INSTANT, "{who}: disk driver rings device {a} ({b})"
    DRIVER_IRQ = 34, "disk-driver", INSTANT, "{who}: disk driver handles IRQ {a}"
    # -- devices (a = the device's IRQ, b = the command's tag) ----------------------------
    DEVICE_KICK = 35, "disk-device", INSTANT, "{who}: takes command {b} ({s})"
    DEVICE_DMA = 36, "disk-device", INSTANT, "{who}: DMA of command {b} ({s})"
    DEVICE_IRQ = 37, "disk-device", INSTANT, "{who}: raises IRQ {a}"
    # -- consoles (a = bytes) --------------------------------------------------------------
    CONSOLE_WRITE = 38, "console", INSTANT, "{who}: writes {a} bytes to its console"
    # -- guest memory, continued (b = the guest pid) ----------------------------------------
    ASPACE_CREATE = 39, "mm", INSTANT, "{who}: builds address space 0..{a:#x} for process {b}"
    # -- the network path (s = a tcpdump-like summary of the frame, a = bytes) -------------
    NET_TX = 40, "tcpip", INSTANT, "{who}: TCP/IP sends {s}"
    NET_RX = 41, "tcpip", INSTANT, "{who}: TCP/IP receives {s}"
    NETFRONT_TX = 42, "netfront", INSTANT, "{who}: netfront puts {a} frame(s) on the tx ring"
    NETFRONT_RX = 43, "netfront", INSTANT, "{who}: netfront takes {a} frame(s) off the rx ring"
    NETBACK_TX = 44, "netback", INSTANT, \
        "{who}: netback grant-copies {b} frame(s) out of {adom}'s tx ring"
    BRIDGE_FORWARD = 45, "bridge", INSTANT, "{who}: bridge {s}"
    NETBACK_RX = 46, "netback", INSTANT, \
        "{who}: netback grant-copies {b} frame(s) into {adom}'s rx buffers"
    XEN_GNTTAB_COPY = 47, "xen.gnttab", INSTANT, \
        "Xen: GNTTABOP_copy for {adom}: checks the grants, copies {b} piece(s)"
    NETBACK_TX_MAPPED = 48, "netback", INSTANT, \
        "{who}: netback reads {b} frame(s) from {adom}'s tx buffers (persistent grant maps)"
    NETBACK_RX_MAPPED = 49, "netback", INSTANT, \
        "{who}: netback writes {b} frame(s) into {adom}'s rx buffers (persistent grant maps)"
    XEN_GNTTAB_MAP = 50, "xen.gnttab", INSTANT, \
        "Xen: GNTTABOP_map_grant_ref for {adom}: checks and maps {b} grant(s)"


globals().update(Point.__members__)  # trace.SYSCALL_ENTER is Point.SYSCALL_ENTER

on = False  # rule 1: the one global every stamp tests
current = 0  # the trace id of the request this process is serving now (a kernel sets it)
_dir: str | None = None
_map: mmap.mmap | None = None
_seq = itertools.count()
_ids = itertools.count(1)
_identity: tuple[str, int, str] | None = None  # (who, domid, kind) from identify()


def _title() -> str:
    """The process title (setproctitle rewrites what /proc shows)."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").strip().decode(errors="replace")


def _pack_header() -> bytes:
    who, domid, kind = _identity or ("", NO_DOMID, "")
    return HEADER.pack(MAGIC, VERSION, RECORD.size, NR_RECORDS, os.getpid(), domid,
                       who.encode()[:32], kind.encode()[:32], _title().encode()[:128])


def _open() -> mmap.mmap | None:
    """This process's file (rule 2); None, and tracing off, if it cannot be made."""
    global _map, on
    on = False  # until the file exists: a failure is not retried at every stamp
    size = HEADER_SIZE + NR_RECORDS * RECORD.size
    for n in range(64):
        name = f"{os.getpid()}.trace" if n == 0 else f"{os.getpid()}.{n}.trace"
        try:
            fd = os.open(os.path.join(_dir or ".", name), os.O_RDWR | os.O_CREAT | os.O_EXCL,
                         0o600)
            break
        except FileExistsError:
            continue
        except OSError:
            return None
    else:
        return None
    try:
        os.ftruncate(fd, size)
        _map = mmap.mmap(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)
    _map[:HEADER.size] = _pack_header()
    on = True
    return _map


def stamp(point: int, trace_id: int = 0, a: int = 0, b: int = 0, s: str = "",
          phase: int | None = None) -> None:
    """Record that this process passed `point` now (rule 3); phase defaults
    to the point's own."""
    if not on:
        return
    m = _map if _map is not None else _open()
    if m is None:
        return
    try:
        raw = s.encode()[:S_MAX] if s else b""
        if phase is None:
            phase = getattr(point, "phase", INSTANT)
        seq = next(_seq)
        RECORD.pack_into(m, HEADER_SIZE + (seq % NR_RECORDS) * RECORD.size, time.monotonic_ns(),
                         trace_id & 0xFFFFFFFFFFFFFFFF, seq & 0xFFFFFFFF, point, phase, len(raw),
                         a & 0xFFFFFFFF, b & 0xFFFFFFFF, raw)
    except (struct.error, TypeError, ValueError, AttributeError):
        pass  # a bad argument loses its record, never the caller's work


def begin(point: int, trace_id: int = 0, a: int = 0, b: int = 0, s: str = "") -> None:
    """Open a slice at `point` (closed by `end` with the same point and a)."""
    stamp(point, trace_id, a, b, s, BEGIN)


def end(point: int, trace_id: int = 0, a: int = 0, b: int = 0, s: str = "") -> None:
    stamp(point, trace_id, a, b, s, END)


def new_id() -> int:
    """A trace id unique across the host's processes (rule 4); 0 when off."""
    if not on:
        return 0
    return (os.getpid() << 32) | (next(_ids) & 0xFFFFFFFF)


def identify(who: str, domid: int | None = None, kind: str = "") -> None:
    """Say who this process is (rule 5): "xen", "Domain-0", "d1", "disk0";
    kind is what runs there ("XenoLinux", "disk device")."""
    global _identity
    _identity = (who, NO_DOMID if domid is None else domid, kind)
    if not on:
        return
    m = _map if _map is not None else _open()
    if m is not None:
        m[:HEADER.size] = _pack_header()


def enable(folder: str, who: str | None = None, domid: int | None = None,
           kind: str = "") -> None:
    """Start recording into `folder` at run time (a process that learns late)."""
    global on, _dir
    if _dir != folder:
        disable()
    _dir, on = folder, True
    if who is not None:
        identify(who, domid, kind)


def disable() -> None:
    """Stop recording; what was written stays."""
    global on, _dir, _map
    on, _dir = False, None
    if _map is not None:
        _map.close()
        _map = None


def _after_fork() -> None:
    """A forked child writes its own file, never its parent's."""
    global _map, _seq
    _map, _seq = None, itertools.count()


os.register_at_fork(after_in_child=_after_fork)
if os.environ.get(ENV):
    enable(os.environ[ENV])


# ---- reading (the collector's half) ----------------------------------------------------

def trace_files(folder: str) -> list[str]:
    """Every process's file under `folder`."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(folder, n) for n in names if n.endswith(".trace"))


def read(path: str) -> tuple[dict, list[tuple]]:
    """One file: its header as a dict (pid, domid or None, who, kind, title)
    and its records as (seq, t_ns, point, phase, trace_id, a, b, s) in the
    order the process wrote them. A file that is not a trace raises ValueError."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER_SIZE or data[:8] != MAGIC:
        raise ValueError(f"{path}: not a trace file")
    _, version, rsize, nr, pid, domid, who, kind, title = HEADER.unpack_from(data)
    if version != VERSION or rsize != RECORD.size:
        raise ValueError(f"{path}: trace format {version} ({rsize}-byte records), "
                         f"expected {VERSION} ({RECORD.size})")
    header = {"pid": pid, "domid": None if domid == NO_DOMID else domid, "who": _str(who),
              "kind": _str(kind), "title": _str(title)}
    body = data[HEADER_SIZE:HEADER_SIZE + nr * RECORD.size]
    records = []
    for t, tid, seq, point, phase, slen, a, b, s in RECORD.iter_unpack(
            body[:len(body) // RECORD.size * RECORD.size]):
        if t and phase <= END and slen <= S_MAX:
            records.append((seq, t, point, phase, tid, a, b, s[:slen].decode(errors="replace")))
    records.sort()
    return header, records


def _str(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")
