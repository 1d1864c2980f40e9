"""The host's firmware: the device processes, their restarts, the channel to Xen.

Rules:
1. Devices are hardware: started before Xen, each with a fresh secret (its
   identity on Xen's socket), an IRQ and one end of a SOCK_SEQPACKET control
   socket whose other end goes to Xen (hypervisor.public.platform). Xen also
   gets our end of the firmware channel (`--firmware-fd`).
2. Once Xen runs, a watcher thread waits on every device process (pidfds
   and a wake-up pipe). A device that dies while Xen runs (any exit but 0,
   which is a device powering off because Xen closed its socket) is started
   again: same name, kind, IRQ, image and options, a fresh secret and
   control socket. Xen learns the replacement ("replace", with Xen's end of
   the new control socket) *before* the process starts, so its hello is
   never from an unknown identity. Xen notices the death on its own (end of
   file on the old control socket) and tells Domain-0.
3. Restart limit: at most RESTART_LIMIT restarts of a device within
   RESTART_WINDOW_S (like the toolstack's for domains); the next death is
   final and Xen is told "remove".
4. `stop_watching()` (then `close()`) ends the watcher before any device is killed, so a teardown
   never restarts anything. A replacement is a child of the watcher thread:
   its PR_SET_PDEATHSIG fires when that thread ends, i.e. at teardown.
"""

import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hypervisor.public.endpoints import xen_endpoint
from hypervisor.public.platform import FIRST_DEVICE_IRQ, encode_firmware
from launcher.devspec import DeviceSpec

RESTART_LIMIT = 5
RESTART_WINDOW_S = 30.0


class RestartLimit:
    """At most `limit` restarts within `window_s` (rule 3); the clock is injected."""

    def __init__(self, limit: int = RESTART_LIMIT, window_s: float = RESTART_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self.times: deque[float] = deque()

    def allow(self) -> bool:
        """Record a restart if one is allowed now."""
        now = self.clock()
        while self.times and now - self.times[0] >= self.window_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True


@dataclass(eq=False)
class DeviceProc:
    spec: DeviceSpec
    irq: int
    proc: subprocess.Popen
    secret: bytes
    xen_end: socket.socket | None  # until Xen has it
    limit: RestartLimit = field(default_factory=RestartLimit)
    restarts: int = 0
    removed: bool = False


class Firmware:
    def __init__(self, host: str, logdir: str, env: dict[str, str] | None,
                 progress: Callable[[str], None], limit: Callable[[], RestartLimit] = RestartLimit
                 ) -> None:
        self.host, self.logdir, self.env, self.progress = host, logdir, env, progress
        self.new_limit = limit
        self.devices: list[DeviceProc] = []
        self.channel, self._xen_channel = socket.socketpair(socket.AF_UNIX,
                                                            socket.SOCK_SEQPACKET)
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._xen: subprocess.Popen | None = None
        self.lock = threading.Lock()

    # ---- boot (rule 1) ----------------------------------------------------

    def start_devices(self, specs) -> None:
        for i, spec in enumerate(specs):
            image = f", {spec.image}" if spec.image else ""
            irq = FIRST_DEVICE_IRQ + i
            self.progress(f"Starting device {spec.name} ({spec.kind}, IRQ {irq}{image})")
            secret, xen_end, (argv, dev_end) = self._spawn(spec, irq)
            proc = self._start(argv, dev_end, spec.name)
            self.devices.append(DeviceProc(spec, irq, proc, secret, xen_end, self.new_limit()))

    def _spawn(self, spec: DeviceSpec, irq: int):
        secret = secrets.token_bytes(16)
        xen_end, dev_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", f"devices.{spec.kind}", "--host", self.host,
                "--name", spec.name, "--endpoint", xen_endpoint(self.host),
                "--secret", secret.hex(), "--ctl-fd", str(dev_end.fileno()),
                "--irq", str(irq), *spec.argv()]
        return secret, xen_end, (argv, dev_end)

    def _start(self, argv: list[str], dev_end: socket.socket, name: str) -> subprocess.Popen:
        with open(os.path.join(self.logdir, f"{name}.log"), "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, pass_fds=(dev_end.fileno(),),
                                    start_new_session=True, env=self.env)
        dev_end.close()
        return proc

    def xen_args(self) -> tuple[list[str], list[int]]:
        """Xen's --device and --firmware-fd options, and the fds they name."""
        argv, fds = [], [self._xen_channel.fileno()]
        for d in self.devices:
            argv += ["--device", device_arg(d.spec, d.secret, d.xen_end.fileno(), d.irq)]
            fds.append(d.xen_end.fileno())
        return argv + ["--firmware-fd", str(self._xen_channel.fileno())], fds

    def xen_started(self, xen: subprocess.Popen) -> None:
        """Xen holds its ends now: drop ours and start watching (rule 2)."""
        self._xen = xen
        for d in self.devices:
            d.xen_end.close()
            d.xen_end = None
        self._xen_channel.close()
        self._thread = threading.Thread(target=self._watch, name="firmware", daemon=True)
        self._thread.start()

    # ---- the watcher (rules 2, 3) ------------------------------------------

    def _watch(self) -> None:
        while True:
            with self.lock:
                watched = {os.pidfd_open(d.proc.pid): d for d in self.devices
                           if not d.removed}
            try:
                ready, _, _ = select.select([self._wake_r, *watched], [], [])
                if self._wake_r in ready:
                    return
                for fd in ready:
                    self._died(watched[fd])
            finally:
                for fd in watched:
                    os.close(fd)

    def _died(self, d: DeviceProc) -> None:
        code = d.proc.wait()
        if code == 0 or self._xen is None or self._xen.poll() is not None:
            d.removed = True  # powered off with Xen: nothing to restart
            return
        if not d.limit.allow():
            self.progress(f"Device {d.spec.name} died ({code}) too often "
                          f"({d.limit.limit} restarts in {d.limit.window_s:.0f} s): removed")
            d.removed = True
            self._tell_xen(encode_firmware("remove", d.spec.name), [])
            return
        d.restarts += 1
        secret, xen_end, (argv, dev_end) = self._spawn(d.spec, d.irq)
        self.progress(f"Device {d.spec.name} died ({code}); restarting it "
                      f"(restart {d.restarts})")
        self._tell_xen(encode_firmware("replace", d.spec.name, secret), [xen_end.fileno()])
        xen_end.close()
        with self.lock:
            d.proc, d.secret = self._start(argv, dev_end, d.spec.name), secret

    def _tell_xen(self, msg: bytes, fds: list[int]) -> None:
        try:
            socket.send_fds(self.channel, [msg], fds)
        except OSError:
            pass  # Xen is gone; the supervisor tears the host down

    # ---- teardown (rule 4) ----------------------------------------------------

    def stop_watching(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """End the watcher, then kill and reap every device (rule 4)."""
        self.stop_watching()
        for d in self.devices:
            if d.proc.poll() is None:
                d.proc.kill()
            d.proc.wait()
            if d.xen_end is not None:
                d.xen_end.close()
        self.devices = []
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self.channel.close()
        self._xen_channel.close()


def device_arg(dev: DeviceSpec, secret: bytes, ctl_fd: int, irq: int) -> str:
    """Xen's --device NAME:KIND:SECRETHEX:CTLFD:IRQ[:IMAGEHEX]; the image path
    travels hex-encoded, so any character (':' included) is safe."""
    arg = f"{dev.name}:{dev.kind}:{secret.hex()}:{ctl_fd}:{irq}"
    return f"{arg}:{os.fsencode(dev.image).hex()}" if dev.image else arg
