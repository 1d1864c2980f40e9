"""`xenolab fault ...`: fault injection and the experiments that prove nothing was lost.

- `fault kill TARGET [--signal S]`: one precise signal (launcher.fault_kill).
- `fault run SCENARIO.toml`: a whole experiment. The scenario is data
  (launcher.fault_scenario), the runner boots and drives the host
  (launcher.fault_run), the records are checked by a sans-IO core
  (launcher.fault_records), leftovers and images by launcher.fault_verify,
  and the report is made by launcher.fault_report.
Progress goes to stderr, so `--json` prints one JSON object alone on stdout.
"""

import json
import os
import re
import sys

from launcher.fault_kill import cmd_kill
from launcher.fault_scenario import load_scenario
from launcher.rundir import HostError


def run_fault(args, host: str) -> int:
    if args.fault_command == "kill":
        return cmd_kill(args, host)
    return cmd_run(args)


def _say(msg: str) -> None:
    print(f"*** {msg}", file=sys.stderr, flush=True)


def unique_host(scenario: str) -> str:
    """A host name no other run uses: the scenario's name and our pid."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", scenario)[:24]
    return f"fault-{stem}-{os.getpid()}"


def cmd_run(args) -> int:
    from launcher.fault_report import plot, print_report
    from launcher.fault_run import Runner

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise HostError("--plot needs matplotlib (pip install matplotlib)") from None
    sc = load_scenario(args.scenario)
    if args.short:
        sc = sc.shortened()
    _say(f"Scenario {sc.name} (seed {args.seed}): {sc.description or args.scenario}")
    runner = Runner(sc, seed=args.seed, name=unique_host(sc.name), progress=_say,
                    keep=args.keep)
    report = runner.run()
    if args.plot:
        plot(runner, report, args.plot)
        _say(f"Plot written to {os.path.abspath(args.plot)}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["verdict"]["ok"] else 1
