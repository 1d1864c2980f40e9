"""The report of a fault experiment: per fault, totals, verdict; table, JSON, plot.

Rules:
1. Every figure comes from what the writers printed (guest CLOCK_MONOTONIC
   stamps, launcher.fault_records) and the times the runner applied faults
   (the host's monotonic clock, the same clock): nothing is estimated.
2. Recovery time of a fault: from the fault to the first acknowledged batch
   after it, of every writer it affects (its domain's, its disk's, or all
   for Domain-0, Xen and rogue frontends). Max stall: the longest time
   without an acknowledgement of such a writer that overlaps the fault's
   window (the fault to the next fault or the end); open if none came.
3. Outcomes: "recovered" (I/O resumed in the running host), "host-reboot"
   (it resumed only after the host went down and was booted again),
   "not-recovered", "not-applied". The report says whether each matches the
   scenario's `expect`; a recovery the host does not have is reported as
   such, with the stall it measured, never hidden.
4. A record acknowledged and then not found intact is lost: when a restarted
   writer resumed below it, in the guest's read, or in the image. The number
   must be 0.
"""

from launcher.fault_records import count, show, union

OK_FOR = {"recovery": ("recovered",), "host-reboot": ("host-reboot",),
          "no-recovery": ("not-recovered", "host-reboot")}


def _s(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9, 3)


def build_report(run, guest: dict, images: dict, fsck: dict, leaks: list[str]) -> dict:
    times = [a.t_ns for a in run.applied if a.t_ns]
    faults = []
    for a in run.applied:
        later = [t for t in times if a.t_ns and t > a.t_ns]
        faults.append(_fault_row(run, a, min(later) if later else run.end_ns))
    writers, lost_total = [], 0
    for key, log in run.logs.items():
        row, lost = _writer_row(log, guest.get(key, {}), images.get(key, {}))
        writers.append(row)
        lost_total += lost
    totals = _totals(run, writers, lost_total)
    fsck_status = "clean" if fsck and all(r["clean"] for r in fsck.values()) else (
        "errors" if fsck else "not checked")
    crashes = [{"time_s": _s(c.t_ns - run.t0) if run.t0 else None, "exit_code": c.code,
                "reboot_s": None if c.reboot_s is None else round(c.reboot_s, 2),
                "leaks": c.leaks} for c in run.crashes]
    report = {
        "scenario": run.sc.name, "description": run.sc.description, "seed": run.seed,
        "host": run.name, "expect": run.sc.expect, "fsck_promise": run.sc.fsck,
        "duration_s": _s(run.end_ns - run.t0) if run.t0 else 0.0,
        "faults": faults, "totals": totals, "writers": writers, "fsck": dict(fsck),
        "loads": [x.statistics() for x in getattr(run, "loads", [])],
        "fsck_status": fsck_status, "host_crashes": crashes,
        "leaks": leaks + [x for c in run.crashes for x in c.leaks],
    }
    report["verdict"] = _verdict(report, run)
    return report


def _fault_row(run, a, window_end: int) -> dict:
    f = a.fault
    row = {"index": f.index, "time_s": _s(a.t_ns - run.t0) if a.t_ns else None,
           "target": f.target, "action": f.action, "fault": f.label(), "expect": f.expect,
           "recovery_s": None, "after_end_s": None, "max_stall_s": None, "stall_open": False,
           "result": a.result, "error": a.error, "note": ""}
    if a.t_ns is None or a.error.startswith("not applied"):
        row.update(outcome="not-applied", as_expected=False, note=a.error)
        return row
    acks = {k: sorted(run.logs[k].times("ack")) for k in a.affected}
    firsts = [next((t for t in ts if t > a.t_ns), None) for ts in acks.values()]
    rec = max(firsts) if firsts and None not in firsts else None
    crash = next((c for c in run.crashes if a.t_ns <= c.t_ns <= (rec or run.end_ns)), None)
    if rec is None:
        outcome = "not-recovered"
    else:
        outcome = "host-reboot" if crash is not None else "recovered"
    stall, open_ = _max_stall(acks.values(), a.t_ns, window_end)
    row.update(outcome=outcome, as_expected=outcome in OK_FOR[f.expect],
               recovery_s=_s(rec - a.t_ns) if rec else None,
               after_end_s=_s(rec - a.clear_ns) if rec and a.clear_ns and rec > a.clear_ns
               else None,
               max_stall_s=_s(stall), stall_open=open_, note=_note(a, rec, crash, stall, open_))
    return row


def _note(a, rec, crash, stall, open_) -> str:
    if crash is not None:
        went = f"the host went down {(crash.t_ns - a.t_ns) / 1e9:.2f} s after the fault " \
               f"(hypervisor exited {crash.code})"
        if crash.reboot_s is None:
            return f"host did not recover: {went}; no acknowledgement since"
        return f"{went}; booted again in {crash.reboot_s:.2f} s"
    if rec is None:
        return f"host did not recover: no acknowledgement for {stall / 1e9:.2f} s, to the end"
    return ""


def _max_stall(ack_lists, t: int, end: int) -> tuple[int, bool]:
    """Longest ack gap overlapping [t, end] over the writers; open if one never acked."""
    worst, open_ = 0, False
    for times in ack_lists:
        before = [x for x in times if x <= t]
        pts = [before[-1] if before else t] + [x for x in times if t < x <= end]
        gaps = [b - a for a, b in zip(pts, pts[1:], strict=False)]
        if len(pts) == 1:
            gaps.append(max(0, end - pts[0]))
            open_ = True
        worst = max([worst, *gaps])
    return worst, open_


def _writer_row(log, guest: dict, image: dict) -> tuple[dict, int]:
    lost = list(log.lost_on_restart)
    row = {"domain": log.dom, "path": log.path, **log.statistics(),
           "acked_ranges": show(log.acked), "lost_on_restart": show(log.lost_on_restart)}
    for where, got in (("guest_read", guest), ("image", image)):
        s = got.get("scan")
        if s is not None:
            missing = s.missing(log.acked)
            lost = union(lost, missing)
            row[where] = {"records": s.records, "intact": s.intact, "bad": show(s.bad),
                          "tail_bytes": s.tail, "acked_missing": count(missing)}
        else:
            row[where] = {"error": got.get("error", "not read")}
            if where == "image":  # the image is the ground truth: unreadable means lost
                lost = union(lost, log.acked)
    row["acked_lost"] = count(lost)
    return row, count(lost)


def _totals(run, writers: list[dict], lost: int) -> dict:
    keys = ("batches_issued", "batches_acked", "batches_failed", "batches_unanswered",
            "records_issued", "records_acked")
    totals = {k: sum(w[k] for w in writers) for k in keys}
    gaps = []
    for log in run.logs.values():
        ts = sorted(log.times("ack"))
        gaps += [b - a for a, b in zip(ts, ts[1:], strict=False)]
    totals["acked_records_lost"] = lost
    totals["max_stall_s"] = _s(max(gaps)) if gaps else None
    loads = [x.statistics() for x in getattr(run, "loads", [])]
    totals["load_ops"] = sum(x["ops"] for x in loads)
    totals["load_failed"] = sum(x["failed"] for x in loads)
    return totals


def _verdict(r: dict, run) -> dict:
    problems = []
    t = r["totals"]
    if t["acked_records_lost"]:
        problems.append(f"{t['acked_records_lost']} acknowledged records lost")
    if t["batches_acked"] > t["batches_issued"] or t["records_acked"] > t["records_issued"]:
        problems.append("more acknowledged than issued")
    if r["leaks"]:
        problems.append(f"left behind: {', '.join(r['leaks'][:5])}")
    if run.sc.fsck == "clean" and r["fsck_status"] != "clean":
        problems.append(f"e2fsck -fn: {r['fsck_status']}")
    for f in r["faults"]:
        if not f["as_expected"]:
            problems.append(f"fault {f['index']} ({f['fault']} on {f['target']}): "
                            f"{f['outcome']}, expected {f['expect']}")
    for w in r["writers"]:
        err = w["guest_read"].get("error", "")
        if err and not err.startswith(("the host is down", "skipped")):
            problems.append(f"{w['domain']} {w['path']}: guest read failed: {err}")
    return {"ok": not problems, "problems": problems}


# ---- output ----------------------------------------------------------------------------

def print_report(r: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:
        console = Console(width=150)
    table = Table(title=f"Faults: {r['scenario']} (seed {r['seed']})")
    for col in ("#", "t (s)", "target", "fault", "expect", "outcome", "recovery (s)",
                "max stall (s)", "note"):
        table.add_column(col, justify="right" if "(s)" in col or col == "#" else "left")
    for f in r["faults"]:
        stall = _fmt(f["max_stall_s"]) + ("+" if f["stall_open"] else "")
        outcome = f["outcome"] if f["as_expected"] else f"[bold red]{f['outcome']}[/]"
        table.add_row(str(f["index"]), _fmt(f["time_s"]), f["target"], f["fault"],
                      f["expect"], outcome, _fmt(f["recovery_s"]), stall,
                      f["note"] or f["result"])
    console.print(table)
    t = r["totals"]
    totals = Table(title="Totals")
    for col in ("", "issued", "acknowledged", "failed", "unanswered"):
        totals.add_column(col, justify="right")
    totals.add_row("batches", str(t["batches_issued"]), str(t["batches_acked"]),
                   str(t["batches_failed"]), str(t["batches_unanswered"]))
    totals.add_row("records", str(t["records_issued"]), str(t["records_acked"]), "", "")
    for x in r.get("loads", []):
        totals.add_row(f"blkload {x['domain']}:{x['path']} ops", "", str(x["ops"]),
                       str(x["failed"]), "")
    console.print(totals)
    lost = t["acked_records_lost"]
    console.print(f"acknowledged records lost: {'[green]0[/]' if not lost else f'[red]{lost}[/]'}"
                  f"   max stall: {_fmt(t['max_stall_s'])} s   e2fsck -fn: {r['fsck_status']}"
                  f"   leaks: {len(r['leaks']) or 'none'}   host crashes: {len(r['host_crashes'])}")
    for w in r["writers"]:
        g, i = w["guest_read"], w["image"]
        console.print(f"  {w['domain']} {w['path']}: acked {w['acked_ranges']}; guest read "
                      f"{_read(g)}; image {_read(i)}")
    v = r["verdict"]
    if v["ok"]:
        console.print("[bold green]PASS[/]: every acknowledged record is intact, as expected")
    else:
        console.print("[bold red]FAIL[/]: " + "; ".join(v["problems"]))


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _read(got: dict) -> str:
    if "error" in got:
        return got["error"]
    return f"{got['intact']}/{got['records']} intact, bad {got['bad']}, " \
           f"{got['acked_missing']} acked missing"


def plot(run, r: dict, path: str) -> None:
    """Throughput (acknowledged records/s) and batch latency (write to ack)
    over time, the faults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, low) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    t0, bin_s = run.t0, 0.25
    for (dom, path_), log in run.logs.items():
        acks = [e for e in log.events if e.kind == "ack"]
        starts = {}
        lat = []
        for e in log.events:
            if e.kind == "start":
                starts.clear()
            elif e.kind == "w":
                starts[e.batch] = (e.t_ns, e.last - e.first + 1)
            elif e.kind == "ack" and e.batch in starts:
                lat.append(((e.t_ns - t0) / 1e9, (e.t_ns - starts[e.batch][0]) / 1e6,
                            starts[e.batch][1]))
        bins: dict[int, int] = {}
        for x, _, n in lat:
            bins[int(x // bin_s)] = bins.get(int(x // bin_s), 0) + n
        if acks:
            lo, hi = int(min(bins or [0])), int(max(bins or [0]))
            xs = [i * bin_s for i in range(lo, hi + 1)]
            top.step(xs, [bins.get(i, 0) / bin_s for i in range(lo, hi + 1)], where="post",
                     label=f"{dom} {path_}")
        low.scatter([x for x, _, _ in lat], [y for _, y, _ in lat], s=6, label=f"{dom} {path_}")
    for f in r["faults"]:
        if f["time_s"] is None:
            continue
        color = "tab:green" if f["as_expected"] else "tab:red"
        for ax in (top, low):
            ax.axvline(f["time_s"], color=color, linestyle="--", linewidth=0.8)
        top.annotate(f"{f['index']}", (f["time_s"], 1), xycoords=("data", "axes fraction"),
                     fontsize=7, va="top")
    for c in r["host_crashes"]:
        if c["time_s"] is not None:
            for ax in (top, low):
                ax.axvline(c["time_s"], color="black", linewidth=1.2)
    top.set_ylabel("acknowledged records/s")
    low.set_ylabel("batch latency (ms)")
    low.set_yscale("log")
    low.set_xlabel("seconds since the writers started (faults dashed, host crashes black)")
    top.set_title(f"{r['scenario']} (seed {r['seed']})")
    top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
