"""The XenoLinux system-call ABI that programs see (values follow Linux x86).

Rules:
1. A program makes a system call by yielding `Syscall(name, args)`; the
   kernel resumes it with the result: a value >= 0 (or a record), or a
   negative errno, as the raw Linux ABI returns.
2. Data moves through user memory: read and write take a virtual address
   in the caller's address space, which the kernel walks through its page
   tables (a bad address is -EFAULT). Paths, argv and the records of stat,
   readdir and ps travel as values (the model's simplification of copying
   strings and structs across the user boundary).
"""

import errno as _errno
from dataclasses import dataclass

O_RDONLY, O_WRONLY, O_RDWR, O_ACCMODE = 0, 1, 2, 3
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o100, 0o200, 0o1000, 0o2000
O_DIRECTORY, O_SYNC = 0o200000, 0o4010000
SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2
WNOHANG = 1
PROT_READ, PROT_WRITE = 1, 2
# Sockets: AF_INET only. The model's socket(kind) takes the type alone; SOCK_ICMP
# stands for Linux's ping socket, socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP).
AF_INET = 2
SOCK_STREAM, SOCK_DGRAM, SOCK_ICMP = 1, 2, 3
SHUT_RD, SHUT_WR, SHUT_RDWR = 0, 1, 2
POLLIN, POLLOUT, POLLERR, POLLHUP = 0x1, 0x4, 0x8, 0x10

ERRNO = {name: getattr(_errno, name) for name in (
    "EPERM", "ENOENT", "ESRCH", "EINTR", "EIO", "E2BIG", "ENOEXEC", "EBADF", "ECHILD",
    "EAGAIN", "ENOMEM", "EACCES", "EFAULT", "EBUSY", "EEXIST", "EXDEV", "ENOTDIR",
    "EISDIR", "EINVAL", "EMFILE", "ENOSPC", "ESPIPE", "EROFS", "ENAMETOOLONG",
    "ENOSYS", "ENOTEMPTY", "EFBIG", "EPIPE", "ENOTSOCK", "EDESTADDRREQ", "EMSGSIZE",
    "EOPNOTSUPP", "EAFNOSUPPORT", "EADDRINUSE", "EADDRNOTAVAIL", "ENETUNREACH",
    "ECONNRESET", "EISCONN", "ENOTCONN", "ETIMEDOUT", "ECONNREFUSED", "EHOSTUNREACH",
    "EALREADY", "EINPROGRESS")}

SYSCALLS = (
    "exit", "spawn", "exec", "wait", "getpid", "getppid", "kill", "ps",
    "open", "close", "read", "write", "lseek", "fsync", "stat", "fstat",
    "unlink", "mkdir", "rmdir", "readdir", "rename", "chdir", "getcwd",
    "dup", "dup2", "brk", "mmap", "munmap", "sleep", "time", "clock", "sched_yield",
    "xen_mmu_probe", "drop_caches", "cachestat", "blkread_ns",
    "socket", "bind", "listen", "accept", "connect", "send", "recv", "sendto", "recvfrom",
    "shutdown", "getsockname", "getpeername", "poll", "netifs",
)


@dataclass(frozen=True)
class Syscall:
    name: str
    args: tuple = ()


@dataclass(frozen=True)
class Preempt:
    """Yielded by the timer-tick check the loader puts in every loop."""
