"""The `xenolab` command: boot hosts, drive them like xl, benchmark them.

Errors are one line on stderr and a non-zero exit, never a traceback.
"""

import argparse
import json
import os
import sys

from launcher import commands
from launcher.hostspec import ConfigError
from launcher.rundir import HostError


def _host_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=argparse.SUPPRESS,
                   help="host name (default: $XENOLAB_HOST or 'default')")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xenolab", description=(
        "Xenolab: a runnable model of the Xen hypervisor; every domain is a process."))
    _host_arg(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="boot a host (default: the embedded one)")
    up.add_argument("config", nargs="?", help="TOML host description")
    up.add_argument("--detach", "-d", action="store_true", help="return once the host is up")
    up.add_argument("--daemon-fd", type=int, help=argparse.SUPPRESS)
    up.add_argument("--trace", action="store_true",
                    help="every process records trace points (read them with 'xenolab trace')")
    _host_arg(up)
    down = sub.add_parser("down", help="orderly shutdown of a running host")
    _host_arg(down)
    _xl_parser(sub)
    _xenstore_parser(sub)
    _dev_parser(sub)
    _bench_parser(sub)
    _trace_parser(sub)
    _demo_parser(sub)
    _fault_parser(sub)
    return p


def _fault_parser(sub) -> None:
    f = sub.add_parser("fault", help="fault injection: signal a host's processes, run "
                       "fault experiments")
    _host_arg(f)
    fs = f.add_subparsers(dest="fault_command", required=True, metavar="SUBCOMMAND")
    c = fs.add_parser("kill", help="signal a domain, a device or the hypervisor")
    c.add_argument("target", help="domain name or id, device name, or 'hypervisor'")
    c.add_argument("--signal", default="KILL", type=str.upper,
                   choices=("KILL", "TERM", "STOP", "CONT"), help="default KILL")
    _host_arg(c)
    c = fs.add_parser("run", help="boot a scenario's host, run its workloads and faults, "
                      "verify and report")
    c.add_argument("scenario", metavar="SCENARIO.toml")
    c.add_argument("--seed", type=int, default=1, help="random choices (default 1)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--plot", metavar="FILE.png", help="draw throughput and latency over time")
    c.add_argument("--short", action="store_true",
                   help="the scenario's short version ([short], as the tests run it)")
    c.add_argument("--keep", action="store_true",
                   help="keep the run directory and the disk images")


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="boot the default host and walk through what happens, "
                       "from real traces")
    d.add_argument("--section", type=int, action="append", choices=(1, 2, 3, 4, 5),
                   help="run only this part (repeatable): 1 launch foo, 2 fopen/fwrite, "
                   "3 protection, 4 foo over the network, 5 why virtualize")
    d.add_argument("-o", "--output", default="xenolab-demo-trace.json", metavar="FILE.json",
                   help="the Chrome trace JSON (default ./xenolab-demo-trace.json)")


def _trace_parser(sub) -> None:
    t = sub.add_parser("trace", help="a traced host's records as Chrome trace-event JSON "
                       "(Perfetto) or numbered steps")
    t.add_argument("-o", "--output", default="xenolab-trace.json", metavar="FILE.json",
                   help="where to write the JSON (default ./xenolab-trace.json)")
    t.add_argument("--steps", action="store_true", help="also print the numbered sequence")
    t.add_argument("--id", action="append", dest="ids", metavar="TRACE_ID",
                   help="only this trace id in the steps (hex or decimal; repeatable)")
    _host_arg(t)


def _xl_parser(sub) -> None:
    xl = sub.add_parser("xl", help="the xl toolstack commands")
    _host_arg(xl)
    xs = xl.add_subparsers(dest="xl_command", required=True, metavar="SUBCOMMAND")
    for name, helptext in (("list", "list domains"), ("info", "host information")):
        c = xs.add_parser(name, help=helptext)
        c.add_argument("--json", "-l", action="store_true", dest="json")
        _host_arg(c)
    c = xs.add_parser("create", help="create a domain from an xl.cfg file")
    c.add_argument("cfg")
    c.add_argument("-p", dest="paused", action="store_true", help="leave it paused")
    _host_arg(c)
    for name in ("destroy", "pause", "unpause", "shutdown", "reboot", "console"):
        c = xs.add_parser(name, help=f"{name} a domain")
        c.add_argument("dom", help="domain name or id")
        if name in ("shutdown", "reboot"):
            c.add_argument("-w", dest="wait", action="store_true", help="wait until it is gone")
        _host_arg(c)
    c = xs.add_parser("block-list", help="a domain's virtual block devices")
    c.add_argument("dom")
    _host_arg(c)
    c = xs.add_parser("block-attach", help="hot-plug a disk: DOM 'format=raw, vdev=xvdb, "
                      "access=rw, target=PATH'")
    c.add_argument("dom")
    c.add_argument("spec", nargs="+", help="disk spec (xl-disk-configuration)")
    _host_arg(c)
    c = xs.add_parser("block-detach", help="hot-unplug a disk (through xenbus)")
    c.add_argument("dom")
    c.add_argument("vdev", help="xvdX or the devid")
    c.add_argument("--force", "-f", action="store_true", help="remove without the backend")
    _host_arg(c)
    c = xs.add_parser("network-list", help="a domain's virtual network interfaces")
    c.add_argument("dom")
    _host_arg(c)
    c = xs.add_parser("network-attach", help="hot-plug a vif: DOM 'mac=..., bridge=xenbr0'")
    c.add_argument("dom")
    c.add_argument("spec", nargs="*", help="vif spec (xl-network-configuration)")
    _host_arg(c)
    c = xs.add_parser("network-detach", help="hot-unplug a vif (through xenbus)")
    c.add_argument("dom")
    c.add_argument("devid", help="the devid or the MAC")
    c.add_argument("--force", "-f", action="store_true", help="remove without the backend")
    _host_arg(c)
    c = xs.add_parser("dmesg", help="Xen's console ring")
    c.add_argument("-c", dest="clear", action="store_true", help="clear it after reading")
    _host_arg(c)


def _xenstore_parser(sub) -> None:
    x = sub.add_parser("xenstore", help="read and write the xenstore tree (as Dom0)")
    _host_arg(x)
    xs = x.add_subparsers(dest="xs_command", required=True, metavar="SUBCOMMAND")
    c = xs.add_parser("ls", help="list a subtree")
    c.add_argument("path", nargs="?", default="/")
    _host_arg(c)
    for name, helptext in (("read", "print a node's value"), ("rm", "remove a subtree")):
        c = xs.add_parser(name, help=helptext)
        c.add_argument("path")
        _host_arg(c)
    c = xs.add_parser("write", help="write a node (parents are created)")
    c.add_argument("path")
    c.add_argument("value")
    _host_arg(c)


def _dev_parser(sub) -> None:
    d = sub.add_parser("dev", help="the host's physical devices (through Domain-0's drivers)")
    _host_arg(d)
    ds = d.add_subparsers(dest="dev_command", required=True, metavar="SUBCOMMAND")
    c = ds.add_parser("list", help="the disk controllers Domain-0 drives")
    c.add_argument("--json", action="store_true")
    _host_arg(c)
    c = ds.add_parser("fault", help="inject faults: none, eio, hang or die")
    c.add_argument("dev")
    c.add_argument("mode", choices=("none", "eio", "hang", "die"))
    c.add_argument("--rate", type=float, default=0.0,
                   help="chance per command (default 0: every command)")
    _host_arg(c)
    c = ds.add_parser("latency", help="service time: none, fixed:USEC, hdd or hdd:RPM")
    c.add_argument("dev")
    c.add_argument("spec")
    _host_arg(c)
    c = ds.add_parser("wire", help="a NIC's link faults (unset options stay as they are)")
    c.add_argument("dev", help="the NIC device's name")
    for opt, what in (("--drop", "drop"), ("--dup", "duplicate"), ("--reorder", "reorder")):
        c.add_argument(opt, type=float, metavar="P", help=f"chance to {what} a frame (0..1)")
    c.add_argument("--delay-ms", type=float, metavar="MS", help="delay every frame")
    c.add_argument("--partition", choices=("on", "off"), help="cut the host off the wire")
    c.add_argument("--clear", action="store_true", help="every fault off first")
    _host_arg(c)
    c = ds.add_parser("on-crash", help="when the device dies: wait for its replacement, "
                      "or fail the commands it held")
    c.add_argument("dev")
    c.add_argument("policy", choices=("wait", "fail"))
    _host_arg(c)


def _bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks against a same-run baseline")
    _host_arg(b)
    bs = b.add_subparsers(dest="bench", required=True, metavar="BENCH")
    c = bs.add_parser("evtchn", help="event-channel round trip between two DomUs")
    c.add_argument("--count", type=int, default=10_000)
    c.add_argument("--json", action="store_true")
    _host_arg(c)
    c = bs.add_parser("blk", help="fio-like block I/O from a DomU through blkfront")
    c.add_argument("--rw", default="randread",
                   choices=("read", "write", "randread", "randwrite", "randrw"))
    c.add_argument("--bs", default="4k", help="block size (default 4k)")
    c.add_argument("--iodepth", type=int, default=1, help="I/Os in flight (default 1)")
    c.add_argument("--runtime", type=float, default=5.0, help="seconds measured (default 5)")
    c.add_argument("--size", default="64M", help="the guest disk's size (default 64M)")
    c.add_argument("--seed", type=int, default=1, help="random offsets' seed (default 1)")
    c.add_argument("--json", action="store_true")
    c.add_argument("--plot", metavar="FILE.png", help="draw the latency distribution")
    _host_arg(c)
    c = bs.add_parser("net", help="ping, TCP and UDP between two DomUs through netfront, "
                      "netback and the bridge")
    c.add_argument("--count", type=int, default=200, help="pings (default 200)")
    c.add_argument("--bytes", default="16M", help="TCP transfer size (default 16M)")
    c.add_argument("--seconds", type=float, default=2.0,
                   help="UDP sending time (default 2)")
    c.add_argument("--json", action="store_true")
    _host_arg(c)
    c = bs.add_parser("guest", help="the guest OS in a DomU: exec, cold fopen against its "
                      "block reads")
    c.add_argument("--iterations", type=int, default=100,
                   help="samples of each measure (default 100)")
    c.add_argument("--json", action="store_true")
    _host_arg(c)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return commands.run(args) or 0
    except BrokenPipeError:  # e.g. piped into head: not an error
        os._exit(0)
    except (HostError, ConfigError, OSError) as exc:
        print(f"xenolab: error: {exc}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as exc:
        print(f"xenolab: error: bad JSON: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
