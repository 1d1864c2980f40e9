"""The toolstack's domain bookkeeping and xl.cfg actions (libxl's role).

Rules:
1. The toolstack learns of shutdowns and deaths the way xl does: a watch on
   @releaseDomain (fired by xenstored on VIRQ_DOM_EXC), then getdomaininfo.
2. on_poweroff / on_reboot / on_crash are applied exactly once per event:
   destroy, restart (a new domid, as in Xen) or preserve.
3. Each domain's config is kept under <rundir>/libxl/ so a later Dom0 can
   find what it was running: a restarted Domain-0 takes those records up
   (`take_over`), re-attaches the consoles and applies the actions of
   domains that stopped meanwhile; a domain without a record (a create the
   dead Domain-0 never finished) is destroyed; a restart it began (old
   domain destroyed, new one not yet created) is finished; the shutdown
   events already handled and the crash-loop history are kept too
   (domains.dom0.toolstack.records).
"""

import json
import os
import re
import time
import traceback

from domains.dom0.toolstack import builder
from domains.dom0.toolstack.records import Records
from hypervisor.public.xen import DomctlCmd, Hypercall, ShutdownReason, SysctlCmd

ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset")
RESTART_BURST = 5
RESTART_WINDOW_S = 30.0
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
KERNEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ToolstackError(Exception):
    """A request the toolstack refuses; the message is one line for the user."""


def validate_spec(spec) -> dict:
    if not isinstance(spec, dict):
        raise ToolstackError("domain config must be a map")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ToolstackError(f"bad domain name {name!r}")
    out = {"name": name, "memory_mib": spec.get("memory_mib", 32), "vcpus": spec.get("vcpus", 1),
           "kernel": spec.get("kernel", "xenolinux"), "cmdline": spec.get("cmdline", ""),
           "uuid": spec.get("uuid")}
    for key in ("on_poweroff", "on_reboot", "on_crash"):
        out[key] = spec.get(key, "restart" if key == "on_reboot" else "destroy")
        if out[key] not in ACTIONS:
            raise ToolstackError(f"{key}: unknown action {out[key]!r}")
    if not isinstance(out["memory_mib"], int) or not 4 <= out["memory_mib"] <= 4096:
        raise ToolstackError("memory must be 4..4096 MiB")
    if not isinstance(out["vcpus"], int) or not 1 <= out["vcpus"] <= 16:
        raise ToolstackError("vcpus must be 1..16")
    if not isinstance(out["kernel"], str) or not KERNEL_RE.match(out["kernel"]):
        raise ToolstackError(f"bad kernel {out['kernel']!r}")
    for key in ("disks", "vifs"):
        out[key] = list(spec.get(key) or [])
    return out


class Toolstack:
    def __init__(self, dom0) -> None:
        self.dom0 = dom0
        self.k = dom0.kernel
        self.specs: dict[int, dict] = {}
        self.handled: set[tuple[int, str]] = set()
        self.records = Records(os.path.join(self.k.rundir, "libxl"))
        self.listeners: list = []  # called after any domain change
        self.restarts: dict[str, list[float]] = self.records.restart_history()
        dom0.xs.watch("@releaseDomain", "toolstack", lambda *_: self._reconcile_logged())

    # ---- queries -------------------------------------------------------

    def infos(self) -> list[dict]:
        _, out = self.k.xen.check(Hypercall.sysctl, SysctlCmd.getdomaininfolist)
        return out

    def lookup(self, dom) -> int:
        """A domain name or id -> domid (ToolstackError if unknown)."""
        for info in self.infos():
            if str(info["domid"]) == str(dom) or info["name"] == dom:
                return info["domid"]
        raise ToolstackError(f"domain '{dom}' does not exist")

    def booted(self, domid: int) -> bool:
        return self.dom0.xs.try_read(f"/local/domain/{domid}/control/feature-poweroff") == "1"

    # ---- lifecycle -----------------------------------------------------

    def create(self, spec, paused: bool = False) -> int:
        spec = validate_spec(spec)
        if any(i["name"] == spec["name"] for i in self.infos()):
            raise ToolstackError(f"domain '{spec['name']}' already exists")
        built = builder.create(self.dom0, spec)
        self.specs[built.domid] = spec
        self.records.save(built.domid, spec)
        if not paused:
            self.domctl(DomctlCmd.unpausedomain, built.domid)
        self.k.console_io(f"toolstack: created {spec['name']} as domain {built.domid}")
        self._changed()
        return built.domid

    def destroy(self, domid: int) -> None:
        if domid == 0:
            raise ToolstackError("cannot destroy Domain-0")
        builder.destroy(self.dom0, domid)
        self.specs.pop(domid, None)
        self.records.forget(domid)
        self._changed()

    def request_shutdown(self, domid: int, reason: str) -> None:
        """xl shutdown/reboot: ask the guest through control/shutdown."""
        if domid == 0:
            raise ToolstackError("use 'xenolab down' to shut Domain-0 down")
        self.dom0.xs.write(f"/local/domain/{domid}/control/shutdown", reason)

    def domctl(self, cmd: int, domid: int) -> None:
        rc, _ = self.k.xen.call(Hypercall.domctl, cmd, {"domid": domid})
        if rc < 0:
            raise ToolstackError(f"{DomctlCmd(cmd).name} of domain {domid} failed ({rc})")

    def take_over(self) -> None:
        """Rule 3: the toolstack of a restarted Domain-0."""
        infos = {i["domid"]: i for i in self.infos()}
        for path in self.records.domain_files():
            try:
                with open(path) as f:
                    rec = json.load(f)
                domid, spec = int(rec["domid"]), validate_spec(rec["spec"])
                handled = {(domid, str(r)) for r in rec.get("handled", [])}
            except (OSError, ValueError, KeyError, TypeError, ToolstackError) as exc:
                self.k.console_io(f"toolstack: bad record {os.path.basename(path)}: {exc}")
                continue
            if domid not in infos or infos[domid]["state"] == "dying":
                self.records.forget(domid)
                continue
            self.specs[domid] = spec
            self.handled |= handled
            port = self.dom0.xs.try_read(f"/local/domain/{domid}/console/port")
            try:
                self.dom0.consoled.attach(domid, spec["name"], int(port or 0), resume=True)
            except (OSError, ValueError) as exc:
                self.k.console_io(f"toolstack: console of domain {domid}: {exc}")
        for domid, info in infos.items():
            if domid != 0 and domid not in self.specs and info["state"] != "dying":
                self.k.console_io(f"toolstack: domain {domid} has no record: destroyed")
                builder.destroy(self.dom0, domid)
        self.k.console_io(f"toolstack: took over {len(self.specs)} domains")
        self._finish_restarts()
        self.reconcile()

    def _finish_restarts(self) -> None:
        """Restarts the dead Domain-0 began: the old domain is gone, create the new."""
        names = {i["name"] for i in self.infos()}
        for raw in self.records.pending_restarts():
            try:
                spec = validate_spec(raw)
            except ToolstackError as exc:
                self.k.console_io(f"toolstack: bad pending restart: {exc}")
                continue
            if spec["name"] not in names:
                self.k.console_io(f"toolstack: finishing the restart of {spec['name']}")
                self.create(spec)
            self.records.end_restart(spec["name"])

    # ---- reacting to Xen -----------------------------------------------

    def _reconcile_logged(self) -> None:
        """The watch callback: a failure is the toolstack's, not Dom0's kernel's."""
        try:
            self.reconcile()
        except Exception:
            self.k.console_io("toolstack: reconcile failed:\n" + traceback.format_exc())

    def reconcile(self) -> None:
        """@releaseDomain fired: apply the config's action to each domain
        that has shut down or crashed since we last looked."""
        infos = {i["domid"]: i for i in self.infos()}
        for domid in list(self.specs):
            info = infos.get(domid)
            if info is None:
                self.specs.pop(domid, None)
                self.records.forget(domid)
            elif info["state"] in ("shutdown", "crashed"):
                self._apply(domid, info)
        self._changed()

    def _apply(self, domid: int, info: dict) -> None:
        reason = (ShutdownReason(info["shutdown_reason"]).name
                  if info["state"] == "shutdown" else "crash")
        if (domid, reason) in self.handled:
            return
        self.handled.add((domid, reason))
        spec = self.specs[domid]
        key = {"poweroff": "on_poweroff", "reboot": "on_reboot"}.get(reason, "on_crash")
        action = spec[key]
        self.k.console_io(f"toolstack: domain {domid} ({spec['name']}) {reason}: {action}")
        if action == "preserve":
            self.records.save(domid, spec, [r for d, r in self.handled if d == domid])
            return
        restart = action.endswith("restart") and self._may_restart(spec["name"])
        if restart:  # before the destroy: a Domain-0 killed in between finishes it
            self.records.begin_restart(spec)
        self.destroy(domid)
        if restart:
            self.create(spec)
            self.records.end_restart(spec["name"])

    def _may_restart(self, name: str) -> bool:
        """Stop a crash loop: at most RESTART_BURST restarts per RESTART_WINDOW_S."""
        now = time.monotonic()
        recent = [t for t in self.restarts.get(name, []) if now - t < RESTART_WINDOW_S]
        self.restarts[name] = recent + [now]
        self.records.save_restart_history(self.restarts)
        if len(recent) >= RESTART_BURST:
            self.k.console_io(f"toolstack: {name} restarts too fast; left destroyed")
            return False
        return True

    def _changed(self) -> None:
        for cb in list(self.listeners):
            cb()
