"""Process control blocks and the wait-status encoding.

Rules:
1. A process is a PCB plus an address space 0..VMMAX and a coroutine (the
   program). The kernel, not the program, owns every field here.
2. States follow Linux's: RUNNABLE (on the run queue or running), BLOCKED
   (asleep in a system call), ZOMBIE (exited, waiting for its parent's wait).
3. Exit statuses use the wait(2) encoding: code << 8 for exit(code), the
   signal number for a death by signal, so the shell can say which.
"""

import enum
from dataclasses import dataclass, field

SIGKILL, SIGSEGV, SIGTERM = 9, 11, 15
SIGNAL_NAMES = {SIGKILL: "Killed", SIGSEGV: "Segmentation fault", SIGTERM: "Terminated"}


class State(enum.Enum):
    RUNNABLE = "R"
    BLOCKED = "S"
    ZOMBIE = "Z"


def exited(code: int) -> int:
    return (code & 0xFF) << 8


def killed(sig: int) -> int:
    return sig & 0x7F


def describe_status(status: int) -> str:
    """What a shell prints for a wait status."""
    if status & 0x7F:
        sig = status & 0x7F
        return f"{SIGNAL_NAMES.get(sig, 'Signal')} (signal {sig})"
    return f"exit {status >> 8}"


@dataclass
class Pcb:
    pid: int
    ppid: int
    name: str
    argv: list[str]
    cwd: int  # inode of the working directory
    cwd_path: str = "/"
    state: State = State.RUNNABLE
    files: dict = field(default_factory=dict)  # fd -> OpenFile
    mm: object = None  # the process's address space (domains.xenolinux.mm)
    coro: object = None  # the running program
    status: int | None = None  # wait status once ZOMBIE
    pending: set[int] = field(default_factory=set)  # signals not yet acted on
    cpu_ns: int = 0
    started_ns: int = 0
    task: object = None  # the system call in progress (a Task), if it sleeps
    task_req: object = None
    task_result: tuple | None = None
    pending_step: tuple | None = None  # (value, exc) its wake-up brought
    children: set[int] = field(default_factory=set)
    trace_id: int = 0  # the process's own (PCB, exec, exit)
    syscall_id: int = 0  # the system call in progress

    @property
    def alive(self) -> bool:
        return self.state is not State.ZOMBIE
