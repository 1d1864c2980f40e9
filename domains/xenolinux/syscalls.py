"""System calls: the table the scheduler dispatches on (abi.SYSCALLS).

Rules:
1. Each handler is `sys_<name>(os, p, *args)`: a plain function if it never
   sleeps, a generator if it may (see domains.xenolinux.task).
2. Every argument is checked: a wrong type is EINVAL, a user buffer that
   is not mapped is EFAULT (the copy walks the page tables). Errors are
   raised as OSError(errno) and returned to the program as -errno.
3. Data crosses the user boundary by copy (copy_from_user/copy_to_user
   through the process's page tables); nothing keeps a reference to user
   memory after the call.
"""

import dataclasses
import errno
import time

from domains.xenolinux import abi, poll
from domains.xenolinux.fs.blockreq import SECTOR_SIZE, ReadBlocks
from domains.xenolinux.process import SIGNAL_NAMES, State, exited
from domains.xenolinux.procmm import Segfault
from domains.xenolinux.sched import INIT_PID
from domains.xenolinux.sockfs import KINDS, SocketFile
from domains.xenolinux.task import WaitQueue
from domains.xenolinux.vfs import OpenFile

MAX_FDS = 64
MAX_IO = 1 << 20
MAX_ARGV = 64


def _int(x, lo: int = -(1 << 63), hi: int = 1 << 63) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x < hi:
        raise OSError(errno.EINVAL, f"bad integer argument {x!r}")
    return x


def _str(x) -> str:
    if not isinstance(x, str) or len(x) > 4096 or "\0" in x:
        raise OSError(errno.EINVAL, "bad path")
    return x


def _argv(path: str, argv) -> list[str]:
    if argv is None:
        return [path]
    if not isinstance(argv, (list, tuple)) or len(argv) > MAX_ARGV:
        raise OSError(errno.E2BIG, "argument list too long")
    return [_str(a) for a in argv]


def _file(p, fd):
    f = p.files.get(_int(fd, 0, MAX_FDS))
    if f is None:
        raise OSError(errno.EBADF, f"fd {fd}")
    return f


def copy_from_user(p, buf: int, n: int) -> bytes:
    try:
        return p.mm.load(_int(buf, 0, 1 << 32), _int(n, 0, MAX_IO + 1))
    except Segfault:
        raise OSError(errno.EFAULT, "bad user address") from None


def copy_to_user(p, buf: int, data: bytes) -> None:
    try:
        p.mm.store(buf, data)
    except Segfault:
        raise OSError(errno.EFAULT, "bad user address") from None


# ---- processes ---------------------------------------------------------------

def sys_exit(os, p, code=0):
    os.sched.exit(p, exited(_int(code)))
    return 0


def sys_getpid(os, p):
    return p.pid


def sys_getppid(os, p):
    return p.ppid


def sys_spawn(os, p, path, argv=None):
    """posix_spawn: a new process running `path`; it inherits the files."""
    path = _str(path)
    argv = _argv(path, argv)
    child = os.sched.new_process(p, argv[0].rsplit("/", 1)[-1], argv, p.cwd, p.cwd_path)
    for fd, f in p.files.items():
        f.refs += 1
        child.files[fd] = f
    try:
        yield from os.load_program(child, path, argv)
    except BaseException:
        os.sched.exit(child, exited(127))
        os.sched.reap(child)  # it never ran: no zombie for anyone to wait for
        raise
    os.sched.start(child)
    return child.pid


def sys_exec(os, p, path, argv=None):
    """execve: the same process, a new program and address space."""
    path = _str(path)
    yield from os.load_program(p, path, _argv(path, argv))
    return None  # the new program starts with its first send(None)


def sys_wait(os, p, pid=-1, options=0):
    """waitpid: (pid, status) of a child that ended; 0 with WNOHANG."""
    pid, options = _int(pid), _int(options)
    while True:
        kids = [os.sched.procs[c] for c in p.children if c in os.sched.procs]
        kids = [c for c in kids if pid in (-1, c.pid)]
        if not kids:
            raise OSError(errno.ECHILD, "no such child")
        for c in kids:
            if c.state is State.ZOMBIE:
                os.sched.reap(c)
                return (c.pid, c.status)
        if options & abi.WNOHANG:
            return 0
        yield os.sched.child_exit[p.pid].wait()


def sys_kill(os, p, pid, sig):
    target = os.sched.procs.get(_int(pid))
    if target is None or not target.alive:
        raise OSError(errno.ESRCH, f"pid {pid}")
    if _int(sig) not in SIGNAL_NAMES:
        raise OSError(errno.EINVAL, f"signal {sig}")
    if target.pid != INIT_PID:  # as in Linux, init gets no signal it has no handler for
        os.sched.signal(target, sig)
    return 0


def sys_ps(os, p):
    return [{"pid": q.pid, "ppid": q.ppid, "state": q.state.value, "name": q.name,
             "cmd": " ".join(q.argv), "cpu_ms": q.cpu_ns // 1_000_000,
             "pages": len(q.mm.frames) if q.mm else 0}
            for q in sorted(os.sched.procs.values(), key=lambda q: q.pid)]


def sys_sched_yield(os, p):
    os.sched.deadline_ns = 0  # the quantum is over: back of the queue
    return 0


def sys_sleep(os, p, seconds):
    if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
        raise OSError(errno.EINVAL, "bad duration")
    wq = WaitQueue()
    timer = os.k.call_later(seconds, wq.wake_all)
    try:
        yield wq.wait()
    finally:
        timer.cancel()
    return 0


def sys_time(os, p):
    return int(time.time())


def sys_clock(os, p):
    """clock_gettime(CLOCK_MONOTONIC) in nanoseconds."""
    return time.monotonic_ns()


# ---- memory ------------------------------------------------------------------

def sys_brk(os, p, addr=0):
    return p.mm.set_brk(_int(addr, 0, 1 << 32))


def sys_mmap(os, p, length, prot=abi.PROT_READ | abi.PROT_WRITE):
    return p.mm.mmap(_int(length, 1, 1 << 31))


def sys_munmap(os, p, addr, length):
    return p.mm.munmap(_int(addr, 0, 1 << 32), _int(length, 1, 1 << 31))


def sys_xen_mmu_probe(os, p, kind):
    """Ask Xen for a page-table update it must refuse; returns its -errno."""
    return os.mmu_probe(p, _str(kind))


# ---- files -------------------------------------------------------------------

def sys_open(os, p, path, flags=abi.O_RDONLY, mode=0o644):
    f = yield from os.vfs.open(p.cwd, p.cwd_path, _str(path), _int(flags), _int(mode))
    fd = next((i for i in range(MAX_FDS) if i not in p.files), None)
    if fd is None:
        raise OSError(errno.EMFILE, "too many open files")
    p.files[fd] = f
    return fd


def sys_close(os, p, fd):
    f = _file(p, fd)
    del p.files[fd]
    f.put()
    return 0


def sys_read(os, p, fd, buf, n):
    f = _file(p, fd)
    buf, n = _int(buf, 0, 1 << 32), _int(n, 0, MAX_IO + 1)
    data = yield from os.vfs.read(f, n)
    copy_to_user(p, buf, data)
    return len(data)


def sys_write(os, p, fd, buf, n):
    f = _file(p, fd)
    data = copy_from_user(p, buf, n)
    return (yield from os.vfs.write(f, data))


def sys_dup(os, p, fd):
    f = _file(p, fd)
    new = next((i for i in range(MAX_FDS) if i not in p.files), None)
    if new is None:
        raise OSError(errno.EMFILE, "too many open files")
    f.refs += 1
    p.files[new] = f
    return new


def sys_dup2(os, p, fd, new):
    f = _file(p, fd)
    new = _int(new, 0, MAX_FDS)
    if new != fd:
        old = p.files.pop(new, None)
        f.refs += 1
        p.files[new] = f
        if old is not None:
            old.put()
    return new


def sys_lseek(os, p, fd, offset, whence=abi.SEEK_SET):
    return (yield from os.vfs.lseek(_file(p, fd), _int(offset), _int(whence)))


def sys_fsync(os, p, fd):
    return (yield from os.vfs.fsync(_file(p, fd)))


def sys_fstat(os, p, fd):
    return (yield from os.vfs.fstat(_file(p, fd)))


def sys_stat(os, p, path):
    return (yield from os.vfs.stat(p.cwd, p.cwd_path, _str(path)))


def sys_unlink(os, p, path):
    yield from os.vfs.unlink(p.cwd, _str(path))
    return 0


def sys_mkdir(os, p, path, mode=0o755):
    yield from os.vfs.mkdir(p.cwd, _str(path), _int(mode))
    return 0


def sys_rmdir(os, p, path):
    yield from os.vfs.rmdir(p.cwd, _str(path))
    return 0


def sys_rename(os, p, old, new):
    yield from os.vfs.rename(p.cwd, _str(old), _str(new))
    return 0


def sys_readdir(os, p, path="."):
    return (yield from os.vfs.readdir(p.cwd, p.cwd_path, _str(path)))


def sys_chdir(os, p, path):
    path = _str(path)
    p.cwd = yield from os.vfs.lookup_dir(p.cwd, path)
    p.cwd_path = os.vfs.absolute(p.cwd_path, path)
    return 0


def sys_getcwd(os, p):
    return p.cwd_path


# ---- sockets (domains.xenolinux.sockfs; addresses are ("a.b.c.d", port)) ------------

def _new_fd(p, f) -> int:
    fd = next((i for i in range(MAX_FDS) if i not in p.files), None)
    if fd is None:
        f.put()
        raise OSError(errno.EMFILE, "too many open files")
    p.files[fd] = f
    return fd


def _sock(p, fd) -> SocketFile:
    f = _file(p, fd)
    if not isinstance(f.dev, SocketFile):
        raise OSError(errno.ENOTSOCK, f"fd {fd}")
    return f.dev


def sys_socket(os, p, kind):
    """socket(AF_INET, kind): SOCK_STREAM (TCP), SOCK_DGRAM (UDP), SOCK_ICMP (ping)."""
    if kind not in KINDS:
        raise OSError(errno.EINVAL, f"socket type {kind!r}")
    sock = os.net.socket(kind)
    return _new_fd(p, OpenFile(0, abi.O_RDWR, SocketFile(os.net, sock, kind)))


def sys_bind(os, p, fd, addr):
    _sock(p, fd).bind(addr)
    return 0


def sys_listen(os, p, fd, backlog=16):
    _sock(p, fd).listen(_int(backlog, 0, 4096))
    return 0


def sys_accept(os, p, fd):
    s = _sock(p, fd)
    new = yield from s.accept()
    return _new_fd(p, OpenFile(0, abi.O_RDWR, new))


def sys_connect(os, p, fd, addr):
    return (yield from _sock(p, fd).connect(addr))


def sys_send(os, p, fd, buf, n):
    s = _sock(p, fd)
    return (yield from s.send(copy_from_user(p, buf, n)))


def sys_recv(os, p, fd, buf, n):
    s = _sock(p, fd)
    buf, n = _int(buf, 0, 1 << 32), _int(n, 0, MAX_IO + 1)
    data = yield from s.recv(n)
    copy_to_user(p, buf, data)
    return len(data)


def sys_sendto(os, p, fd, buf, n, addr):
    s = _sock(p, fd)
    return (yield from s.sendto(copy_from_user(p, buf, n), addr))


def sys_recvfrom(os, p, fd, buf, n):
    """(bytes received, the sender's address): the address travels as a value."""
    s = _sock(p, fd)
    buf, n = _int(buf, 0, 1 << 32), _int(n, 0, MAX_IO + 1)
    data, addr = yield from s.recvfrom(n)
    copy_to_user(p, buf, data)
    return (len(data), addr)


def sys_shutdown(os, p, fd, how=abi.SHUT_WR):
    _sock(p, fd).shutdown(_int(how, 0, 3))
    return 0


def sys_getsockname(os, p, fd):
    return _sock(p, fd).address(peer=False)


def sys_getpeername(os, p, fd):
    return _sock(p, fd).address(peer=True)


def sys_poll(os, p, fds, timeout_ms=-1):
    """poll(2) over [(fd, events), ...]; [(fd, revents), ...] of the ready ones
    ([] at the timeout). timeout_ms < 0 waits for ever."""
    if not isinstance(fds, (list, tuple)) or len(fds) > MAX_FDS:
        raise OSError(errno.EINVAL, "bad poll set")
    if not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in fds):
        raise OSError(errno.EINVAL, "bad poll set")
    want = [(_int(fd, 0, MAX_FDS), _int(ev, 0, 1 << 16)) for fd, ev in fds]
    timeout_ms = _int(timeout_ms, -1, 3_600_000)
    deadline = None if timeout_ms < 0 else time.monotonic_ns() + timeout_ms * 1_000_000
    while True:
        ready, queues = [], []
        for fd, ev in want:
            mask, queue = poll.readiness(_file(p, fd))
            mask &= ev | abi.POLLERR | abi.POLLHUP
            if mask:
                ready.append((fd, mask))
            if queue is not None:
                queues.append(queue)
        if ready or timeout_ms == 0:
            return ready
        if (yield poll.wait_any(queues, deadline)) == poll.TIMEOUT:
            timeout_ms = 0  # one last look, then []


def sys_netifs(os, p):
    """The network interfaces (ifconfig): name, mac, mtu, ip, prefix, up, counters."""
    return os.net.describe()


# ---- measuring the kernel (osbench) -------------------------------------------

def sys_drop_caches(os, p):
    """`sync; echo 3 > /proc/sys/vm/drop_caches`: write dirty buffers back,
    then drop every clean buffer; how many were dropped. What stays is what
    must: the superblock and group descriptors ext2 pins for the mount (its
    mount-time state), and anything dirtied since the sync."""
    if os.cache is None:
        raise OSError(errno.ENODEV, "no root filesystem mounted")
    yield from os.vfs.sync()
    yield from os.vfs.lock.acquire()  # no ext2 operation is inside the cache
    try:
        return os.cache.drop_clean()
    finally:
        os.vfs.lock.release()


def sys_cachestat(os, p):
    """The buffer cache's counters (bcache.CacheStatistics) as a dict."""
    if os.cache is None:
        raise OSError(errno.ENODEV, "no root filesystem mounted")
    return dataclasses.asdict(os.cache.statistics())


def sys_blkread_ns(os, p, block):
    """Read filesystem block `block` of xvda, bypassing the buffer cache (a
    raw O_DIRECT read of one block); the nanoseconds it took, from the
    request to this system call running again: the same path, and the same
    wake-up, as each read of a cache miss. The block's data is discarded."""
    if os.block is None or os.cache is None:
        raise OSError(errno.ENODEV, "no root disk")
    bs = os.cache.block_size
    features = os.block.front.features  # `sectors` counts 512-byte units
    blocks = features.sectors * SECTOR_SIZE // bs if features else 0
    block = _int(block, 0, max(blocks, 1))
    t0 = time.monotonic_ns()
    yield ReadBlocks((block,), bs)
    return time.monotonic_ns() - t0


TABLE = {name: globals()[f"sys_{name}"] for name in abi.SYSCALLS}
