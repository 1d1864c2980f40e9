"""Instantiating a host description: the supervisor (the host's firmware).

Rules:
1. The supervisor starts the devices (hardware: they exist before Xen
   boots), then the hypervisor, waits until every domain has booted, and
   from then on only watches: when the hypervisor exits, for whatever
   reason, it tears the host down so that no process of it survives.
2. Orderly shutdown goes through Domain-0 (the toolstack halts the guests,
   then Dom0 powers off and Xen exits); force is the fallback: SIGTERM to
   Xen, then SIGKILL to anything titled as part of this host.
3. `with Host(spec) as h:` boots and always tears down (STYLE.md 12).
4. Disks: `Host.spec` is the description with every image path resolved
   and one disk device per image (launcher.devspec). Before the devices
   start, every missing image is made (a 16 MiB ext2 from the XenoLinux
   template, launcher.images); an existing one is never touched, so what a
   guest wrote survives a reboot of the host.
5. Tracing (`trace=True`): every process the supervisor starts gets
   $XENOLAB_TRACE = <run dir>/trace (launcher.trace.folder), and Xen's
   domains inherit it from Xen. Otherwise they inherit the supervisor's
   environment as it is.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from hypervisor.public.endpoints import xen_endpoint
from hypervisor.public.trace import ENV as TRACE_ENV
from launcher import rundir
from launcher.client import ToolstackClient
from launcher.devspec import with_disk_devices
from launcher.firmware import Firmware
from launcher.hostspec import HostSpec
from launcher.images import make_image
from launcher.rundir import HostError, PidRecord
from launcher.trace import folder as trace_folder

BOOT_TIMEOUT_S = 30.0
IMAGE_MIB = 16  # the size of an image the launcher makes
DOWN_TIMEOUT_S = 10.0


def _die_with_parent():
    import ctypes
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)


class Host:
    def __init__(self, spec: HostSpec, name: str | None = None, progress=None,
                 trace: bool = False) -> None:
        self.name = rundir.host_name(name or spec.name)
        self.image_dir = rundir.image_dir(self.name)
        self.spec = with_disk_devices(spec, self.image_dir)
        self.progress = progress or (lambda msg: None)
        self.dir = rundir.path(self.name)
        self.xen: subprocess.Popen | None = None
        self._client: ToolstackClient | None = None
        self.ready_s: float | None = None
        self.firmware: Firmware | None = None  # the devices and their supervision
        self.trace_dir = trace_folder(self.name) if trace else None

    # ---- boot ----------------------------------------------------------

    def start(self) -> "Host":
        t0 = time.monotonic()
        self.progress(f"Preparing run directory {rundir.prepare(self.name)}")
        self._write_auto()
        if self.trace_dir:
            os.makedirs(self.trace_dir, exist_ok=True)
            self.progress(f"Tracing every process into {self.trace_dir}")
        try:
            self._make_images()
            self._start_devices()
            self.progress(f"Starting the hypervisor ({self.spec.memory_mib} MiB, "
                          f"{self.spec.cpus} CPUs) and Domain-0 "
                          f"({self.spec.dom0_memory_mib} MiB)")
            self._start_xen()
            names = [d.name for d in self.spec.domains]
            self.progress(f"Domain-0 builds {', '.join(names) or 'no guests'}; waiting for boot")
            ok = self.xl("wait_booted", doms=names, timeout_ms=int(BOOT_TIMEOUT_S * 1000),
                         timeout_s=BOOT_TIMEOUT_S + 5)
            if not ok:
                raise HostError(f"host '{self.name}' did not boot in {BOOT_TIMEOUT_S:.0f} s "
                                f"(see {self.dir}/logs)")
        except BaseException:
            self.kill()
            raise
        self.ready_s = time.monotonic() - t0
        self.progress(f"Host '{self.name}' ready in {self.ready_s:.2f} s")
        return self

    def _write_auto(self) -> None:
        for i, dom in enumerate(self.spec.domains):
            with open(os.path.join(self.dir, "auto", f"{i:03d}-{dom.name}.json"), "w") as f:
                json.dump(dom.to_wire(), f)
        with open(os.path.join(self.dir, "disks.json"), "w") as f:  # Dom0's driver policy
            json.dump({d.name: {"on_crash": d.on_crash} for d in self.spec.devices}, f)
        with open(os.path.join(self.dir, "nics.json"), "w") as f:  # each NIC's bridge
            json.dump({d.name: {"bridge": d.bridge} for d in self.spec.devices
                       if d.kind == "nic"}, f)

    def _make_images(self) -> None:
        """Every disk device's image exists before the device opens it (rule 4)."""
        for dev in self.spec.devices:
            if dev.kind != "disk" or os.path.exists(dev.image):
                continue
            folder = os.path.dirname(dev.image)
            if _within(dev.image, self.image_dir):
                os.makedirs(folder, exist_ok=True)
            elif not os.path.isdir(folder):
                raise HostError(f"disk image {dev.image}: no directory {folder}")
            self.progress(f"Creating disk image {dev.image} ({IMAGE_MIB} MiB ext2)")
            make_image(dev.image, size_mib=IMAGE_MIB)

    def _start_devices(self) -> None:
        """Hardware first (launcher.firmware): each device gets a secret, an
        IRQ and a control socket whose other end goes to Xen."""
        for dev in self.spec.devices:  # a NIC's TAP goes into an existing netns only
            if dev.kind == "nic" and dev.tap_netns and not os.path.exists(
                    os.path.join("/run/netns", dev.tap_netns)):
                raise HostError(f"device {dev.name}: no network namespace {dev.tap_netns!r} "
                                f"(ip netns add {dev.tap_netns})")
        self.firmware = Firmware(self.name, os.path.join(self.dir, "logs"), self._env(),
                                 self.progress)
        self.firmware.start_devices(self.spec.devices)

    def _start_xen(self) -> None:
        s = self.spec
        argv = [sys.executable, "-m", "hypervisor", "--host", self.name, "--rundir", self.dir,
                "--endpoint", xen_endpoint(self.name), "--memory", str(s.memory_mib),
                "--cpus", str(s.cpus), "--dom0-memory", str(s.dom0_memory_mib),
                "--dom0-vcpus", str(s.dom0_vcpus)]
        dev_argv, fds = self.firmware.xen_args()
        argv += dev_argv
        with open(os.path.join(self.dir, "logs", "hypervisor.log"), "ab") as log:
            self.xen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        pass_fds=fds, preexec_fn=_die_with_parent,
                                        env=self._env())
        self.firmware.xen_started(self.xen)
        me = psutil.Process()
        rundir.write_pids(self.dir, PidRecord(me.pid, me.create_time(), self.xen.pid,
                                              psutil.Process(self.xen.pid).create_time()))

    def _env(self) -> dict[str, str] | None:
        """The environment of the processes the supervisor starts (rule 5)."""
        return {**os.environ, TRACE_ENV: self.trace_dir} if self.trace_dir else None

    # ---- use -----------------------------------------------------------

    @property
    def client(self) -> ToolstackClient:
        if self._client is None:
            self._client = ToolstackClient(self.name, check_running=False)
        return self._client

    def xl(self, op: str, timeout_s: float = 15.0, **args):
        if self.xen is not None and self.xen.poll() is not None:
            raise HostError(f"host '{self.name}' is down (hypervisor exited {self.xen.returncode})")
        return self.client.call(op, timeout_s=timeout_s, **args)

    def domains(self) -> dict[str, dict]:
        return {d["name"]: d for d in self.xl("list")}

    def __getitem__(self, name: str) -> dict:
        try:
            return self.domains()[name]
        except KeyError:
            raise HostError(f"domain '{name}' does not exist") from None

    def alive(self) -> bool:
        return self.xen is not None and self.xen.poll() is None

    # ---- teardown ------------------------------------------------------

    def down(self, timeout_s: float = DOWN_TIMEOUT_S) -> float:
        """Orderly shutdown through Domain-0; returns the seconds it took."""
        t0 = time.monotonic()
        if self.firmware is not None:
            self.firmware.stop_watching()  # Xen closing their sockets powers the devices off
        if self.alive():
            try:
                self.xl("halt", timeout_s=2)
            except HostError:
                pass
            try:
                self.xen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return time.monotonic() - t0

    def kill(self) -> None:
        """Force: SIGTERM Xen (it halts its domains), then SIGKILL leftovers."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.firmware is not None:
            self.firmware.stop_watching()  # no restart while the host goes down
        if self.xen is not None and self.xen.poll() is None:
            self.xen.terminate()
            try:
                self.xen.wait(3)
            except subprocess.TimeoutExpired:
                self.xen.kill()
                self.xen.wait()
        if self.firmware is not None:
            self.firmware.close()
            self.firmware = None
        kill_leftovers(self.name)
        rundir.remove_pids(self.dir)

    def wait(self) -> int:
        """Supervise until the hypervisor exits; then make sure all is gone."""
        code = self.xen.wait()
        self.kill()
        return code

    def __enter__(self) -> "Host":
        return self.start() if self.xen is None else self

    def __exit__(self, *exc) -> None:
        self.down()


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def kill_leftovers(host: str, timeout_s: float = 3.0) -> None:
    procs = [p for p in rundir.host_processes(host) if p.pid != os.getpid()]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout_s)
