"""The trace collector: every process's records → one story, two renderings.

Rules:
1. A host booted with `xenolab up --trace` records into <run dir>/trace
   (`folder(host)`), one file per process (hypervisor.public.trace). The run
   directory outlives `xenolab down` (only pids.json goes) and is replaced at
   the next boot of the same host: a trace is of one boot, readable while the
   host runs and after it is down.
2. `load(folder)` merges the files oldest first (t_ns, then the writer's own
   order) and applies LINKS, which give a trace id to records that could not
   carry one (see LINKS).
3. `chrome_json` is the Chrome trace-event format (Perfetto,
   chrome://tracing): one process per domain, plus Xen and each device; one
   thread per component (a second "lane" of a component when its slices
   overlap without nesting, as a guest's processes' syscalls do); BEGIN/END
   pairs become complete "X" slices, every other record an instant "i"
   (scope "t"); flow arrows ("s"/"t"/"f", bp "e") join the records of one
   trace id where it passes from one thread to another. Slices always nest
   per thread: an END without its BEGIN becomes an instant; a BEGIN never
   closed ends at its process's last record (args.unfinished).
4. `sequence` numbers the records as sentences, from each Point's template.
"""

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

from hypervisor.public import trace as T
from launcher import rundir

TRACE_DIR = "trace"
FLOW_CAT, FLOW_NAME = "flow", "request"
_TITLE = re.compile(r"^xenolab\[[^\]]*\]: (.*)$")
_TITLE_DOMAIN = re.compile(r"^(\S+) \(domid (\d+), ([\w.]+)\)$")
_TITLE_DEVICE = re.compile(r"^(\S+) \((.+ device)\)$")
KERNEL_KINDS = {"domains.xenolinux.kernel": "XenoLinux", "domains.dom0.kernel": ""}


@dataclass(frozen=True)
class Link:
    """A record at `dst` belongs to the request of the nearest earlier record
    at `src` whose `src_key` fields equal its `dst_key` fields. Key fields are
    Event attributes: a, b, s, or the writer's domid/pid/who."""

    src: T.Point
    dst: T.Point
    src_key: tuple[str, ...]
    dst_key: tuple[str, ...]


# The join rules (rule 2). Applied in time order: the dst record with trace id
# 0 takes the src record's id; a dst record with an id of its own (a local id
# the receiving process keeps on its later records) makes that id an alias of
# the src's, the first link of a local id winning. A src record without an id
# links nothing. To join a new hop, add a line.
LINKS: tuple[Link, ...] = (
    # blkfront pushes (a = its domid, b = request id); blkback pulls (a = frontend, b = id)
    Link(T.RING_PUSH, T.BLKBACK_DISPATCH, ("a", "b"), ("a", "b")),
    # blkback answers (a = frontend, b = id); the frontend completes request b
    Link(T.BLKBACK_RESPONSE, T.BLKFRONT_RESPONSE, ("a", "b"), ("domid", "b")),
    # a guest's EVTCHNOP_send on port a; Xen takes it from domain a, port b
    Link(T.EVTCHN_SEND, T.XEN_EVTCHN_SEND, ("domid", "a"), ("a", "b")),
    # Xen marks port b of domain a pending; that domain's upcall finds port a
    Link(T.XEN_EVTCHN_PENDING, T.EVTCHN_UPCALL, ("a", "b"), ("domid", "a")),
    # a batch of a page-table updates; Xen validates b entries of domain a
    Link(T.MMU_UPDATE, T.XEN_MMU_UPDATE, ("domid", "a"), ("a", "b")),
    Link(T.MMUEXT_OP, T.XEN_MMUEXT_OP, ("domid", "s"), ("a", "s")),
    # Dom0's driver rings the device on IRQ a with tag b; the device takes it
    Link(T.DRIVER_DOORBELL, T.DEVICE_KICK, ("a", "b"), ("a", "b")),
    # the device raises IRQ a; Xen routes it; Dom0's driver handles it
    Link(T.DEVICE_IRQ, T.XEN_PIRQ, ("a",), ("a",)),
    Link(T.XEN_PIRQ, T.DRIVER_IRQ, ("a",), ("a",)),
)


@dataclass(frozen=True)
class Proc:
    """Who wrote a file: its header, or its process title when it never
    called identify()."""

    pid: int
    who: str
    domid: int | None
    kind: str

    @property
    def is_xen(self) -> bool:
        return self.who.lower() in ("xen", "hypervisor")

    @property
    def is_device(self) -> bool:
        return self.domid is None and not self.is_xen

    @property
    def label(self) -> str:
        """The Chrome process name: "Xen", "Domain-0", "d1 (XenoLinux)"."""
        if self.is_xen:
            return "Xen"
        if self.domid == 0:
            return "Domain-0"
        return f"{self.who} ({self.kind})" if self.kind else self.who

    @property
    def actor(self) -> str:
        """Who acts in a sentence: "Xen", "Domain-0", "d1/XenoLinux", "disk0"."""
        if self.is_xen or self.domid == 0:
            return self.label
        if self.domid is not None and self.kind:
            return f"{self.who}/{self.kind}"
        return self.who


@dataclass(slots=True)
class Event:
    t_ns: int
    proc: Proc
    seq: int
    point: int
    phase: int
    raw_id: int  # as stamped
    a: int
    b: int
    s: str
    trace_id: int = 0  # after LINKS
    linked: int = field(default=0, repr=False)

    @property
    def domid(self) -> int | None:
        return self.proc.domid

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def who(self) -> str:
        return self.proc.who

    @property
    def name(self) -> str:
        return _point(self.point).name if _point(self.point) else f"POINT_{self.point}"

    @property
    def component(self) -> str:
        p = _point(self.point)
        return p.component if p else "other"


def folder(host: str) -> str:
    """Where a host's processes write their records (rule 1)."""
    return os.path.join(rundir.path(host), TRACE_DIR)


def _point(n: int) -> T.Point | None:
    try:
        return T.Point(n)
    except ValueError:
        return None


# ---- loading ---------------------------------------------------------------------------

def proc_of(header: dict) -> Proc:
    """A file's writer, named by identify() or else by its process title."""
    who, domid, kind = header["who"], header["domid"], header["kind"]
    if not who:
        who, domid, kind = _from_title(header["title"], header["pid"])
    return Proc(header["pid"], who, domid, kind)


def _from_title(title: str, pid: int) -> tuple[str, int | None, str]:
    m = _TITLE.match(title)
    rest = m.group(1) if m else ""
    if rest.startswith("hypervisor"):
        return "xen", None, ""
    if d := _TITLE_DOMAIN.match(rest):
        module = d.group(3)
        kind = KERNEL_KINDS.get(module, module.rsplit(".", 1)[-1])
        return d.group(1), int(d.group(2)), kind
    if d := _TITLE_DEVICE.match(rest):
        return d.group(1), None, d.group(2)
    return (rest.split(" ", 1)[0] or f"pid {pid}"), None, ""


def load(trace_folder: str) -> list[Event]:
    """Every record of every process under the folder, oldest first, with
    LINKS applied (rule 2). A file that is not a trace is skipped."""
    events = []
    for path in T.trace_files(trace_folder):
        try:
            header, records = T.read(path)
        except (OSError, ValueError):
            continue
        proc = proc_of(header)
        for seq, t, point, phase, tid, a, b, s in records:
            events.append(Event(t, proc, seq, point, phase, tid, a, b, s))
    events.sort(key=lambda e: (e.t_ns, e.proc.pid, e.seq))
    apply_links(events)
    return events


def apply_links(events: list[Event], links: tuple[Link, ...] = LINKS) -> None:
    """Set each event's trace_id (rule 2); `events` are in time order."""
    alias: dict[int, int] = {}

    def root(tid: int) -> int:
        while tid in alias:
            tid = alias[tid]
        return tid

    by_src = defaultdict(list)
    by_dst = defaultdict(list)
    for link in links:
        by_src[int(link.src)].append(link)
        by_dst[int(link.dst)].append(link)
    latest: dict[tuple, Event] = {}  # (link, key) -> the latest src record so far
    for e in events:
        for link in by_dst.get(e.point, ()):
            src = latest.get((link, _key(e, link.dst_key)))
            upstream = (src.linked or root(src.raw_id)) if src is not None else 0
            if not upstream:
                continue
            if e.raw_id == 0:
                e.linked = e.linked or upstream
            elif e.raw_id not in alias and root(upstream) != e.raw_id:
                alias[e.raw_id] = upstream
        for link in by_src.get(e.point, ()):
            latest[(link, _key(e, link.src_key))] = e
    for e in events:
        e.trace_id = root(e.linked or e.raw_id)


def _key(e: Event, fields: tuple[str, ...]) -> tuple:
    return tuple(getattr(e, f) for f in fields)


# ---- the numbered sequence ----------------------------------------------------------------

def sequence(events: list[Event], trace_ids=None) -> list[str]:
    """Numbered sentences, one per record (of the given trace ids, if any)."""
    wanted = None if trace_ids is None else set(trace_ids)
    doms = _domain_names(events)
    lines = []
    for e in events:
        if wanted is not None and e.trace_id not in wanted:
            continue
        lines.append(f"{len(lines) + 1}. {describe(e, doms)}")
    return lines


def describe(e: Event, doms: dict[int, str] | None = None) -> str:
    """One record as a sentence, from its point's template."""
    p = _point(e.point)
    doms = doms or {}
    fields = {"who": e.proc.actor, "a": e.a, "b": e.b, "sa": _signed(e.a), "sb": _signed(e.b),
              "s": e.s, "id": f"{e.trace_id:#x}", "adom": doms.get(e.a, f"domain {e.a}"),
              "bdom": doms.get(e.b, f"domain {e.b}")}
    try:
        text = p.text.format(**fields).rstrip() if p else ""
    except (KeyError, IndexError, ValueError):
        text = ""
    if not text:
        text = f"{e.proc.actor}: {e.name} a={e.a} b={e.b} {e.s}".rstrip()
    if p is not None and e.phase == T.END and p.phase != T.END:
        text += " (done)"
    return text


def _signed(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _domain_names(events: list[Event]) -> dict[int, str]:
    names = {}
    for e in events:
        if e.proc.domid is not None and e.proc.domid not in names:
            names[e.proc.domid] = e.proc.actor
    return names


# ---- Chrome trace-event JSON --------------------------------------------------------------

def chrome_json(events: list[Event]) -> dict:
    """The Chrome trace-event format (rule 3), as a JSON-ready dict."""
    if not events:
        return {"traceEvents": [], "displayTimeUnit": "ns"}
    t0 = events[0].t_ns
    pids = _chrome_pids(events)
    pairs = _pair_slices(events)
    lanes = _lay_out(events, pairs)
    tids: dict[tuple[str, str, int], int] = {}
    for key in sorted(set(lanes), key=lambda k: (pids[k[0]], _component_rank(k[1]), k[2])):
        tids[key] = 10_000 + len(tids)  # apart from the pids: to Perfetto they are one space
    tid_of = [tids[lane] for lane in lanes]
    flows = _flows(events, tid_of, pids, t0)
    doms = _domain_names(events)
    out = []
    for i, e in enumerate(events):
        ev = _instant(e, t0, pids[e.proc.who], tid_of[i], doms)
        if i in pairs.ends:
            end_ns, unfinished = pairs.ends[i]
            del ev["s"]
            ev.update(ph="X", dur=_us(end_ns - e.t_ns))
            if unfinished:
                ev["args"]["unfinished"] = True
        out.append(ev)
        out.extend(flows.get(i, ()))  # after its anchor: a flow binds to the newest slice
    return {"traceEvents": _metadata(events, pids, tids) + out, "displayTimeUnit": "ns",
            "otherData": {"generator": "xenolab trace", "clock": "CLOCK_MONOTONIC",
                          "t0_ns": t0}}


def write_chrome(events: list[Event], path: str) -> None:
    with open(path, "w") as f:
        json.dump(chrome_json(events), f, separators=(",", ":"))


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def _slice_name(e: Event) -> str:
    name = e.name.lower()
    for suffix in ("_enter", "_exit", "_begin", "_end"):
        name = name.removesuffix(suffix)
    return f"{name}: {e.s}" if e.s else name


def _instant(e: Event, t0: int, pid: int, tid: int, doms: dict[int, str]) -> dict:
    args: dict = {"what": describe(e, doms), "a": e.a, "b": e.b}
    if e.s:
        args["s"] = e.s
    if e.trace_id:
        args["trace_id"] = f"{e.trace_id:#x}"
    name = e.name.lower() if e.phase == T.END else _slice_name(e)
    return {"name": name, "cat": e.component, "ph": "i", "s": "t", "ts": _us(e.t_ns - t0),
            "pid": pid, "tid": tid, "args": args}


def _chrome_pids(events: list[Event]) -> dict[str, int]:
    """One Chrome process per `who`: Xen, then domains by domid, then the rest."""
    order: dict[str, tuple] = {}
    for e in events:
        p = e.proc
        rank = (0, 0) if p.is_xen else (1, p.domid) if p.domid is not None else (2, 0)
        order.setdefault(p.who, (*rank, p.who))
    return {who: n for n, who in enumerate(sorted(order, key=order.__getitem__), start=1)}


def _component_rank(name: str) -> tuple:
    comps = list(dict.fromkeys(p.component for p in T.Point))
    return (comps.index(name) if name in comps else len(comps), name)


@dataclass
class _Pairs:
    ends: dict[int, tuple[int, bool]]  # BEGIN index -> (end t_ns, unfinished)
    closes: dict[int, int]  # END index -> its BEGIN index


def _pair_slices(events: list[Event]) -> _Pairs:
    """Match each END with the latest open BEGIN of its opener and `a` in its
    process; a BEGIN left open ends at its process's last record (rule 3)."""
    pairs = _Pairs({}, {})
    open_: dict[tuple, list[int]] = defaultdict(list)
    last: dict[Proc, int] = {}
    for i, e in enumerate(events):
        last[e.proc] = e.t_ns
        if e.phase == T.BEGIN:
            open_[(e.proc, e.point, e.a)].append(i)
        elif e.phase == T.END:
            p = _point(e.point)
            opener = int(T.Point[p.opens]) if p is not None and p.opens else e.point
            stack = open_.get((e.proc, opener, e.a))
            if stack:
                b = stack.pop()
                pairs.ends[b], pairs.closes[i] = (e.t_ns, False), b
    for (proc, _, _), stack in open_.items():
        for b in stack:
            pairs.ends[b] = (last[proc], True)
    return pairs


def _lay_out(events: list[Event], pairs: _Pairs) -> list[tuple[str, str, int]]:
    """Each record's thread (who, component, lane). A slice goes in the first
    lane of its component where it nests; an END sits in its slice's lane; an
    instant (an orphan END too) is zero-long, nests anywhere: lane 0."""
    lanes: dict[tuple[str, str], list[list[int]]] = defaultdict(list)  # open slices' ends
    out: list[tuple[str, str, int]] = []
    for i, e in enumerate(events):
        thread = (e.proc.who, e.component)
        n = 0
        if i in pairs.ends:
            end = pairs.ends[i][0]
            stacks = lanes[thread]
            for n, stack in enumerate(stacks):  # noqa: B007 - n is the lane found
                while stack and stack[-1] <= e.t_ns:
                    stack.pop()  # ended: as Perfetto closes a slice when the next begins
                if not stack or end <= stack[-1]:
                    break
            else:
                n = len(stacks)
                stacks.append([])
            stacks[n].append(end)
        elif i in pairs.closes:
            n = out[pairs.closes[i]][2]
        out.append((*thread, n))
    return out


def _flows(events: list[Event], tid_of: list[int], pids: dict[str, int], t0: int):
    """Flow events by anchor record: where a trace passes from one thread to
    another, an arrow from its last record there to its first one here."""
    chains: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(events):
        if e.trace_id:
            chains[e.trace_id].append(i)
    flows: dict[int, list[dict]] = defaultdict(list)
    for trace_id, idx in chains.items():
        anchors: list[int] = []
        for prev, cur in zip(idx, idx[1:], strict=False):
            if tid_of[prev] != tid_of[cur]:
                if not anchors or anchors[-1] != prev:
                    anchors.append(prev)
                anchors.append(cur)
        for n, i in enumerate(anchors):
            e = events[i]
            ph = "s" if n == 0 else "f" if n == len(anchors) - 1 else "t"
            flows[i].append({"name": FLOW_NAME, "cat": FLOW_CAT, "ph": ph, "bp": "e",
                             "id": f"{trace_id:#x}", "ts": _us(e.t_ns - t0),
                             "pid": pids[e.proc.who], "tid": tid_of[i]})
    return flows


def _metadata(events: list[Event], pids: dict[str, int], tids: dict[tuple, int]) -> list[dict]:
    procs = {e.proc.who: e.proc for e in events}
    out = []
    for who, pid in pids.items():
        for meta, value in (("process_name", {"name": procs[who].label}),
                            ("process_sort_index", {"sort_index": pid})):
            out.append({"name": meta, "ph": "M", "pid": pid, "tid": pid, "ts": 0, "args": value})
    for (who, comp, lane), tid in tids.items():
        name = comp if lane == 0 else f"{comp} #{lane + 1}"
        for meta, value in (("thread_name", {"name": name}),
                            ("thread_sort_index", {"sort_index": tid})):
            out.append({"name": meta, "ph": "M", "pid": pids[who], "tid": tid, "ts": 0,
                        "args": value})
    return out
