"""Trace records (hypervisor.public.trace) and the collector (launcher.trace)."""

import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest

from hypervisor.public import trace as T
from launcher import trace as C

# ---- the record format and the point table ---------------------------------------------


def test_format_sizes():
    assert T.RECORD.size == 80
    assert T.HEADER.size <= T.HEADER_SIZE
    assert T.S_MAX == 48


def test_every_point_renders_and_every_end_names_a_begin():
    doms = {1: "d1/XenoLinux"}
    for p in T.Point:
        assert p.component and p.text, p.name
        e = _event(1, C.Proc(10, "d1", 1, "XenoLinux"), p, 5, a=1, b=2, s="x")
        assert "POINT_" not in C.describe(e, doms), p.name
        if p.phase == T.END:
            assert T.Point[p.opens].phase == T.BEGIN, p.name
        assert getattr(T, p.name) is p  # trace.SYSCALL_ENTER spells Point.SYSCALL_ENTER


def test_links_name_fields_an_event_has():
    e = _event(1, C.Proc(10, "d1", 1, "XenoLinux"), T.RING_PUSH, 0)
    for link in C.LINKS:
        C._key(e, link.src_key), C._key(e, link.dst_key)  # noqa: B018 - raises if unknown


# ---- writers: real processes --------------------------------------------------------------

def _writer(code: str, folder, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != T.ENV}
    if folder is not None:
        env[T.ENV] = str(folder)
    prog = "from hypervisor.public import trace as T\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True,
                          timeout=30, check=kw.pop("check", True), **kw)


def test_round_trip_across_two_writer_processes(tmp_path):
    front = _writer("""
        T.identify("d1", 1, "XenoLinux")
        tid = T.new_id()
        print(tid)
        T.stamp(T.SYSCALL_ENTER, tid, 3, 0, "read")
        T.stamp(T.RING_PUSH, tid, 1, 7)
        T.stamp(T.EXT2_LOOKUP, tid, 2, 0, "é" * 30)  # 60 bytes: cut at 48
    """, tmp_path)
    _writer("""
        T.identify("Domain-0", 0)
        T.stamp(T.BLKBACK_DISPATCH, 0, 1, 7)
        T.begin(T.BLKBACK_DISPATCH, 0, 1, 7)
        T.end(T.BLKBACK_DISPATCH, 0, 1, 7)
    """, tmp_path)
    tid = int(front.stdout)
    assert len(T.trace_files(str(tmp_path))) == 2
    events = C.load(str(tmp_path))
    assert [e.t_ns for e in events] == sorted(e.t_ns for e in events)
    assert [(e.who, e.name) for e in events] == [
        ("d1", "SYSCALL_ENTER"), ("d1", "RING_PUSH"), ("d1", "EXT2_LOOKUP"),
        ("Domain-0", "BLKBACK_DISPATCH"), ("Domain-0", "BLKBACK_DISPATCH"),
        ("Domain-0", "BLKBACK_DISPATCH")]
    enter, push, lookup, dispatch, begin, end = events
    assert (enter.raw_id, enter.a, enter.s, enter.phase) == (tid, 3, "read", T.BEGIN)
    assert tid >> 32 == enter.pid != dispatch.pid
    assert lookup.s == "é" * 24
    assert (dispatch.domid, dispatch.raw_id, dispatch.trace_id) == (0, 0, tid)  # LINKS
    assert (begin.phase, end.phase) == (T.BEGIN, T.END)


def test_process_named_by_its_title_when_it_never_identifies(tmp_path):
    _writer("""
        from setproctitle import setproctitle
        setproctitle("xenolab[h]: d7 (domid 7, domains.xenolinux.kernel)")
        T.stamp(T.SCHED_IN, 0, 1, 0, "init")
    """, tmp_path)
    _writer("""
        from setproctitle import setproctitle
        setproctitle("xenolab[h]: hypervisor (Xen)")
        T.stamp(T.XEN_PIRQ, 0, 16)
    """, tmp_path)
    procs = {e.proc for e in C.load(str(tmp_path))}
    assert {(p.who, p.domid, p.kind, p.label) for p in procs} == {
        ("d7", 7, "XenoLinux", "d7 (XenoLinux)"), ("xen", None, "", "Xen")}


def test_off_writes_nothing_and_ids_are_zero(tmp_path):
    out = _writer("""
        T.identify("d1", 1)
        T.stamp(T.SYSCALL_ENTER, T.new_id(), 3, 0, "read")
        T.begin(T.BLKBACK_DISPATCH)
        print(T.on, T.new_id())
    """, None, cwd=tmp_path)
    assert out.stdout.split() == ["False", "0"]
    assert os.listdir(tmp_path) == []


def test_a_full_file_keeps_the_newest(tmp_path):
    _writer("""
        T.NR_RECORDS = 8
        for i in range(20):
            T.stamp(T.SCHED_IN, 0, i)
    """, tmp_path)
    assert [e.a for e in C.load(str(tmp_path))] == list(range(12, 20))


def test_records_survive_kill_9_of_their_writer(tmp_path):
    proc = _writer("""
        import os, signal
        T.stamp(T.DEVICE_IRQ, 0, 17)
        os.kill(os.getpid(), signal.SIGKILL)
    """, tmp_path, check=False)
    assert proc.returncode == -9
    assert [(e.name, e.a) for e in C.load(str(tmp_path))] == [("DEVICE_IRQ", 17)]


def test_a_reused_pid_gets_a_file_of_its_own(tmp_path):
    (tmp_path / f"{os.getpid()}.trace").write_bytes(b"old")
    try:
        T.enable(str(tmp_path), "d3", 3)
        T.stamp(T.SCHED_IN, 0, 1)
    finally:
        T.disable()
    assert (tmp_path / f"{os.getpid()}.1.trace").exists()
    assert [e.who for e in C.load(str(tmp_path))] == ["d3"]  # the old file is skipped


# ---- LINKS ------------------------------------------------------------------------------

D1 = C.Proc(100, "d1", 1, "XenoLinux")
D2 = C.Proc(101, "d2", 2, "XenoLinux")
DOM0 = C.Proc(50, "Domain-0", 0, "")
XEN = C.Proc(40, "xen", None, "")
DISK = C.Proc(60, "disk0", None, "disk device")
_seq = itertools.count()


def _event(t, proc, point, raw_id=0, a=0, b=0, s="", phase=None):
    phase = point.phase if phase is None else phase
    return C.Event(t, proc, next(_seq), int(point), phase, raw_id, a, b, s)


def _linked(*events):
    events = sorted(events, key=lambda e: (e.t_ns, e.pid, e.seq))
    C.apply_links(events)
    return events


def test_a_backend_record_takes_the_id_of_the_nearest_earlier_match():
    old = _event(1, D1, T.RING_PUSH, 0xA, a=1, b=7)
    new = _event(2, D1, T.RING_PUSH, 0xB, a=1, b=7)
    other = _event(3, D2, T.RING_PUSH, 0xC, a=2, b=7)
    back = _event(4, DOM0, T.BLKBACK_DISPATCH, 0, a=1, b=7)
    early = _event(0, DOM0, T.BLKBACK_DISPATCH, 0, a=1, b=7)  # before any push
    _linked(old, new, other, back, early)
    assert (back.trace_id, early.trace_id, other.trace_id) == (0xB, 0, 0xC)


def test_a_local_id_becomes_an_alias_and_the_chain_goes_on():
    push = _event(1, D1, T.RING_PUSH, 0xA, a=1, b=7)
    dispatch = _event(2, DOM0, T.BLKBACK_DISPATCH, 0x50, a=1, b=7)
    doorbell = _event(3, DOM0, T.DRIVER_DOORBELL, 0x50, a=16, b=3)
    kick = _event(4, DISK, T.DEVICE_KICK, 0x60, a=16, b=3)
    dma = _event(5, DISK, T.DEVICE_DMA, 0x60, a=16, b=3)
    irq = _event(6, DISK, T.DEVICE_IRQ, 0x60, a=16)
    pirq = _event(7, XEN, T.XEN_PIRQ, 0, a=16)
    handled = _event(8, DOM0, T.DRIVER_IRQ, 0, a=16)
    response = _event(9, DOM0, T.BLKBACK_RESPONSE, 0x50, a=1, b=7)
    complete = _event(10, D1, T.BLKFRONT_RESPONSE, 0, a=0, b=7)
    unrelated = _event(11, DOM0, T.BLKBACK_RESPONSE, 0x51, a=2, b=7)
    events = _linked(push, dispatch, doorbell, kick, dma, irq, pirq, handled, response,
                     complete, unrelated)
    assert {e.trace_id for e in events[:-1]} == {0xA}
    assert unrelated.trace_id == 0x51


def test_a_local_id_joins_only_its_first_upstream():
    a = _event(1, D1, T.EVTCHN_SEND, 0xA, a=5)
    b = _event(2, D2, T.EVTCHN_SEND, 0xB, a=5)
    xa = _event(3, XEN, T.XEN_EVTCHN_SEND, 0x77, a=1, b=5)
    xb = _event(4, XEN, T.XEN_EVTCHN_SEND, 0x77, a=2, b=5)  # the same local id: first wins
    pending = _event(5, XEN, T.XEN_EVTCHN_PENDING, 0x77, a=2, b=3)
    upcall = _event(6, D2, T.EVTCHN_UPCALL, 0, a=3)
    _linked(a, b, xa, xb, pending, upcall)
    assert (xa.trace_id, xb.trace_id, pending.trace_id, upcall.trace_id) == (0xA,) * 4
    assert b.trace_id == 0xB


# ---- Chrome JSON ------------------------------------------------------------------------

def _scenario():
    """Two guest processes whose syscalls overlap without nesting, one I/O
    through Dom0 and the disk, an END without BEGIN and a BEGIN never ended."""
    T1, T2 = 0x10, 0x20
    return _linked(
        _event(1_000, D1, T.SYSCALL_ENTER, T1, a=3, s="read"),
        _event(2_000, D1, T.PROC_BLOCK, T1, a=3, s="read"),
        _event(3_000, D1, T.SYSCALL_ENTER, T2, a=4, s="write"),
        _event(3_500, D1, T.MMU_UPDATE, T2, a=3),
        _event(3_600, XEN, T.XEN_MMU_UPDATE, 0, a=1, b=3),
        _event(4_000, D1, T.RING_PUSH, T1, a=1, b=7),
        _event(5_000, D1, T.EVTCHN_SEND, T1, a=5),
        _event(6_000, XEN, T.XEN_EVTCHN_SEND, 0, a=1, b=5),
        _event(7_000, DOM0, T.BLKBACK_DISPATCH, 0x50, a=1, b=7),
        _event(8_000, DOM0, T.DRIVER_DOORBELL, 0x50, a=16, b=1),
        _event(9_000, DISK, T.DEVICE_KICK, 0, a=16, b=1),
        _event(10_000, DISK, T.DEVICE_IRQ, 0, a=16),
        _event(10_500, D1, T.SYSCALL_EXIT, T1, a=3, b=512, s="read"),  # 3 ends before 4
        _event(11_000, DOM0, T.BLKBACK_RESPONSE, 0x50, a=1, b=7),
        _event(11_500, D1, T.PROC_WAKE, T1, a=3, s="cat"),
        _event(12_000, D1, T.SYSCALL_EXIT, T2, a=4, b=5, s="write"),
        _event(13_000, D2, T.SYSCALL_EXIT, 0, a=9, s="open"),  # no BEGIN
        _event(14_000, D2, T.KERNEL_BLOCK, 0),  # never ends
        _event(15_000, D2, T.SCHED_IN, 0, a=1, s="init"),
    )


def _intervals_nest(slices: list[tuple[float, float]]) -> bool:
    stack: list[float] = []
    for start, end in sorted(slices, key=lambda s: (s[0], -s[1])):
        while stack and stack[-1] <= start and not (stack[-1] == start == end):
            stack.pop()
        if stack and end > stack[-1]:
            return False
        stack.append(end)
    return True


def check_chrome(doc: dict) -> None:
    """What Perfetto and chrome://tracing need of a trace (shared with the
    integration test)."""
    events = json.loads(json.dumps(doc))["traceEvents"]
    assert events
    for ev in events:
        assert {"ph", "ts", "pid", "tid"} <= ev.keys(), ev
    meta = [e for e in events if e["ph"] == "M"]
    names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]) for e in meta if e["name"] == "thread_name"}
    work = [e for e in events if e["ph"] != "M"]
    assert {e["pid"] for e in work} <= names.keys()
    assert {(e["pid"], e["tid"]) for e in work} <= threads
    slices = defaultdict(list)
    open_b = defaultdict(list)
    for e in work:
        key = (e["pid"], e["tid"])
        if e["ph"] == "X":
            assert e["dur"] >= 0
            slices[key].append((e["ts"], e["ts"] + e["dur"]))
        elif e["ph"] == "i":
            assert e["s"] == "t"
            slices[key].append((e["ts"], e["ts"]))
        elif e["ph"] == "B":
            open_b[key].append(e["ts"])
        elif e["ph"] == "E":
            assert open_b[key], f"E without B on {key}"
            slices[key].append((open_b[key].pop(), e["ts"]))
    assert all(not v for v in open_b.values())
    for key, ss in slices.items():
        assert _intervals_nest(ss), f"slices do not nest on {key}"
    started = set()
    for e in sorted((e for e in work if e["ph"] in "stf"), key=lambda e: e["ts"]):
        assert e["bp"] == "e" and e["cat"] and e["name"]
        if e["ph"] == "s":
            assert e["id"] not in started
            started.add(e["id"])
        else:
            assert e["id"] in started, f"flow {e['ph']} without a start: {e['id']}"
            if e["ph"] == "f":
                started.discard(e["id"])
    assert not started, "flows without an end"


def test_chrome_json_is_well_formed():
    events = _scenario()
    doc = C.chrome_json(events)
    check_chrome(doc)
    evs = doc["traceEvents"]
    names = {e["args"]["name"] for e in evs if e["name"] == "process_name"}
    assert names == {"Xen", "Domain-0", "d1 (XenoLinux)", "d2 (XenoLinux)", "disk0 (disk device)"}
    threads = {e["args"]["name"] for e in evs if e["name"] == "thread_name"}
    assert {"syscall", "syscall #2", "sched", "blkback", "xen.evtchn", "disk-device"} <= threads
    assert min(e["ts"] for e in evs if e["ph"] != "M") == 0
    syscalls = {e["args"]["s"]: e for e in evs if e["ph"] == "X" and e["cat"] == "syscall"}
    assert syscalls["read"]["dur"] == 9.5 and syscalls["write"]["dur"] == 9.0
    assert syscalls["read"]["tid"] != syscalls["write"]["tid"]  # they overlap: two lanes
    orphan = [e for e in evs if e.get("args", {}).get("s") == "open"]
    assert [e["ph"] for e in orphan] == ["i"]
    [blocked] = [e for e in evs if e["name"] == "kernel_block"]
    assert blocked["ph"] == "X" and blocked["args"]["unfinished"] and blocked["dur"] == 1.0
    flows = {e["id"] for e in evs if e["ph"] in "stf"}
    assert flows == {"0x10", "0x20"}
    pids = {e["pid"] for e in evs if e.get("args", {}).get("trace_id") == "0x10"}
    assert len(pids) == 4  # d1 → Xen → Domain-0 → disk0


def test_write_chrome(tmp_path):
    path = tmp_path / "t.json"
    C.write_chrome(_scenario(), str(path))
    check_chrome(json.loads(path.read_text()))


def test_no_events_is_an_empty_trace():
    assert C.chrome_json([])["traceEvents"] == []


# ---- the numbered sequence --------------------------------------------------------------

def test_sequence_numbers_every_record_and_marks_block_and_resume():
    events = _scenario()
    lines = C.sequence(events)
    assert len(lines) == len(events)
    assert [int(line.split(".", 1)[0]) for line in lines] == list(range(1, len(events) + 1))
    assert lines[0] == "1. d1/XenoLinux: process 3 calls read()"
    assert "2. ⏸ d1/XenoLinux: process 3 blocks in read()" in lines
    assert "4. d1/XenoLinux → Xen: mmu_update (3 entries)" in lines
    assert "5. Xen: validates 3 page-table entries of d1/XenoLinux" in lines
    assert any(line.startswith("15. ▶ d1/XenoLinux: process 3 (cat) resumes") for line in lines)


def test_sequence_of_one_trace():
    lines = C.sequence(_scenario(), trace_ids=[0x20])
    assert lines == ["1. d1/XenoLinux: process 4 calls write()",
                     "2. d1/XenoLinux → Xen: mmu_update (3 entries)",
                     "3. Xen: validates 3 page-table entries of d1/XenoLinux",
                     "4. d1/XenoLinux: write() returns 5 to process 4"]


@pytest.mark.parametrize("phase,suffix", [(T.BEGIN, ""), (T.END, " (done)")])
def test_explicit_end_of_a_span(phase, suffix):
    e = _event(1, DOM0, T.BLKBACK_DISPATCH, 0, a=1, b=7, phase=phase)
    assert C.describe(e, {1: "d1"}) == f"Domain-0: blkback takes request 7 of d1{suffix}"
