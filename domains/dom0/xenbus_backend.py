"""What every xenbus backend device of Domain-0 does alike (blkback's vbd,
netback's vif): where it lives in xenstore, the two xenbus states it acts on,
and xenbus_dev_fatal.

Rules:
1. A device lives at /local/domain/0/backend/<KIND>/<frontend domid>/<devid>;
   its frontend's directory is that node's `frontend` key.
2. A failure of one device closes that device only (xenbus_dev_fatal): the
   message goes to the console and to xenstore's error node, the device's
   `_before_fatal()` lets go of its ring, and the backend switches to Closing
   the way the state table says. Nothing reaches Domain-0's kernel.
"""

from __future__ import annotations

from domains.dom0.xenstored.perms import XsError
from domains.kernel.xenbus_state import Event, Role, next_actions, parse_state
from hypervisor.public.xenbus import XenbusState


class XenbusBackend:
    """A subclass names its KIND, its `log_name` and its `_run(actions)`."""

    KIND = ""  # "vbd", "vif"
    log_name = ""

    def __init__(self, service, fe: int, devid: int) -> None:
        self.service, self.dom0 = service, service.dom0
        self.k, self.xs = self.dom0.kernel, self.dom0.xs
        self.fe, self.devid = fe, devid
        self.path = f"/local/domain/0/backend/{self.KIND}/{fe}/{devid}"
        self.fe_path = self.xs.try_read(f"{self.path}/frontend") or ""

    @property
    def state(self) -> XenbusState:
        return parse_state(self.xs.try_read(f"{self.path}/state"))

    @property
    def other(self) -> XenbusState:
        return parse_state(self.xs.try_read(f"{self.fe_path}/state"))

    def _run(self, actions: list) -> None:
        raise NotImplementedError

    def _before_fatal(self) -> None:
        """Let go of the ring before Closing (rule 2)."""

    def _guarded(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - nothing may reach Dom0's kernel
            self.fatal(f"{exc.__class__.__name__}: {exc}")

    def fatal(self, msg: str) -> None:
        """xenbus_dev_fatal (rule 2)."""
        self._error(msg)
        try:
            self._before_fatal()
            self._run(next_actions(Role.BACKEND, self.state, self.other, Event.FATAL))
        except Exception as again:  # noqa: BLE001
            self._error(f"cannot close: {again}")

    def _error(self, msg: str) -> None:
        print(f"{self.log_name}: {msg}", flush=True)
        try:
            self.xs.write(f"/local/domain/0/error/backend/{self.KIND}/{self.fe}/{self.devid}"
                          "/error", msg)
        except XsError:
            pass
