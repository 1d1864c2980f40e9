"""The hypervisor: the domain table, its processes and the hypercall socket.

Rules:
1. One ROUTER socket; a frame counts only if its routing id is the secret of
   a live domain. Unknown ids are dropped without a reply.
2. A hypercall gets exactly one reply, except SCHEDOP_block/poll (the reply
   is the wake-up, sent when an event is pending) and SCHEDOP_shutdown (the
   vCPU never runs again). A paused domain's hypercalls are held.
3. An upcall is sent only when EventChannels says upcall_pending went 0->1;
   to a blocked domain the upcall *is* the reply to its SCHEDOP_block.
4. Nothing a guest sends may raise out of the dispatcher: every handler
   validates; a bug is logged to the Xen console and answered -EINVAL.
5. Domain-0 that dies is torn down like any domain (its ports close, so the
   DomUs' ends go unbound; its grant mappings and IOMMU entries go), and a
   new Domain-0 is built with domid 0, the same kernel and SIF_DOM0_RESTART:
   every DomU keeps running. A Domain-0 that dies more than
   DOM0_RESTART_BURST times within DOM0_RESTART_WINDOW_S takes the host down.
"""

import heapq
import os
import secrets
import select
import signal
import socket
import time
import traceback

import zmq

# hc_mmu registers the mmu_update/mmuext_op handlers in hypercalls.TABLE.
from hypervisor import hc_mmu, hypercalls, spawn  # noqa: F401
from hypervisor.args import BadArg
from hypervisor.devices import DevicesMixin
from hypervisor.domain import Domain, DomState
from hypervisor.event_channel import EventChannels
from hypervisor.grant_table import GrantTables
from hypervisor.iommu import Iommu
from hypervisor.memory import MemoryObject
from hypervisor.mm import FrameTable
from hypervisor.public import envelope
from hypervisor.public.event_channel import SHARED_INFO_SIZE
from hypervisor.public.grant_table import DEFAULT_MAX_GRANT_FRAMES
from hypervisor.public.start_info import (
    SIF_DOM0_RESTART,
    SIF_INITDOMAIN,
    SIF_PRIVILEGED,
    START_INFO_PFN,
    StartInfo,
)
from hypervisor.public.xen import PAGE_SIZE, Errno, Hypercall, ShutdownReason, Virq
from hypervisor.xenconsole import ConsoleRing

DOM0_RESTART_BURST = 2  # restarts allowed ...
DOM0_RESTART_WINDOW_S = 30.0  # ... within this window; the next death crashes the host
_SNDMORE = int(zmq.SNDMORE)
_EVENTS, _POLLIN, _RCVMORE = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE)
POSTED_ERRORS_LOGGED = 5  # per domain, then one line per thousand
# The dispatcher's hot path compares plain ints and identities: no enum lookups.
_MULTICALL, _POSTED = int(Hypercall.multicall), envelope.POSTED
_PAUSED, _CREATED, _SHUTDOWN = DomState.paused, DomState.created, DomState.shutdown
_BLOCKED, _RUNNING = DomState.blocked, DomState.running
_TABLE = hypercalls.TABLE


def _is_call(c) -> bool:
    """A multicall entry: [hypercall, cmd, args] with int numbers."""
    return type(c) is list and len(c) == 3 and type(c[0]) is int and type(c[1]) is int


class HostCrash(Exception):
    """Domain 0 died once too often (rule 5): the host goes down."""


class NoMachineFrames(BadArg):
    """No machine-frame range left for a new domain (hypervisor.mm Rule 1)."""

    errno = Errno.ENOMEM


class Hypervisor(DevicesMixin):
    def __init__(self, host: str, rundir: str, endpoint: str, memory_mib: int, cpus: int,
                 firmware_fd: int = -1):
        self.host, self.rundir, self.endpoint = host, rundir, endpoint
        self.total_pages = memory_mib * 1024 * 1024 // PAGE_SIZE
        self.cpus = cpus
        self.boot_ns = time.monotonic_ns()
        self.console = ConsoleRing(os.path.join(rundir, "xen.log"))
        self.domains: dict[int, Domain] = {}
        self.by_secret: dict[bytes, Domain] = {}
        self.procs: dict[int, object] = {}
        self.ctl: dict[int, socket.socket] = {}
        self.next_domid = 0
        self.timers: list[tuple[int, int, int]] = []
        self.evtchn = EventChannels(self.kick)
        self.gnttab = GrantTables()
        self.mm = FrameTable()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(endpoint)
        self.sends = self.sends_seen = 0  # frames sent; as of on_router's last look
        self.pidfds: dict[int, Domain] = {}
        self._pidfds_changed = True
        self.pollers: set[Domain] = set()  # domains blocked in SCHEDOP_poll
        self._init_devices(firmware_fd)  # hypervisor.devices
        self.iommu = Iommu()
        self.running = True
        self.dom0_args: tuple[int, int, str] | None = None  # build_dom0's, for a restart
        self.dom0_deaths: list[float] = []  # monotonic times of recent Domain-0 deaths

    # ---- domains -------------------------------------------------------

    def free_pages(self) -> int:
        used = sum(d.nr_pages for d in self.domains.values())
        return self.total_pages - used

    def create_domain(self, name: str, memory_kib: int, vcpus: int, privileged: bool,
                      kernel: str, max_grant_frames: int = DEFAULT_MAX_GRANT_FRAMES,
                      domid: int | None = None) -> Domain:
        nr_pages = memory_kib * 1024 // PAGE_SIZE
        if nr_pages > self.free_pages():
            raise BadArg("out of memory")  # mapped to -ENOMEM by the caller
        if domid is None:
            domid = self.next_domid
            self.next_domid += 1
        mem = MemoryObject(f"xenolab-d{domid}-mem", nr_pages * PAGE_SIZE)
        if self.mm.add_domain(domid, nr_pages, mem.view, privileged) < 0:
            mem.close()
            raise NoMachineFrames("no machine frames left")
        shinfo = MemoryObject(f"xenolab-d{domid}-shared-info", PAGE_SIZE)
        dom = Domain(domid, name, memory_kib, vcpus, privileged, secrets.token_bytes(16),
                     mem, shinfo, max_grant_frames)
        self.domains[domid] = dom
        self.by_secret[dom.secret] = dom
        self.evtchn.add_domain(domid, shinfo.view[:SHARED_INFO_SIZE], privileged, vcpus)
        self.gnttab.add_domain(domid, mem.view, nr_pages, dom.grant_table_pfn,
                               max_grant_frames, privileged)
        self._spawn(dom, kernel)
        self.console.write(f"Domain {domid} ({name}) created: {memory_kib // 1024} MiB, "
                           f"{vcpus} vCPU, pid {dom.pid}")
        return dom

    def _spawn(self, dom: Domain, kernel: str) -> None:
        boot = {"domid": dom.domid, "name": dom.name, "secret": dom.secret,
                "endpoint": self.endpoint, "kernel": kernel, "privileged": dom.privileged,
                "nr_pages": dom.nr_pages, "grant_table_pfn": dom.grant_table_pfn,
                "max_grant_frames": dom.max_grant_frames, "rundir": self.rundir,
                "mfn_base": self.mm.mfn_base(dom.domid),
                "host": self.host, "xen_pid": os.getpid()}
        log = os.path.join(self.rundir, "logs", f"{dom.name}.{dom.domid}.log")
        proc, ctl = spawn.spawn_domain(boot, dom.mem.fd, dom.shared_info.fd, log)
        dom.pid = proc.pid
        dom.pidfd = os.pidfd_open(proc.pid)
        self.procs[dom.domid] = proc
        self.ctl[dom.domid] = ctl
        self.pidfds[dom.pidfd] = dom
        self._pidfds_changed = True

    def build_dom0(self, memory_mib: int, vcpus: int, kernel: str,
                   restart: bool = False) -> Domain:
        """Xen builds Domain-0 itself (no toolstack yet) and starts it."""
        self.dom0_args = (memory_mib, vcpus, kernel)
        dom = self.create_domain("Domain-0", memory_mib * 1024, vcpus, True, kernel, domid=0)
        self.next_domid = max(self.next_domid, 1)
        flags = SIF_PRIVILEGED | SIF_INITDOMAIN | (SIF_DOM0_RESTART if restart else 0)
        raw = StartInfo(dom.nr_pages, flags, 0, 0, 0, 0).pack()
        dom.mem.view[START_INFO_PFN * PAGE_SIZE:START_INFO_PFN * PAGE_SIZE + len(raw)] = raw
        for dev in self.devices.values():
            if dev.up:  # before Dom0 runs: its MMIO "init" must find the new memory
                dev.doms_given.discard(0)
                self.iommu.give_memory(dev, 0, dom.mem)
        self.unpause(dom)
        return dom

    def restart_dom0(self, old: Domain) -> None:
        """Rule 5: tear the dead Domain-0 down and build a new one."""
        now = time.monotonic()
        self.dom0_deaths = [t for t in self.dom0_deaths if now - t < DOM0_RESTART_WINDOW_S]
        self.dom0_deaths.append(now)
        if len(self.dom0_deaths) > DOM0_RESTART_BURST or self.dom0_args is None:
            raise HostCrash(f"Domain 0 crashed {len(self.dom0_deaths)} times in "
                            f"{DOM0_RESTART_WINDOW_S:.0f} s")
        old.shutdown_reason = None
        old.transition("crash")
        self._kill(old)
        old.transition("destroy")
        self._reap_if_unmapped(old)
        if 0 in self.domains:
            raise HostCrash("Domain 0 crashed and its memory is still mapped")
        self.console.write("Domain-0 restarting; the other domains keep running")
        try:
            self.build_dom0(*self.dom0_args, restart=True)
        except (BadArg, OSError) as exc:
            raise HostCrash(f"Domain 0 could not be rebuilt: {exc}") from None

    def pause(self, dom: Domain) -> None:
        if dom.state is DomState.created:
            return
        dom.paused_before = dom.state
        dom.transition("pause")
        os.kill(dom.pid, signal.SIGSTOP)

    def unpause(self, dom: Domain) -> None:
        first = dom.state is DomState.created
        dom.transition("unpause")
        if not first:
            os.kill(dom.pid, signal.SIGCONT)
            if dom.paused_before is DomState.blocked and dom.block_seq is not None:
                dom.state = DomState.blocked
        held, dom.held = dom.held, []
        for frame in held:
            self.handle_frame(dom, frame)
        if dom.kick_deferred:
            dom.kick_deferred = False
            self.kick(dom.domid)

    def shutdown(self, dom: Domain, reason: int) -> None:
        dom.shutdown_reason = ShutdownReason(reason)
        dom.transition("shutdown")
        dom.block_seq = None
        self.console.write(f"Domain {dom.domid} ({dom.name}) shut down: "
                           f"{dom.shutdown_reason.name}")
        if dom.privileged and dom.domid == 0:
            self.running = False  # Dom0 shutting down powers the host off
            return
        self.evtchn.raise_global_virq(Virq.DOM_EXC)

    def destroy(self, dom: Domain) -> None:
        """domctl destroydomain: pull the power cord, then reap."""
        was_dead = not dom.alive
        dom.transition("destroy")
        proc = self.procs.get(dom.domid)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if not was_dead:
            self._kill(dom)
        self._reap_if_unmapped(dom)

    def _kill(self, dom: Domain) -> None:
        """domain_kill: ports closed (peers go unbound), mappings released."""
        self._forget_process(dom)
        self.pollers.discard(dom)
        self.iommu.unmap_all(dom.domid)
        self.mm.remove_domain(dom.domid)  # its page tables go; its range may linger
        self.evtchn.remove_domain(dom.domid)
        for granter in self.gnttab.release_mappings(dom.domid):
            g = self.domains.get(granter)
            if g is not None and g.state is DomState.dying:
                self._reap_if_unmapped(g)
        self.by_secret.pop(dom.secret, None)
        self.timers = [t for t in self.timers if t[1] != dom.domid]
        heapq.heapify(self.timers)

    def _forget_process(self, dom: Domain) -> None:
        if dom.pidfd >= 0:
            del self.pidfds[dom.pidfd]
            self._pidfds_changed = True
            os.close(dom.pidfd)
            dom.pidfd = -1
        ctl = self.ctl.pop(dom.domid, None)
        if ctl is not None:
            ctl.close()
        proc = self.procs.pop(dom.domid, None)
        if proc is not None:
            dom.exit_status = proc.poll()

    def _reap_if_unmapped(self, dom: Domain) -> None:
        if self.gnttab.mapped_by_others(dom.domid):
            self.console.write(f"Domain {dom.domid} has active grants: kept as a zombie")
            return
        self.gnttab.remove_domain(dom.domid)
        self.domains.pop(dom.domid, None)
        dom.mem.close()
        dom.shared_info.close()
        self.console.write(f"Domain {dom.domid} ({dom.name}) destroyed")
        self.evtchn.raise_global_virq(Virq.DOM_EXC)

    def on_death(self, dom: Domain) -> None:
        """The domain's process exited without being destroyed: a crash."""
        proc = self.procs.get(dom.domid)
        status = proc.poll() if proc is not None else None
        self.console.write(f"Domain {dom.domid} ({dom.name}) crashed (exit status {status})")
        if dom.domid == 0:
            self.restart_dom0(dom)
            return
        if dom.state is not DomState.shutdown:
            dom.shutdown_reason = None
            dom.transition("crash")
        self._kill(dom)
        self.evtchn.raise_global_virq(Virq.DOM_EXC)

    def cpu_time(self, dom: Domain) -> int:
        proc = self.procs.get(dom.domid)
        if proc is not None and proc.poll() is None:
            try:
                with open(f"/proc/{dom.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])
                dom.cpu_time_ns = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                pass
        return dom.cpu_time_ns

    # ---- events and replies -------------------------------------------

    def kick(self, domid: int) -> None:
        """Deliver an upcall: wake a blocked domain, else send UPCALL."""
        dom = self.domains.get(domid)
        if dom is None or not dom.alive:
            return
        state = dom.state
        if state is _PAUSED or state is _CREATED:
            dom.kick_deferred = True
        elif dom.block_seq is not None:
            self.wake(dom)
        elif state is not _SHUTDOWN:
            self._send(dom.secret, envelope.UPCALL_FRAME)

    def wake(self, dom: Domain) -> None:
        seq, dom.block_seq = dom.block_seq, None
        if dom.state is _BLOCKED:
            dom.state = _RUNNING  # TRANSITIONS' (blocked, "wake") row
        self._send(dom.secret, envelope.encode_reply(seq, 0, None))

    def reply(self, dom: Domain, seq: int, rc: int, out=None) -> None:
        self._send(dom.secret, envelope.encode_reply(seq, rc, out))

    def _send(self, ident: bytes, frame: bytes) -> None:
        sock = self.sock
        sock.send(ident, _SNDMORE)
        sock.send(frame)
        self.sends += 1  # the loop's edge check (loop())

    def arm_timer(self, dom: Domain, deadline_ns: int) -> None:
        dom.timer_ns = deadline_ns
        if deadline_ns:
            heapq.heappush(self.timers, (deadline_ns, dom.domid, deadline_ns))

    def run_timers(self) -> None:
        now = time.monotonic_ns()
        while self.timers and self.timers[0][0] <= now:
            _, domid, armed = heapq.heappop(self.timers)
            dom = self.domains.get(domid)
            if dom is None:
                continue
            if dom.poll is not None and dom.poll[2] == armed:
                self._end_poll(dom)
            if dom.timer_ns == armed:
                dom.timer_ns = 0
                self.evtchn.raise_virq(domid, Virq.TIMER)

    def check_polls(self) -> None:
        for dom in list(self.pollers):
            if dom.poll is None or self.evtchn.poll(dom.domid, dom.poll[1]):
                self._end_poll(dom)

    def start_poll(self, dom: Domain, seq: int, ports: list[int], deadline: int) -> None:
        dom.poll = (seq, ports, deadline)
        self.pollers.add(dom)
        if deadline:
            heapq.heappush(self.timers, (deadline, dom.domid, deadline))

    def _end_poll(self, dom: Domain) -> None:
        self.pollers.discard(dom)
        if dom.poll is not None:
            seq, dom.poll = dom.poll[0], None
            self.reply(dom, seq, 0)

    # ---- memory handed to other domains ---------------------------------

    def send_memory(self, mapper: Domain, granter: Domain, foreign: bool) -> None:
        """Give the mapper the granter's memory object (once per granter for
        grant maps; every time for a privileged foreign map, which the
        caller unmaps itself).

        Model difference: Linux cannot hand out an fd for one page, so the
        mapper's kernel holds an fd for the granter's whole memory. Isolation
        is enforced here, at the hypercall: the mapper's kernel library maps
        only frames that a map_grant_ref returned, and releases the object
        when its last mapping of that granter goes.
        """
        if not foreign and granter.domid in mapper.fds_given:
            return
        ctl = self.ctl.get(mapper.domid)
        if ctl is None or granter.mem.fd < 0:
            return
        spawn.send_memory(ctl, {"dom": granter.domid, "nr_pages": granter.nr_pages},
                          granter.mem.fd)
        if not foreign:
            mapper.fds_given.add(granter.domid)

    def unmap_grant(self, mapper: Domain, handle: int) -> int:
        mapping = self.gnttab.mappings_of(mapper.domid).get(handle)
        status = self.gnttab.unmap_grant_ref(mapper.domid, handle)
        if status != 0 or mapping is None:
            return status
        self.iommu.unmap(mapper.domid, handle)
        granter = mapping[0]
        if not any(m[0] == granter for m in self.gnttab.mappings_of(mapper.domid).values()):
            mapper.fds_given.discard(granter)
        g = self.domains.get(granter)
        if g is not None and g.state is DomState.dying:
            self._reap_if_unmapped(g)
        return status

    # ---- hypercall dispatch --------------------------------------------

    def handle_frame(self, dom: Domain, frame: bytes) -> None:
        state = dom.state
        if state is _PAUSED or state is _CREATED:
            dom.held.append(frame)
            return
        if state is _SHUTDOWN or not dom.alive:
            return  # its vCPU no longer runs
        try:
            seq, hc, cmd, args = envelope.decode_request_fields(frame)
        except envelope.EnvelopeError:
            self.reply(dom, 0, -Errno.EINVAL)
            return
        if dom.block_seq is not None:
            self.wake(dom)  # it is running again: its block is over
        if hc == _MULTICALL:
            last = self._multicall(dom, seq, args)
            if last is None:
                return
            hc, cmd, args = last
        result = self._call(dom, hc, cmd, args, seq)
        if seq == _POSTED:
            if result is not None and result[0] < 0:
                self._posted_failed(dom, hc, cmd, result[0])
        elif result is not None:
            self.reply(dom, seq, *result)

    def _multicall(self, dom: Domain, seq: int, calls):
        """Run all but the last entry posted; return the last (hc, cmd, args)."""
        if type(calls) is not list or not 0 < len(calls) <= hypercalls.MAX_BATCH or not all(
                map(_is_call, calls)):
            self.reply(dom, seq, -Errno.EINVAL)
            return None
        for hc, cmd, args in calls[:-1]:
            result = self._call(dom, hc, cmd, args, _POSTED)
            if result is not None and result[0] < 0:
                self._posted_failed(dom, hc, cmd, result[0])
        last = calls[-1]
        if last[0] == _MULTICALL:
            self.reply(dom, seq, -Errno.EINVAL)
            return None
        return last

    def _call(self, dom: Domain, hc: int, cmd: int, args, seq: int):
        handler = _TABLE.get((hc, cmd))
        if handler is None:  # multicall itself is not in the table
            return (-Errno.ENOSYS, None)
        try:
            return handler(self, dom, seq, args)
        except BadArg as exc:
            return (-exc.errno, None)
        except Exception:  # a bug must not take the host down: log it
            self.console.write("hypercall handler failed:\n" + traceback.format_exc())
            return (-Errno.EINVAL, None)

    def _posted_failed(self, dom: Domain, hc: int, cmd: int, rc: int) -> None:
        """A posted call has no reply to carry its error (envelope rule 3): Xen
        logs it instead, the first few per domain, then every thousandth."""
        dom.posted_errors += 1
        n = dom.posted_errors
        if n <= POSTED_ERRORS_LOGGED or n % 1000 == 0:
            self.console.write(f"d{dom.domid}: posted hypercall {hc}/{cmd} failed: rc {rc}"
                               f" ({n} so far)")

    def on_router(self) -> None:
        """Take every queued hypercall. Frames are read with int flags:
        pyzmq's multipart and enum helpers cost more than the hypercall."""
        sock = self.sock
        by_secret = self.by_secret
        while sock.get(_EVENTS) & _POLLIN:  # a system call: once per frame
            ident = sock.recv()
            msg = sock.recv(copy=False)  # a Frame: .more needs no system call
            if msg.more:  # a well-behaved DEALER sends one frame
                while sock.get(_RCVMORE):
                    sock.recv()
                continue
            dom = by_secret.get(ident)
            if dom is not None:
                self.handle_frame(dom, msg.bytes)
            elif ident in self.device_ids:
                self.handle_device_frame(self.device_ids[ident], msg.bytes)
        self.sends_seen = self.sends

    def _epoll(self, router_fd: int, wakeup_fd: int) -> select.epoll:
        """The loop's poll set. The firmware channel is served before the
        ROUTER in each turn: a replacement device's hello must find its
        secret known (hypervisor.devices)."""
        ep = select.epoll()
        for fd in (*self.firmware_fds(), router_fd, wakeup_fd, *self.pidfds, *self.device_ctls):
            ep.register(fd, select.EPOLLIN)
        return ep

    def loop(self, wakeup_fd: int) -> None:
        """epoll, not zmq_poll: zmq_poll makes four system calls a wake-up
        and polls every fd twice; epoll makes one. The ROUTER's ZMQ_FD only
        says "look"; ZMQ_EVENTS says whether a frame is there, and a send
        may consume the fd's edge, so the loop sleeps only when no send
        happened since on_router's last ZMQ_EVENTS check."""
        router_fd = self.sock.get(zmq.FD)
        ep = None
        try:
            while self.running:
                if self._pidfds_changed:
                    self._pidfds_changed = False
                    if ep is not None:
                        ep.close()
                    ep = self._epoll(router_fd, wakeup_fd)
                self.on_router()
                if self.timers:
                    self.run_timers()
                if self.pollers:
                    self.check_polls()
                if not self.running:
                    break  # Domain-0 powered the host off
                if self.sends != self.sends_seen:
                    continue  # a timer or a poll replied: look at the ROUTER again
                self._sleep(ep, router_fd, wakeup_fd)
        finally:
            if ep is not None:
                ep.close()

    def _sleep(self, ep: select.epoll, router_fd: int, wakeup_fd: int) -> None:
        """Wait for a frame, a death, a device, a signal or the next timer."""
        timeout = -1.0
        if self.timers:
            timeout = max(0.0, (self.timers[0][0] - time.monotonic_ns()) / 1e9)
        for fd, _ in ep.poll(timeout):
            if fd == router_fd:
                continue  # on_router runs first in the next turn
            if fd == wakeup_fd:
                os.read(wakeup_fd, 512)
                self.running = False
            elif fd in self.pidfds:
                self.on_death(self.pidfds[fd])
            else:
                self.on_device_fd(fd)

    def halt(self) -> None:
        """Power off: every domain process is killed and reaped."""
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                proc.kill()
        for proc in list(self.procs.values()):
            proc.wait()
        for dom in list(self.domains.values()):
            self._forget_process(dom)
            self.mm.remove_domain(dom.domid)
            dom.mem.close()
            dom.shared_info.close()
        self.close_devices()
        self.iommu.close()
        self.console.write("System halted")
        self.sock.close(0)
        self.ctx.term()
        self.console.close()
