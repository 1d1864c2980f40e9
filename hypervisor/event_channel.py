"""Event channels: the hypervisor's evtchn core (event_channel.c, event_2l.c), sans-IO.

Rule 1 -- who writes what. Each domain's ``shared_info`` page is shared with
its guest. Xen (this module) *sets* ``pending[port]`` 0->1 and vCPU 0's
``evtchn_upcall_pending`` 0->1; the guest clears them. The guest alone writes
``mask[port]`` and ``evtchn_upcall_mask``; Xen only reads them, except that
EVTCHNOP_unmask clears a mask byte on the guest's behalf and freeing a port
clears its stale pending byte (evtchn_free). Any nonzero byte counts as set.

Rule 2 -- delivery (evtchn_2l_set_pending with bytes, see public/event_channel):
  a. pending[port] already set: the send is coalesced; nothing else happens.
  b. else set it; if mask[port] is set the edge is kept only in pending.
  c. else if upcall_pending is clear, set it, and if the guest's upcall mask
     is clear call ``kick(domid)``: that is the one upcall the adapter sends.
     A guest that clears its upcall mask must check upcall_pending itself.
  EVTCHNOP_unmask re-runs (c) for a pending port, so no edge is lost.

Rule 3 -- the model has no bind_vcpu: every port notifies vCPU 0's slot.

Rule 4 -- port 0 is reserved and never allocated; a domain has at most
NR_EVENT_CHANNELS ports. The lowest free port is allocated first.

Rule 5 -- close and death (evtchn_close, evtchn_destroy): the peer of a
closed interdomain port goes back to UNBOUND with remote_domid = the closer;
nothing is signalled, and later sends to it are dropped with rc 0.

Rule 6 -- hypercall-level methods never raise on guest input: they return a
port, 0, a status dict, or a negated Errno.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeGuard

from hypervisor.public import hops, trace
from hypervisor.public.event_channel import (
    EVTCHN_MASK_OFFSET,
    EVTCHN_PENDING_OFFSET,
    LEGACY_MAX_VCPUS,
    NR_EVENT_CHANNELS,
    SHARED_INFO_SIZE,
    VCPU_UPCALL_MASK,
    VCPU_UPCALL_PENDING,
    EvtchnStat,
)
from hypervisor.public.xen import DOMID_FIRST_RESERVED, DOMID_SELF, GLOBAL_VIRQS, Errno, Virq

NR_PIRQS = 256
_VALID_VIRQS = frozenset(int(v) for v in Virq)
_INTERDOMAIN, _UNBOUND = int(EvtchnStat.interdomain), int(EvtchnStat.unbound)


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _in_range(x: object, limit: int) -> TypeGuard[int]:
    return _is_int(x) and 0 <= x < limit


def _is_domid(x: object) -> bool:
    return _in_range(x, DOMID_FIRST_RESERVED)


@dataclass(slots=True)
class _Channel:
    """Xen's struct evtchn; the meaning of remote_dom depends on state."""

    state: EvtchnStat
    remote_dom: int = 0  # unbound: who may bind; interdomain: the peer
    remote_port: int = 0
    virq: int = -1
    pirq: int = -1
    vcpu: int = 0


@dataclass(slots=True)
class _Domain:
    domid: int
    shared: memoryview
    privileged: bool
    vcpus: int
    ports: dict[int, _Channel] = field(default_factory=dict)
    free: list[int] = field(default_factory=lambda: list(range(1, NR_EVENT_CHANNELS)))
    virqs: dict[tuple[int, int], int] = field(default_factory=dict)  # (virq, vcpu) -> port


@dataclass(frozen=True, slots=True)
class PortInfo:
    """Debug view of one port (``port_info``)."""

    domid: int
    port: int
    state: EvtchnStat
    remote_dom: int
    remote_port: int
    virq: int
    pirq: int
    vcpu: int
    pending: bool
    masked: bool


@dataclass(frozen=True, slots=True)
class EvtchnStatistics:
    domains: int
    unbound: int
    interdomain: int
    virq: int
    pirq: int
    sends: int  # EVTCHNOP_send that reached a bound peer
    dropped: int  # EVTCHNOP_send on an UNBOUND port
    notifications: int  # set_pending attempts (sends, binds, VIRQs, PIRQs)
    coalesced: int  # ... that found the port already pending
    masked: int  # ... that found the port masked
    kicks: int  # upcalls requested from the adapter


_COUNTED = ("sends", "dropped", "notifications", "coalesced", "masked", "kicks")


class EventChannels:
    """Every domain's event channels, plus the global VIRQ and PIRQ routing."""

    def __init__(
        self,
        kick: Callable[[int], None],
        on_pending: Callable[[int, int], None] | None = None,
    ) -> None:
        """``kick(domid)``: deliver an upcall (Rule 2c). ``on_pending(domid,
        port)``: called on every 0->1 pending edge, masked or not, so a
        scheduler can wake a vCPU blocked in SCHEDOP_poll (evtchn_check_pollers)."""
        self._kick = kick
        self._on_pending = on_pending
        self._domains: dict[int, _Domain] = {}
        self._global_handler: dict[int, int] = {}  # virq -> handler domid
        self._pirqs: dict[int, tuple[int, int]] = {}  # pirq -> (domid, port)
        self._n: Counter[str] = Counter()  # statistics() counters
        # EVTCHNOP_send per sending domain: not in Xen's getdomaininfo; the model
        # reports it there so a benchmark can count notifications per packet.
        self.sends_from: Counter[int] = Counter()

    # -- domains ---------------------------------------------------------

    def add_domain(
        self, domid: int, shared_info: memoryview, privileged: bool = False, vcpus: int = 1
    ) -> int:
        """Register a domain and its shared_info page. 0, -EEXIST or -EINVAL."""
        if not _is_domid(domid) or not _in_range(vcpus, LEGACY_MAX_VCPUS + 1) or vcpus < 1:
            return -Errno.EINVAL
        if domid in self._domains:
            return -Errno.EEXIST
        shared = _byte_view(shared_info)
        if shared is None:
            return -Errno.EINVAL
        self._domains[domid] = _Domain(domid, shared, bool(privileged), vcpus)
        return 0

    def remove_domain(self, domid: int) -> int:
        """evtchn_destroy: close every port of a dead domain. 0 or -ESRCH.
        Call it before unmapping the domain's shared_info."""
        d = self._get(domid)
        if d is None:
            return -Errno.ESRCH
        del self._domains[domid]
        self.sends_from.pop(domid, None)  # a restarted Domain-0 counts from 0 again
        for port, chn in sorted(d.ports.items()):
            # The dead domain's memory may already be gone: don't touch it.
            self._close(d, port, chn, touch_memory=False)
        d.shared.release()  # so the adapter can close the page's mmap
        return 0

    def domains(self) -> list[int]:
        return sorted(self._domains)

    # -- binding -----------------------------------------------------------

    def alloc_unbound(self, caller: int, dom: int, remote_dom: int) -> int:
        """EVTCHNOP_alloc_unbound: a port in ``dom`` that only ``remote_dom`` may bind."""
        c = self._get(caller)
        if c is None:
            return -Errno.ESRCH
        d = self._target(c, dom)
        if isinstance(d, int):
            return d
        # DOMID_SELF names the caller, not ``dom`` (Xen does the same).
        remote = c.domid if remote_dom == DOMID_SELF else remote_dom
        if not _is_domid(remote):
            return -Errno.EINVAL
        return self._new_port(d, _Channel(EvtchnStat.unbound, remote_dom=remote))

    def bind_interdomain(self, caller: int, remote_dom: int, remote_port: int) -> int:
        """EVTCHNOP_bind_interdomain. The new local port starts pending,
        because sends to the unbound remote end may have been dropped."""
        ld = self._get(caller)
        if ld is None:
            return -Errno.ESRCH
        rd = self._get(ld.domid if remote_dom == DOMID_SELF else remote_dom)
        if rd is None:
            return -Errno.ESRCH
        rchn = self._channel(rd, remote_port)
        if rchn is None or rchn.state != EvtchnStat.unbound or rchn.remote_dom != ld.domid:
            return -Errno.EINVAL
        lport = self._new_port(ld, _Channel(EvtchnStat.interdomain, rd.domid, remote_port))
        if lport < 0:
            return lport
        rchn.state, rchn.remote_dom, rchn.remote_port = EvtchnStat.interdomain, ld.domid, lport
        self._set_pending(ld, lport)
        return lport

    def bind_virq(self, caller: int, virq: int, vcpu: int = 0) -> int:
        """EVTCHNOP_bind_virq. Per-vCPU VIRQs once per vCPU; a global VIRQ on
        vCPU 0 of one handler domain at a time; DOM_EXC is privileged."""
        d = self._get(caller)
        if d is None:
            return -Errno.ESRCH
        if not _is_int(virq) or virq not in _VALID_VIRQS or not _is_int(vcpu):
            return -Errno.EINVAL
        is_global = virq in GLOBAL_VIRQS
        if is_global and vcpu != 0:
            return -Errno.EINVAL
        if not 0 <= vcpu < d.vcpus:
            return -Errno.ENOENT
        rc = self._check_virq_owner(d, virq, vcpu, is_global)
        if rc:
            return rc
        port = self._new_port(d, _Channel(EvtchnStat.virq, virq=virq, vcpu=vcpu))
        if port > 0:
            d.virqs[(virq, vcpu)] = port
            if is_global:
                self._global_handler[virq] = d.domid
        return port

    def _check_virq_owner(self, d: _Domain, virq: int, vcpu: int, is_global: bool) -> int:
        if virq in (Virq.DOM_EXC, Virq.DEVICE) and not d.privileged:
            return -Errno.EPERM
        if is_global and self._global_handler.get(virq, d.domid) != d.domid:
            return -Errno.EBUSY
        if (virq, vcpu) in d.virqs:
            return -Errno.EEXIST
        return 0

    def bind_pirq(self, caller: int, pirq: int) -> int:
        """EVTCHNOP_bind_pirq: route a physical IRQ to a privileged domain."""
        d = self._get(caller)
        if d is None:
            return -Errno.ESRCH
        if not d.privileged:
            return -Errno.EPERM
        if not _in_range(pirq, NR_PIRQS):
            return -Errno.EINVAL
        if pirq in self._pirqs:
            return -Errno.EEXIST if self._pirqs[pirq][0] == d.domid else -Errno.EBUSY
        port = self._new_port(d, _Channel(EvtchnStat.pirq, pirq=pirq))
        if port > 0:
            self._pirqs[pirq] = (d.domid, port)
        return port

    def close(self, caller: int, port: int) -> int:
        """EVTCHNOP_close. A free, reserved or out-of-range port is -EINVAL."""
        d = self._get(caller)
        if d is None:
            return -Errno.ESRCH
        chn = self._channel(d, port)
        if chn is None:
            return -Errno.EINVAL
        self._close(d, port, chn, touch_memory=True)
        return 0

    def _close(self, d: _Domain, port: int, chn: _Channel, touch_memory: bool) -> None:
        del d.ports[port]
        heapq.heappush(d.free, port)
        if touch_memory:
            d.shared[EVTCHN_PENDING_OFFSET + port] = 0
        if chn.state == EvtchnStat.interdomain:
            self._unbind_peer(chn.remote_dom, chn.remote_port, d.domid, port)
        elif chn.state == EvtchnStat.virq:
            del d.virqs[(chn.virq, chn.vcpu)]
            if self._global_handler.get(chn.virq) == d.domid:
                del self._global_handler[chn.virq]
        elif chn.state == EvtchnStat.pirq:
            del self._pirqs[chn.pirq]

    def _unbind_peer(self, peer_dom: int, peer_port: int, closer: int, port: int) -> None:
        peer = self._domains.get(peer_dom)
        chn = peer.ports.get(peer_port) if peer is not None else None
        if chn is None or chn.state != EvtchnStat.interdomain:
            return  # a loopback peer already freed by evtchn_destroy
        if (chn.remote_dom, chn.remote_port) == (closer, port):
            chn.state, chn.remote_dom, chn.remote_port = EvtchnStat.unbound, closer, 0

    # -- signalling ------------------------------------------------------

    def send(self, caller: int, port: int) -> int:
        """EVTCHNOP_send: mark the peer pending; UNBOUND drops silently (0).
        The hottest call of the host: plain lookups, no helper calls."""
        d = self._domains.get(caller) if type(caller) is int else self._get(caller)
        if d is None:
            return -Errno.ESRCH
        chn = d.ports.get(port) if type(port) is int else self._channel(d, port)
        if chn is None:
            return -Errno.EINVAL
        state = chn.state
        if state != _INTERDOMAIN:
            if state == _UNBOUND:
                self._n["dropped"] += 1
                return 0
            return -Errno.EINVAL
        n = self._n
        n["sends"] += 1
        self.sends_from[caller] += 1
        if hops.on:
            hops.stamp(hops.XEN_SEND, caller, chn.remote_dom)
        peer = self._domains.get(chn.remote_dom)
        if peer is not None:
            if trace.on:
                trace.stamp(trace.XEN_EVTCHN_PENDING, 0, chn.remote_dom, chn.remote_port)
            self._set_pending(peer, chn.remote_port)
        return 0

    def unmask(self, caller: int, port: int) -> int:
        """EVTCHNOP_unmask: clear the mask byte and re-deliver if pending."""
        d = self._get(caller)
        if d is None:
            return -Errno.ESRCH
        if not _in_range(port, NR_EVENT_CHANNELS):
            return -Errno.EINVAL
        d.shared[EVTCHN_MASK_OFFSET + port] = 0
        if d.shared[EVTCHN_PENDING_OFFSET + port]:
            self._mark_events_pending(d, port)
        return 0

    def raise_virq(self, domid: int, virq: int, vcpu: int = 0) -> bool:
        """send_guest_vcpu_virq: signal the domain's port for (virq, vcpu), if bound."""
        d = self._get(domid)
        if d is None or not _is_int(virq) or not _is_int(vcpu):
            return False
        port = d.virqs.get((virq, vcpu))
        if port is None:
            return False
        self._set_pending(d, port)
        return True

    def raise_global_virq(self, virq: int) -> bool:
        """send_global_virq: signal the handler domain, if one has bound it."""
        handler = self._global_handler.get(virq) if _is_int(virq) else None
        return handler is not None and self.raise_virq(handler, virq, 0)

    def raise_pirq(self, pirq: int) -> bool:
        """A device interrupt: signal the port bound to ``pirq``, if any."""
        binding = self._pirqs.get(pirq) if _is_int(pirq) else None
        if binding is None:
            return False
        self._set_pending(self._domains[binding[0]], binding[1])
        return True

    def _set_pending(self, d: _Domain, port: int) -> None:
        """Rule 2 a-b."""
        self._n["notifications"] += 1
        if d.shared[EVTCHN_PENDING_OFFSET + port]:
            self._n["coalesced"] += 1
            return
        d.shared[EVTCHN_PENDING_OFFSET + port] = 1
        if self._on_pending is not None:
            self._on_pending(d.domid, port)
        self._mark_events_pending(d, port)

    def _mark_events_pending(self, d: _Domain, port: int) -> None:
        """Rule 2c (vcpu_mark_events_pending)."""
        si = d.shared
        if si[EVTCHN_MASK_OFFSET + port]:
            self._n["masked"] += 1
            return
        if si[VCPU_UPCALL_PENDING]:
            return
        si[VCPU_UPCALL_PENDING] = 1
        if not si[VCPU_UPCALL_MASK]:
            self._n["kicks"] += 1
            self._kick(d.domid)

    # -- queries ---------------------------------------------------------

    def status(self, caller: int, dom: int, port: int) -> int | dict[str, int]:
        """EVTCHNOP_status: {"status", "vcpu"} plus the state's union fields:
        unbound {"dom"}, interdomain {"dom", "port"}, virq {"virq"}, pirq {"pirq"}."""
        c = self._get(caller)
        if c is None:
            return -Errno.ESRCH
        d = self._target(c, dom)
        if isinstance(d, int):
            return d
        if not _in_range(port, NR_EVENT_CHANNELS):
            return -Errno.EINVAL
        chn = d.ports.get(port)
        if chn is None:
            return {"status": EvtchnStat.closed, "vcpu": 0}
        return {"status": chn.state, "vcpu": chn.vcpu, **_union(chn)}

    def events_pending(self, domid: int) -> bool:
        """Any port pending and unmasked (SCHEDOP_block's wake-up test)."""
        d = self._get(domid)
        if d is None:
            return False
        pending = d.shared[EVTCHN_PENDING_OFFSET:EVTCHN_MASK_OFFSET].tobytes()
        port = pending.find(1)
        while port >= 0:  # usually none or a few: cheaper than a whole-array mask
            if not d.shared[EVTCHN_MASK_OFFSET + port]:
                return True
            port = pending.find(1, port + 1)
        return False

    def poll(self, domid: int, ports: object) -> bool:
        """Any of ``ports`` pending, masked or not (SCHEDOP_poll)."""
        d = self._get(domid)
        if d is None or not isinstance(ports, list | tuple | set | frozenset):
            return False
        return any(
            _in_range(p, NR_EVENT_CHANNELS) and d.shared[EVTCHN_PENDING_OFFSET + p] for p in ports
        )

    def port_info(self, domid: int, port: int) -> PortInfo | None:
        d = self._get(domid)
        if d is None or not _in_range(port, NR_EVENT_CHANNELS):
            return None
        chn = d.ports.get(port) or _Channel(EvtchnStat.closed)
        pending = bool(d.shared[EVTCHN_PENDING_OFFSET + port])
        masked = bool(d.shared[EVTCHN_MASK_OFFSET + port])
        return PortInfo(domid, port, chn.state, chn.remote_dom, chn.remote_port,
                        chn.virq, chn.pirq, chn.vcpu, pending, masked)  # fmt: skip

    def statistics(self) -> EvtchnStatistics:
        states = [c.state for d in self._domains.values() for c in d.ports.values()]
        return EvtchnStatistics(
            domains=len(self._domains),
            unbound=states.count(EvtchnStat.unbound),
            interdomain=states.count(EvtchnStat.interdomain),
            virq=states.count(EvtchnStat.virq),
            pirq=states.count(EvtchnStat.pirq),
            **{f: self._n[f] for f in _COUNTED},
        )

    # -- helpers -----------------------------------------------------------

    def _get(self, domid: object) -> _Domain | None:
        return self._domains.get(domid) if _is_int(domid) else None

    def _target(self, caller: _Domain, dom: int) -> _Domain | int:
        """Resolve ``dom`` for a caller: -ESRCH if unknown, -EPERM if foreign
        and the caller is unprivileged (XSM_TARGET)."""
        d = caller if dom == DOMID_SELF else self._get(dom)
        if d is None:
            return -Errno.ESRCH
        if d is not caller and not caller.privileged:
            return -Errno.EPERM
        return d

    @staticmethod
    def _channel(d: _Domain, port: object) -> _Channel | None:
        return d.ports.get(port) if _is_int(port) else None

    @staticmethod
    def _new_port(d: _Domain, chn: _Channel) -> int:
        if not d.free:
            return -Errno.ENOSPC
        port = heapq.heappop(d.free)
        d.ports[port] = chn
        return port


def _union(chn: _Channel) -> dict[str, int]:
    """The evtchn_status union for a bound port's state."""
    if chn.state == EvtchnStat.unbound:
        return {"dom": chn.remote_dom}
    if chn.state == EvtchnStat.interdomain:
        return {"dom": chn.remote_dom, "port": chn.remote_port}
    if chn.state == EvtchnStat.virq:
        return {"virq": chn.virq}
    return {"pirq": chn.pirq}


def _byte_view(view: object) -> memoryview | None:
    """A writable byte view of a whole shared_info page, or None."""
    if not isinstance(view, memoryview) or view.readonly:
        return None
    try:
        shared = view.cast("B")
    except (TypeError, ValueError):
        return None
    return shared if len(shared) >= SHARED_INFO_SIZE else None
