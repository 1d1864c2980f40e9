"""The domain table and the domain lifecycle, as data (STYLE.md 2).

Rules:
1. Xen owns this table; the toolstack only reads it (getdomaininfo) and asks
   for transitions with domctls.
2. Every transition is a row of TRANSITIONS; `transition()` applies them and
   refuses anything else, so a bad domctl can't reach an odd state.
3. A dying domain whose frames are still mapped by another domain stays in
   the table as a zombie, shown as "(null)", until the last unmap.
"""

import enum
from dataclasses import dataclass, field

from hypervisor.memory import MemoryObject
from hypervisor.public.xen import SHUTDOWN_LETTER, ShutdownReason


class DomState(enum.Enum):
    created = "created"  # built, paused, never run
    running = "running"
    blocked = "blocked"
    paused = "paused"
    shutdown = "shutdown"  # SCHEDOP_shutdown: reason in shutdown_reason
    crashed = "crashed"  # the process died without shutting down
    dying = "dying"  # being destroyed; zombie while its pages are mapped

    # Members are singletons: identity hashing is exact and skips Enum's
    # Python-level __hash__ on every transition lookup.
    __hash__ = object.__hash__


S = DomState
TRANSITIONS: dict[tuple[DomState, str], DomState] = {
    (S.created, "unpause"): S.running,
    (S.running, "block"): S.blocked,
    (S.blocked, "wake"): S.running,
    (S.running, "pause"): S.paused,
    (S.blocked, "pause"): S.paused,
    (S.created, "pause"): S.created,
    (S.paused, "unpause"): S.running,
    (S.running, "shutdown"): S.shutdown,
    (S.blocked, "shutdown"): S.shutdown,
    (S.paused, "shutdown"): S.shutdown,
    (S.created, "shutdown"): S.shutdown,
}
for _s in (S.created, S.running, S.blocked, S.paused, S.shutdown):
    TRANSITIONS[(_s, "crash")] = S.crashed
for _s in DomState:
    TRANSITIONS[(_s, "destroy")] = S.dying


_CRASHED, _DYING = S.crashed, S.dying


class TransitionError(Exception):
    pass


@dataclass(eq=False)
class Domain:
    domid: int
    name: str
    memory_kib: int
    vcpus: int
    privileged: bool
    secret: bytes
    mem: MemoryObject
    shared_info: MemoryObject
    max_grant_frames: int
    state: DomState = DomState.created
    shutdown_reason: ShutdownReason | None = None
    pid: int = 0
    pidfd: int = -1
    exit_status: int | None = None
    cpu_time_ns: int = 0
    paused_before: DomState | None = None
    block_seq: int | None = None  # the held SCHEDOP_block reply
    poll: tuple[int, list[int], int] | None = None  # (seq, ports, deadline)
    held: list = field(default_factory=list)  # hypercalls held while paused
    kick_deferred: bool = False
    timer_ns: int = 0
    fds_given: set[int] = field(default_factory=set)  # granters' memfds sent
    posted_errors: int = 0  # posted hypercalls that failed (nobody reads their rc)

    @property
    def nr_pages(self) -> int:
        return self.mem.nr_pages

    @property
    def grant_table_pfn(self) -> int:
        return self.nr_pages - self.max_grant_frames

    @property
    def alive(self) -> bool:
        state = self.state
        return state is not _CRASHED and state is not _DYING and self.pid > 0

    def transition(self, event: str) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise TransitionError(f"{self.state.value} domain cannot {event}")
        self.state = nxt

    def state_letters(self) -> str:
        """xl list's six-letter state column (reference 8.2)."""
        s = self.state
        letters = [
            "r" if s is DomState.running else "-",
            "b" if s is DomState.blocked else "-",
            "p" if s in (DomState.paused, DomState.created) else "-",
            "s" if s is DomState.shutdown else "-",
            "-",
            "d" if s is DomState.dying else "-",
        ]
        reason = self.shutdown_reason
        if s is DomState.crashed:
            letters[3], reason = "s", ShutdownReason.crash
        if reason is not None and s in (DomState.shutdown, DomState.crashed, DomState.dying):
            letters[4] = SHUTDOWN_LETTER[reason]
        return "".join(letters)

    def info(self) -> dict:
        """The getdomaininfo record."""
        dying_zombie = self.state is DomState.dying
        return {
            "domid": self.domid,
            "name": "(null)" if dying_zombie else self.name,
            "state": self.state.value,
            "state_letters": self.state_letters(),
            "shutdown_reason": None if self.shutdown_reason is None else int(self.shutdown_reason),
            "pid": self.pid,
            "memory_kib": self.memory_kib,
            "max_grant_frames": self.max_grant_frames,
            "vcpus": self.vcpus,
            "privileged": self.privileged,
            "cpu_time_ns": self.cpu_time_ns,
        }
