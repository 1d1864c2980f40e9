"""XenoLinux proper: the root filesystem, init, exec and the system calls.

Rules:
1. Boot continues where domains.xenolinux.kernel leaves off: when xvda's
   blkfront connects, ext2 is mounted from it and init (pid 1, /bin/init)
   starts. init runs what the command line lists (`init.run=PROG[,ARG...]`,
   repeatable) and a shell on the console. The network (net_glue) comes up
   at once with lo; each netfront joins it when it connects (`ip=` configures it).
2. exec reads the program through the VFS, builds a new address space
   (page tables in our frames, validated by Xen), copies the program into
   text pages, then the old address space, if any, is torn down.
3. Kernel code never trusts a program: a bad program dies, the kernel goes
   on; every system call's error is a -errno.
"""

import errno
import time

from domains.xenolinux import loader, mmprobe, poll
from domains.xenolinux import trace as T
from domains.xenolinux.blockdev import BlockDevice
from domains.xenolinux.fs.bcache import BufferCache
from domains.xenolinux.fs.ext2 import Ext2
from domains.xenolinux.net_glue import NetGlue, ip_config
from domains.xenolinux.procmm import ProcessMemory
from domains.xenolinux.sched import INIT_PID, Scheduler
from domains.xenolinux.syscalls import TABLE
from domains.xenolinux.task import Task, Wait, wait_driver
from domains.xenolinux.tty import Tty
from domains.xenolinux.vfs import NullDevice, OpenFile, Vfs, ZeroDevice, is_dir
from domains.xenolinux.vm import AddressSpace, cpu_for

CACHE_BLOCKS = 2048
DEFAULT_VMMAX = 0xC000_0000
ROOT_INO = 2
INIT = "/bin/init"
SH = "/bin/sh"


def cmdline_opts(cmdline: str) -> tuple[dict[str, str], list[list[str]]]:
    """key=value words, and the init.run= programs (commas separate args)."""
    opts, runs = {}, []
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key == "init.run" and value:
            runs.append(value.split(","))
        elif value:
            opts[key] = value
    return opts, runs


class XenoLinux:
    def __init__(self, guest) -> None:
        self.g, self.k, self.printk = guest, guest.kernel, guest.printk
        opts, self.init_runs = cmdline_opts(guest.si.cmdline)
        self.vmmax = int(opts.get("vmmax", str(DEFAULT_VMMAX)), 0)
        self.tty = Tty(guest.console, on_interrupt=self._interrupt_foreground)
        self.vfs = Vfs({"console": self.tty, "null": NullDevice(), "zero": ZeroDevice()})
        self.cpu = cpu_for(self.k)
        self.waits: dict = {Wait: wait_driver, poll.WaitAny: poll.driver(self.k)}
        self.sched = Scheduler(self.k, self.printk, TABLE, self.waits)
        self.sched.os = self
        self.block: BlockDevice | None = None
        self.cache: BufferCache | None = None
        guest.before_shutdown = self._sync_then
        self.net = NetGlue(self.k, self.printk, ip_config(guest.si.cmdline, self.printk))
        self._attach_netdevs(guest)

    # ---- boot ----------------------------------------------------------------

    def root_connected(self, front) -> None:
        """xvda is up: mount ext2 from it, then start init."""
        if self.vfs.fs is not None:
            return
        self.block = BlockDevice(front)
        self.waits.update(self.block.waits())
        Task(self._mount(), self.waits, self._mounted).start()

    def _mount(self):
        self.cache = BufferCache(1024, CACHE_BLOCKS)
        fs = yield from Ext2.mount(self.cache, clock=self._clock, trace=T.ext2_hook)
        return fs

    def _mounted(self, fs, exc) -> None:
        if exc is not None:
            self.printk(f"VFS: cannot mount root fs on xvda: {exc}")
            return
        self.vfs.fs = fs
        self.printk(f"VFS: mounted root (ext2 filesystem) on xvda, block size "
                    f"{fs.block_size}")
        self.start_init()

    def _attach_netdevs(self, guest) -> None:
        """Contract §1: netfronts that connect later call on_netdev; those that
        connected while the kernel booted are attached now."""
        guest.on_netdev = self.net.attach
        for dev in list(getattr(guest, "netdevs", {}).values()):
            if getattr(dev, "connected", True):
                self.net.attach(dev)

    @staticmethod
    def _clock() -> int:
        return int(time.time())

    def start_init(self) -> None:
        init = self.sched.new_process(None, "init", [INIT], ROOT_INO, "/")
        console = OpenFile(0, 2, self.tty)
        console.refs = 3
        init.files.update({0: console, 1: console, 2: console})
        argv = [INIT] + [",".join(r) for r in self.init_runs]
        Task(self.load_program(init, INIT, argv), self.waits,
             lambda _v, exc: self._init_loaded(init, exc)).start()

    def _init_loaded(self, init, exc) -> None:
        if exc is not None:
            self.printk(f"Kernel panic - not syncing: no working init found ({exc})")
            return
        self.printk("Freeing unused kernel memory; Run /bin/init as init process")
        self.sched.start(init)

    def _interrupt_foreground(self) -> None:
        """Ctrl-C: the newest process on the console that is not sh or init."""
        for p in sorted(self.sched.procs.values(), key=lambda q: -q.pid):
            if p.alive and p.pid != INIT_PID and p.name != "sh":
                self.sched.signal(p, 15)
                return

    # ---- exec ------------------------------------------------------------------

    def load_program(self, p, path: str, argv: list[str]):
        """Read `path`, give `p` a fresh address space holding it (exec)."""
        f = yield from self.vfs.open(p.cwd, p.cwd_path, path, 0)
        st = yield from self.vfs.fstat(f)
        if is_dir(st.mode):
            raise OSError(errno.EACCES, f"{path}: is a directory")
        if st.size > loader.MAX_PROGRAM:
            raise OSError(errno.E2BIG, f"{path}: program too large")
        image = yield from self.vfs.read(f, st.size)
        code = loader.compile_program(image, path)
        T.stamp(T.ASPACE_CREATE, T.current(), self.vmmax, p.pid)
        mm = ProcessMemory(self.k, AddressSpace(self.k, self.vmmax), self.cpu)
        mm.pid = p.pid
        mm.load_text(image)
        T.stamp(T.PROC_EXEC, p.trace_id, p.pid, len(image), path[-48:])
        self._install(p, mm, code, path, argv)

    def _install(self, p, mm, code, path: str, argv: list[str]) -> None:
        old, p.mm = p.mm, mm
        try:
            coro = loader.instantiate(code, argv, mm.load, mm.store, self.sched.preempt_due)
        except BaseException as err:
            p.mm = old
            mm.destroy()
            raise OSError(errno.ENOEXEC, f"{path}: {err}") from None
        if p.coro is not None:
            p.coro.close()
        p.coro, p.argv, p.name = coro, argv, path.rsplit("/", 1)[-1]
        if old is not None:
            old.destroy()

    # ---- Xen's refusals, shown on purpose --------------------------------------

    def mmu_probe(self, p, kind: str) -> int:
        return mmprobe.probe(self.k, p.mm, kind)

    def _sync_then(self, shutdown) -> None:
        """A clean shutdown: every dirty buffer reaches the disk first."""
        def synced(_value, exc) -> None:
            self.printk("sd: synchronizing caches" + (f": {exc}" if exc else ": done"))
            shutdown()
        Task(self.vfs.sync(), self.waits, synced).start()
