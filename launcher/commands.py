"""What each `xenolab` subcommand does (cli.py only parses)."""

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time

import psutil
from setproctitle import setproctitle

from launcher import console, rundir
from launcher.client import ToolstackClient
from launcher.devspec import check_latency, resolve_disks, resolve_image
from launcher.host import Host, kill_leftovers
from launcher.hostspec import default_host, default_mac, load_host_toml
from launcher.rundir import HostError
from launcher.xlcfg import parse_disk_spec, parse_vif_spec, parse_xl_cfg


def run(args) -> int:
    host = rundir.host_name(getattr(args, "host", None))
    if args.command == "up":
        return cmd_up(args, host)
    if args.command == "down":
        return cmd_down(host)
    if args.command == "xl":
        return cmd_xl(args, host)
    if args.command == "xenstore":
        return cmd_xenstore(args, host)
    if args.command == "dev":
        return cmd_dev(args, host)
    if args.command == "bench" and args.bench == "net":
        from launcher.bench_net import run_net
        return run_net(args, host)
    if args.command == "bench" and args.bench == "guest":
        from launcher.bench_guest import run_guest
        return run_guest(args, host)
    if args.command == "bench":
        from launcher.bench import run_bench
        return run_bench(args, host)
    if args.command == "trace":
        return cmd_trace(args, host)
    if args.command == "fault":
        from launcher.fault import run_fault
        return run_fault(args, host)
    if args.command == "demo":
        from launcher import demo
        return demo.run(sorted(set(args.section or demo.SECTIONS)), args.output)
    raise HostError(f"unknown command {args.command}")


def say(msg: str) -> None:
    print(f"*** {msg}", flush=True)


# ---- up / down ---------------------------------------------------------------

def _spec(args, host: str):
    spec = load_host_toml(args.config) if args.config else default_host()
    if getattr(args, "host", None) is None and os.environ.get("XENOLAB_HOST") is None:
        return spec, spec.name
    return spec, host


def cmd_up(args, host: str) -> int:
    spec, name = _spec(args, host)
    for warning in spec.warnings:
        print(f"xenolab: warning: {warning}", file=sys.stderr)
    if args.detach:
        return _detach(args, name)
    report = _daemon_report(args.daemon_fd)
    h = Host(spec, name, progress=report or say, trace=args.trace)
    setproctitle(f"xenolab[{name}]: supervisor")
    try:
        h.start()
    except HostError as exc:
        if report:
            report(f"error {exc}")
        raise
    if report:
        report(f"ready {h.ready_s:.2f}")
    else:
        print_list(h.xl("list"))
        say(f"Run directory: {h.dir}")
        say("Press Ctrl-C or run 'xenolab down' to shut the host down")
    return _supervise(h)


def _supervise(h: Host) -> int:
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    pidfd = os.pidfd_open(h.xen.pid)
    ready, _, _ = select.select([pidfd, r], [], [])
    if r in ready:
        say("Shutting the host down")
        secs = h.down()
        say(f"Host '{h.name}' is down ({secs:.2f} s)")
        return 0
    code = h.wait()
    say(f"The hypervisor exited ({code}); host '{h.name}' torn down")
    return 0 if code == 0 else 1


def _daemon_report(fd):
    if fd is None:
        return None
    f = os.fdopen(fd, "w", buffering=1)
    return lambda msg: f.write(msg.replace("\n", " ") + "\n")


def _detach(args, name: str) -> int:
    r, w = os.pipe()
    argv = [sys.executable, "-m", "launcher.cli", "up", "--host", name, "--daemon-fd", str(w)]
    if args.config:
        argv.insert(4, os.path.abspath(args.config))
    if args.trace:
        argv.append("--trace")
    subprocess.Popen(argv, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(w)
    with os.fdopen(r) as pipe:
        for line in pipe:
            line = line.rstrip("\n")
            if line.startswith("ready "):
                say(f"Host '{name}' is running detached; 'xenolab down --host {name}' stops it")
                with ToolstackClient(name) as c:
                    print_list(c.call("list"))
                return 0
            if line.startswith("error "):
                raise HostError(line[6:])
            say(line)
    raise HostError(f"host '{name}' failed to start (see {rundir.path(name)}/logs)")


def cmd_down(host: str) -> int:
    rec = rundir.running(host)
    if rec is None:
        raise HostError(f"no running host '{host}'")
    xen, supervisor = rec.alive(), rec.alive("supervisor")
    try:
        with ToolstackClient(host) as c:
            c.call("halt", timeout_s=3)
    except HostError:
        xen.terminate()  # Domain-0 is not answering: power off from Xen
    _wait_or_kill(xen, 10)
    if supervisor is not None and supervisor.pid != os.getpid():
        _wait_or_kill(supervisor, 5)  # it tears down what is left
    kill_leftovers(host)
    rundir.remove_pids(rundir.path(host))
    say(f"Host '{host}' is down")
    return 0


def _wait_or_kill(proc, timeout_s: float) -> None:
    """Wait for a process we did not start (a pidfd sees it exit even while
    it is an unreaped zombie); SIGKILL it if it overstays."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([fd], [], [], timeout_s)[0]:
            proc.kill()
    except psutil.Error:
        pass
    finally:
        os.close(fd)


# ---- xl ----------------------------------------------------------------------

def print_list(infos: list[dict]) -> None:
    print(f"{'Name':<40}{'ID':>5}{'Mem':>6}{'VCPUs':>6}{'State':>11}{'Time(s)':>10}")
    for d in infos:
        print(f"{d['name']:<40}{d['domid']:>5}{d['memory_kib'] // 1024:>6}{d['vcpus']:>6}"
              f"{d['state_letters']:>11}{d['cpu_time_ns'] / 1e9:>10.1f}")


def _list_json(infos: list[dict]) -> list[dict]:
    return [{"name": d["name"], "domid": d["domid"], "state": d["state"],
             "state_letters": d["state_letters"], "pid": d["pid"],
             "memory_mib": d["memory_kib"] // 1024, "vcpus": d["vcpus"],
             "cpu_time_s": round(d["cpu_time_ns"] / 1e9, 3)} for d in infos]


def cmd_xl(args, host: str) -> int:
    sub = args.xl_command
    if sub == "console":
        return console.attach(host, args.dom)
    with ToolstackClient(host) as c:
        if sub == "list":
            infos = c.call("list")
            if args.json:
                print(json.dumps(_list_json(infos), indent=2))
            else:
                print_list(infos)
        elif sub == "info":
            _print_info(c.call("info"), args.json)
        elif sub == "create":
            with open(args.cfg) as f:
                spec, warnings = parse_xl_cfg(f.read(), args.cfg)
            for w in warnings:
                print(f"xenolab: warning: {w}", file=sys.stderr)
            for disk in spec.disks:
                _warn_if_cwd_file(disk.target, host)
            spec = resolve_disks(spec, rundir.image_dir(host))
            domid = c.call("create", spec=spec.to_wire(), paused=args.paused, timeout_s=30)
            say(f"Created domain {spec.name} (id {domid})")
        elif sub in ("shutdown", "reboot"):
            reason = "poweroff" if sub == "shutdown" else "reboot"
            ok = c.call("shutdown", dom=args.dom, reason=reason,
                        wait_ms=30_000 if args.wait else 0, timeout_s=35)
            if args.wait and ok is False:
                raise HostError(f"domain {args.dom} did not shut down in time")
        elif sub in ("destroy", "pause", "unpause"):
            c.call(sub, dom=args.dom)
        elif sub == "block-list":
            _print_vbds(c.call("block_list", dom=args.dom))
        elif sub == "block-attach":
            # like xl, each argument is part of the spec: "vdev=xvdb," "target=x"
            pieces = [p.rstrip().rstrip(",") for p in args.spec[:-1]] + args.spec[-1:]
            disk = parse_disk_spec(",".join(pieces))
            devid = c.call("block_attach", dom=args.dom, disk=_disk_wire(disk, host))
            say(f"Attached {disk.vdev} (devid {devid}) to {args.dom}")
        elif sub == "block-detach":
            c.call("block_detach", dom=args.dom, vdev=args.vdev, force=args.force,
                   timeout_s=20)
            say(f"Detached {args.vdev} from {args.dom}")
        elif sub == "network-list":
            _print_vifs(c.call("network_list", dom=args.dom))
        elif sub == "network-attach":
            nic = _vif_wire(args.spec, args.dom)
            devid = c.call("network_attach", dom=args.dom, nic=nic)
            say(f"Attached vif {devid} ({nic['mac']}) to {args.dom}")
        elif sub == "network-detach":
            c.call("network_detach", dom=args.dom, devid=args.devid, force=args.force,
                   timeout_s=20)
            say(f"Detached vif {args.devid} from {args.dom}")
        elif sub == "dmesg":
            sys.stdout.write(c.call("dmesg", clear=args.clear).decode(errors="replace"))
    return 0


def _disk_wire(disk, host: str) -> dict:
    """A disk for the toolstack; a relative target names an image in the
    host's image directory, as in host descriptions (launcher.devspec rule 1)."""
    _warn_if_cwd_file(disk.target, host)
    return {"target": resolve_image(disk.target, rundir.image_dir(host)), "vdev": disk.vdev,
            "format": disk.format, "access": disk.access}


def _warn_if_cwd_file(target: str, host: str) -> None:
    """Say so when a relative target also names a different file here."""
    if not target or os.path.isabs(target) or not os.path.exists(target):
        return
    resolved = resolve_image(target, rundir.image_dir(host))
    if os.path.realpath(target) != os.path.realpath(resolved):
        print(f"xenolab: warning: target {target!r} is {resolved} (the host's image "
              f"directory), not ./{target}; give an absolute path for that one",
              file=sys.stderr)


def _vif_wire(spec: list[str], dom: str) -> dict:
    """A vif for the toolstack (xl-network-configuration; a MAC is made up if none)."""
    pieces = [p.rstrip().rstrip(",") for p in spec[:-1]] + spec[-1:]
    nic, _warnings = parse_vif_spec(",".join(pieces), 0)
    wire = dataclasses.asdict(nic)
    if not wire["mac"]:
        wire["mac"] = default_mac(f"{dom}-{time.time_ns()}", 0)
    return wire


def _print_vifs(rows: list[dict]) -> None:
    """xl network-list, plus the vif's counters (rx: from the guest, tx: to it)."""
    print(f"{'Idx':>3} {'BE':>3} {'Mac Addr.':<18} {'BE-state':>8} {'FE-state':>8}  "
          f"{'Vif':<9}{'Bridge':<9}{'RX pkts':>9}{'bytes':>11}{'drop':>6}{'err':>5}"
          f"{'TX pkts':>9}{'bytes':>11}{'drop':>6}{'err':>5}  IP")
    for r in rows:
        print(f"{r['devid']:>3} {0:>3} {r['mac'] or '?':<18} {r['backend_state'] or '-':>8} "
              f"{r['frontend_state'] or '-':>8}  {r.get('name', '-'):<9}"
              f"{r['bridge'] or '-':<9}"
              f"{r.get('rx_packets', 0):>9}{r.get('rx_bytes', 0):>11}"
              f"{r.get('rx_dropped', 0):>6}{r.get('rx_errors', 0):>5}"
              f"{r.get('tx_packets', 0):>9}{r.get('tx_bytes', 0):>11}"
              f"{r.get('tx_dropped', 0):>6}{r.get('tx_errors', 0):>5}  {r['ip'] or ''}")


def _print_vbds(rows: list[dict]) -> None:
    print(f"{'Vdev':<8}{'devid':>8}  {'BE':>3} {'BE-state':>9} {'FE-state':>9}  target")
    for r in rows:
        print(f"{r['vdev'] or '?':<8}{r['devid']:>8}  {0:>3} {r['backend_state'] or '-':>9} "
              f"{r['frontend_state'] or '-':>9}  {r['target']}")


def _print_info(info: dict, as_json: bool) -> None:
    rows = {
        "host": info["hostname"], "xenolab_host": info["host"],
        "nr_cpus": info["nr_cpus"], "total_memory": info["total_pages"] * 4 // 1024,
        "free_memory": info["free_pages"] * 4 // 1024, "xen_version": info["xen_version"],
        "xen_scheduler": "credit (modelled by the host OS)", "xen_pid": info["xen_pid"],
        "dom0_pid": info["dom0_pid"], "rundir": info["rundir"],
        "uptime_s": round(info["uptime_s"], 1),
    }
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for k, v in rows.items():
        print(f"{k:<23}: {v}")


# ---- xenstore ----------------------------------------------------------------

def cmd_xenstore(args, host: str) -> int:
    sub = args.xs_command
    with ToolstackClient(host) as c:
        if sub == "ls":
            for depth, name, value in c.call("xs_ls", path=args.path):
                print(f"{' ' * depth}{name} = \"{value}\"")
        elif sub == "read":
            print(c.call("xs_read", path=args.path))
        elif sub == "write":
            c.call("xs_write", path=args.path, value=args.value)
        elif sub == "rm":
            c.call("xs_rm", path=args.path)
    return 0


# ---- dev -------------------------------------------------------------------------

def cmd_dev(args, host: str) -> int:
    sub = args.dev_command
    with ToolstackClient(host) as c:
        if sub == "list":
            rows = c.call("phys_list")
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_devs(rows)
        elif sub == "fault":
            c.call("phys_fault", dev=args.dev, mode=args.mode, rate=args.rate)
        elif sub == "latency":
            c.call("phys_latency", dev=args.dev, spec=check_latency(args.spec))
        elif sub == "on-crash":
            c.call("phys_on_crash", dev=args.dev, policy=args.policy)
        elif sub == "wire":
            c.call("nic_wire", dev=args.dev, **wire_args(args))
    return 0


def wire_args(args) -> dict:
    """`xenolab dev wire` options as nic_wire arguments (only those given)."""
    out = dict(drop=0.0, dup=0.0, reorder=0.0, delay_ms=0.0, partition=False) if args.clear \
        else {}
    for key in ("drop", "dup", "reorder", "delay_ms"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    if args.partition is not None:
        out["partition"] = args.partition == "on"
    return out


def _not_ready(r: dict) -> str:
    return "down" if r.get("link") == "down" else "probe"


def _print_devs(rows: list[dict]) -> None:
    print(f"{'Name':<24}{'IRQ':>4}{'MiB':>7}  {'State':<6}{'Done':>9}{'Errors':>7}{'Queue':>6}")
    for r in rows:
        stats = r.get("statistics", {})
        mib = r.get("capacity_sectors", 0) * r.get("sector_size", 512) >> 20
        state = "ready" if r["ready"] else (r["error"] or _not_ready(r))[:6]
        print(f"{r['name']:<24}{r['irq']:>4}{mib:>7}  {state:<6}{stats.get('completed', 0):>9}"
              f"{stats.get('errors', 0):>7}{stats.get('in_flight', 0):>6}")


# ---- trace -----------------------------------------------------------------------

def cmd_trace(args, host: str) -> int:
    from launcher import trace
    folder = trace.folder(host)
    if not os.path.isdir(folder):
        raise HostError(f"no trace of host '{host}' (boot it with 'xenolab up --trace')")
    events = trace.load(folder)
    if not events:
        raise HostError(f"host '{host}' has recorded nothing yet ({folder})")
    if args.steps:
        ids = None if not args.ids else [_trace_id(i) for i in args.ids]
        for line in trace.sequence(events, ids):
            print(line)
    trace.write_chrome(events, args.output)
    procs = len({e.proc.who for e in events})
    say(f"Wrote {len(events)} records of {procs} processes to {os.path.abspath(args.output)} "
        "(open it in https://ui.perfetto.dev)")
    return 0


def _trace_id(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        try:
            return int(text, 16)
        except ValueError:
            raise HostError(f"bad trace id {text!r}") from None
