"""Small OS helpers for domain processes."""

import ctypes
import signal

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to kill this process when Xen (its parent) exits."""
    _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
