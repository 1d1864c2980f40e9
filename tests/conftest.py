"""Fixtures that own real hosts and check their own teardown (STYLE.md 9).

Every host a test boots gets a unique name and a private run root; when the
test ends the host is shut down and we assert that no process, socket file
or shared-memory segment of it is left.
"""

import itertools
import json
import os
import pathlib
import subprocess
import sys

import pytest

from launcher import rundir
from launcher.host import Host
from launcher.hostspec import DomainSpec, HostSpec

ROOT = pathlib.Path(__file__).resolve().parent.parent
_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _environment(tmp_path_factory):
    os.environ["XENOLAB_RUN_ROOT"] = str(tmp_path_factory.mktemp("run"))
    os.environ.pop("XENOLAB_HOST", None)
    # Test kernels (tests/kernels) must be importable by domain processes.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    yield


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def assert_no_leaks(name: str, shm_before: set[str]) -> None:
    procs = rundir.host_processes(name)
    assert procs == [], f"processes left behind: {[p.pid for p in procs]}"
    d = pathlib.Path(rundir.path(name))
    sockets = [p for p in d.rglob("*") if p.is_socket()] if d.exists() else []
    assert sockets == [], f"socket files left behind: {sockets}"
    assert not (d / "pids.json").exists(), "stale PID record"
    assert shm_entries() - shm_before == set(), "shared memory left in /dev/shm"


def agent_domain(name: str, **kw) -> DomainSpec:
    return DomainSpec(name=name, memory_mib=kw.pop("memory_mib", 16),
                      kernel="tests.kernels.agent", **kw)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)  # fixtures see whether the test failed
    return rep


def print_logs(h: Host, lines: int = 30) -> None:
    """The tail of each process's log: shown with a failed test's report."""
    for log in sorted(pathlib.Path(h.dir, "logs").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"----- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))


@pytest.fixture
def make_host(request):
    """make_host(spec, trace=False) -> a started Host, torn down and leak-checked after."""
    started: list[tuple[Host, set[str]]] = []

    def make(spec: HostSpec | None = None, *domains: DomainSpec, trace: bool = False) -> Host:
        spec = spec or HostSpec(name="t", domains=domains)
        h = Host(spec, name=f"t{os.getpid()}-{next(_names)}", trace=trace)
        started.append((h, shm_entries()))
        return h.start()

    yield make
    rep = getattr(request.node, "rep_call", None)
    for h, shm in started:
        h.down()
        if rep is not None and rep.failed:
            print_logs(h)
        assert_no_leaks(h.name, shm)


class AgentClient:
    """Drive a tests.kernels.agent guest through xenstore, as Dom0 would."""

    def __init__(self, host: Host, name: str) -> None:
        self.host, self.name = host, name
        self.seq = itertools.count(1)

    @property
    def domid(self) -> int:
        return self.host[self.name]["domid"]

    def __call__(self, op: str, **args):
        res = self.raw(op, **args)
        if not res["ok"]:
            raise AssertionError(f"{self.name} {op}: {res['error']}")
        return res["result"]

    def raw(self, op: str, **args) -> dict:
        return self.wait(self.start(op, **args))

    def start(self, op: str, **args) -> int:
        """Send a command without waiting for its answer; returns its id."""
        n = next(self.seq)
        self.host.xl("xs_write", path=f"/local/domain/{self.domid}/data/cmd", value=json.dumps(
            {"id": n, "op": op, "args": args}))
        return n

    def wait(self, n: int, timeout_ms: int = 10_000) -> dict:
        prev = None
        while True:
            raw = self.host.xl("xs_wait", path=f"/local/domain/{self.domid}/data/res",
                               not_value=prev, timeout_ms=timeout_ms,
                               timeout_s=timeout_ms / 1000 + 5)
            res = json.loads(raw)
            if res["id"] == n:
                return res
            prev = raw


@pytest.fixture
def agent():
    return AgentClient


def xenolab(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """Run the real command line."""
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True,
                          text=True, timeout=60, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"xenolab {' '.join(args)} failed: {proc.stderr}")
    return proc



def boot_blk_guest(make_host, agent, tmp_path, cmdline: str = ""):
    """A host whose one guest `g` (the agent kernel) has an 8 MiB raw disk
    served by device `disk0`; returns (host, agent client, image path) once
    blkfront is connected."""
    from launcher.devspec import DeviceSpec
    from launcher.xlcfg import parse_disk_spec
    img = tmp_path / "g.img"
    img.write_bytes(bytes(8 << 20))
    disk = parse_disk_spec(f"{img},raw,xvda,rw")
    spec = HostSpec(name="t", domains=(DomainSpec(name="g", memory_mib=16, disks=(disk,),
                                                  kernel="tests.kernels.agent",
                                                  cmdline=cmdline),),
                    devices=(DeviceSpec(name="disk0", image=str(img)),))
    h = make_host(spec)
    g = agent(h, "g")
    for _ in range(300):  # each probe is a round trip through the guest
        if g("blk_connected"):
            break
    else:
        raise AssertionError("blkfront never connected")
    return h, g, img
