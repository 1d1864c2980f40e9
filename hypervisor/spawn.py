"""Starting domain processes.

Rules:
1. Xen is the parent of every domain process, so it learns of a death at
   once (a pidfd in its poll set) and the kernel kills the child if Xen dies
   (PR_SET_PDEATHSIG), so nothing outlives the hypervisor.
2. A child gets three inherited fds and nothing else: its control socket (a
   SOCK_SEQPACKET pair used to hand over memory objects), its memory and its
   shared_info. Its identity (the secret routing id) comes as the first
   message on the control socket, never on the command line.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys

import msgpack

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to kill this process when its parent exits."""
    _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _child_setup() -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the launcher


def spawn_domain(boot: dict, mem_fd: int, shinfo_fd: int, log_path: str):
    """Start a domain process; returns (Popen, Xen's end of the control socket)."""
    xen_end, dom_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = (dom_end.fileno(), mem_fd, shinfo_fd)
    for fd in fds:
        os.set_inheritable(fd, True)
    argv = [sys.executable, "-m", "domains.kernel.boot",
            "--ctl-fd", str(fds[0]), "--mem-fd", str(fds[1]), "--shinfo-fd", str(fds[2])]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=_child_setup)
    dom_end.close()
    for fd in fds[1:]:
        os.set_inheritable(fd, False)
    xen_end.send(msgpack.packb(boot))
    return proc, xen_end


def send_memory(ctl: socket.socket, tag: dict, fd: int) -> None:
    """Hand a memory object to a domain (models installing the PTEs)."""
    socket.send_fds(ctl, [msgpack.packb(tag)], [fd])
