"""EventChannels core: binding rules, coalescing, close/death and fuzzing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.event_channel import EventChannels, EvtchnStatistics, PortInfo
from hypervisor.public.event_channel import (
    EVTCHN_MASK_OFFSET,
    EVTCHN_PENDING_OFFSET,
    NR_EVENT_CHANNELS,
    SHARED_INFO_SIZE,
    VCPU_UPCALL_MASK,
    VCPU_UPCALL_PENDING,
    EvtchnStat,
)
from hypervisor.public.xen import DOMID_SELF, Errno, Virq

DOM0, D1, D2 = 0, 1, 2


class Host:
    """Three domains' shared_info pages, plus the kicks the core asked for."""

    def __init__(self, vcpus: int = 2) -> None:
        self.kicks: list[int] = []
        self.edges: list[tuple[int, int]] = []
        self.ec = EventChannels(self.kicks.append, on_pending=self._edge)
        self.si = {d: bytearray(SHARED_INFO_SIZE) for d in (DOM0, D1, D2)}
        for d in (DOM0, D1, D2):
            assert self.ec.add_domain(d, memoryview(self.si[d]), d == DOM0, vcpus) == 0

    def _edge(self, domid: int, port: int) -> None:
        self.edges.append((domid, port))

    def pending(self, d: int, port: int) -> int:
        return self.si[d][EVTCHN_PENDING_OFFSET + port]

    def set_mask(self, d: int, port: int, value: int = 1) -> None:
        self.si[d][EVTCHN_MASK_OFFSET + port] = value

    def ack(self, d: int) -> None:
        """What a guest's upcall handler does: clear upcall_pending, then pending bytes."""
        self.si[d][VCPU_UPCALL_PENDING] = 0
        start = EVTCHN_PENDING_OFFSET
        self.si[d][start : start + NR_EVENT_CHANNELS] = bytes(NR_EVENT_CHANNELS)

    def connect(self, a: int, b: int) -> tuple[int, int]:
        """a offers a port to b, b binds it; both ends acked. Returns (port_a, port_b)."""
        pa = self.ec.alloc_unbound(a, DOMID_SELF, b)
        pb = self.ec.bind_interdomain(b, a, pa)
        assert pa > 0 and pb > 0
        self.ack(a)
        self.ack(b)
        self.kicks.clear()
        return pa, pb


@pytest.fixture
def h() -> Host:
    return Host()


# -- alloc_unbound / bind_interdomain ---------------------------------------


def test_port_zero_is_reserved(h: Host) -> None:
    assert h.ec.alloc_unbound(D1, DOMID_SELF, D2) == 1
    assert h.ec.close(D1, 0) == -Errno.EINVAL
    assert h.ec.send(D1, 0) == -Errno.EINVAL


def test_alloc_unbound_permissions(h: Host) -> None:
    assert h.ec.alloc_unbound(D1, D2, D1) == -Errno.EPERM
    assert h.ec.alloc_unbound(D1, D1, D2) == 1  # own id is as good as DOMID_SELF
    assert h.ec.alloc_unbound(D1, 77, D2) == -Errno.ESRCH
    assert h.ec.alloc_unbound(99, DOMID_SELF, D2) == -Errno.ESRCH
    port = h.ec.alloc_unbound(DOM0, D2, D1)  # privileged: in another domain
    assert h.ec.status(D2, DOMID_SELF, port) == {
        "status": EvtchnStat.unbound,
        "vcpu": 0,
        "dom": D1,
    }


def test_alloc_unbound_remote_self_is_the_caller(h: Host) -> None:
    port = h.ec.alloc_unbound(DOM0, D2, DOMID_SELF)
    assert h.ec.status(DOM0, D2, port)["dom"] == DOM0  # type: ignore[index]
    assert h.ec.alloc_unbound(D1, DOMID_SELF, -5) == -Errno.EINVAL
    assert h.ec.alloc_unbound(D1, DOMID_SELF, 1 << 40) == -Errno.EINVAL


def test_bind_interdomain_connects_and_marks_local_pending(h: Host) -> None:
    pa = h.ec.alloc_unbound(D1, DOMID_SELF, D2)
    pb = h.ec.bind_interdomain(D2, D1, pa)
    assert pb == 1
    assert h.pending(D2, pb) == 1 and h.kicks == [D2]
    assert h.ec.status(D1, DOMID_SELF, pa) == {
        "status": EvtchnStat.interdomain,
        "vcpu": 0,
        "dom": D2,
        "port": pb,
    }
    assert h.ec.status(D2, DOMID_SELF, pb)["port"] == pa  # type: ignore[index]


def test_bind_interdomain_rejects_wrong_domain_and_state(h: Host) -> None:
    pa = h.ec.alloc_unbound(D1, DOMID_SELF, D2)
    assert h.ec.bind_interdomain(DOM0, D1, pa) == -Errno.EINVAL  # offered to d2 only
    assert h.ec.bind_interdomain(D2, 42, pa) == -Errno.ESRCH
    assert h.ec.bind_interdomain(D2, D1, pa + 1) == -Errno.EINVAL  # free port
    assert h.ec.bind_interdomain(D2, D1, 1 << 33) == -Errno.EINVAL
    assert h.ec.bind_interdomain(D2, D1, pa) > 0
    assert h.ec.bind_interdomain(D2, D1, pa) == -Errno.EINVAL  # no longer unbound


def test_loopback(h: Host) -> None:
    pa = h.ec.alloc_unbound(D1, DOMID_SELF, DOMID_SELF)
    pb = h.ec.bind_interdomain(D1, DOMID_SELF, pa)
    h.ack(D1)
    h.kicks.clear()
    assert h.ec.send(D1, pb) == 0
    assert h.pending(D1, pa) == 1 and h.kicks == [D1]


# -- delivery and coalescing -----------------------------------------------


def test_send_marks_peer_pending_and_kicks_once(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    assert h.ec.send(D1, pa) == 0
    assert h.pending(D2, pb) == 1
    assert h.si[D2][VCPU_UPCALL_PENDING] == 1
    assert h.kicks == [D2]


def test_second_send_while_pending_is_coalesced(h: Host) -> None:
    pa, _pb = h.connect(D1, D2)
    before = h.ec.statistics().coalesced
    h.ec.send(D1, pa)
    h.ec.send(D1, pa)
    assert h.kicks == [D2]
    assert h.ec.statistics().coalesced == before + 1
    h.ack(D2)
    h.ec.send(D1, pa)
    assert h.kicks == [D2, D2]


def test_pending_port_with_upcall_cleared_is_still_coalesced(h: Host) -> None:
    # The guest cleared upcall_pending and is about to scan: it will see the port.
    pa, pb = h.connect(D1, D2)
    h.ec.send(D1, pa)
    h.si[D2][VCPU_UPCALL_PENDING] = 0
    h.ec.send(D1, pa)
    assert h.kicks == [D2] and h.pending(D2, pb) == 1


def test_upcall_already_pending_no_kick(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    h.si[D2][VCPU_UPCALL_PENDING] = 1
    h.ec.send(D1, pa)
    assert h.pending(D2, pb) == 1 and h.kicks == []


def test_masked_port_no_kick_until_unmask(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    h.set_mask(D2, pb)
    h.ec.send(D1, pa)
    assert h.pending(D2, pb) == 1 and h.kicks == []
    assert h.si[D2][VCPU_UPCALL_PENDING] == 0
    assert not h.ec.events_pending(D2)
    assert h.ec.unmask(D2, pb) == 0
    assert h.si[D2][EVTCHN_MASK_OFFSET + pb] == 0
    assert h.kicks == [D2] and h.ec.events_pending(D2)


def test_unmask_of_idle_port_does_not_kick(h: Host) -> None:
    _pa, pb = h.connect(D1, D2)
    h.set_mask(D2, pb)
    assert h.ec.unmask(D2, pb) == 0
    assert h.kicks == []
    assert h.ec.unmask(D2, NR_EVENT_CHANNELS) == -Errno.EINVAL
    assert h.ec.unmask(D2, -1) == -Errno.EINVAL


def test_upcall_mask_sets_upcall_pending_without_kick(h: Host) -> None:
    pa, _pb = h.connect(D1, D2)
    h.si[D2][VCPU_UPCALL_MASK] = 1
    h.ec.send(D1, pa)
    assert h.si[D2][VCPU_UPCALL_PENDING] == 1 and h.kicks == []


def test_nonzero_mask_byte_counts_as_masked(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    h.set_mask(D2, pb, 0xFF)
    h.ec.send(D1, pa)
    assert h.kicks == [] and not h.ec.events_pending(D2)


def test_on_pending_sees_masked_edges(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    h.edges.clear()
    h.set_mask(D2, pb)
    h.ec.send(D1, pa)
    h.ec.send(D1, pa)
    assert h.edges == [(D2, pb)]


def test_send_on_wrong_states(h: Host) -> None:
    unbound = h.ec.alloc_unbound(D1, DOMID_SELF, D2)
    assert h.ec.send(D1, unbound) == 0  # silently dropped
    virq = h.ec.bind_virq(D1, Virq.TIMER, 0)
    assert h.ec.send(D1, virq) == -Errno.EINVAL
    assert h.ec.send(D1, 500) == -Errno.EINVAL  # free
    assert h.ec.send(D1, NR_EVENT_CHANNELS + 3) == -Errno.EINVAL
    assert h.ec.send(D1, -1) == -Errno.EINVAL
    assert h.ec.send(77, 1) == -Errno.ESRCH
    assert h.kicks == []


# -- close and death -----------------------------------------------------------


def test_close_unbinds_peer_and_drops_sends(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    assert h.ec.close(D2, pb) == 0
    assert h.ec.status(D1, DOMID_SELF, pa) == {
        "status": EvtchnStat.unbound,
        "vcpu": 0,
        "dom": D2,
    }
    assert h.ec.send(D1, pa) == 0
    assert h.kicks == [] and h.ec.statistics().dropped == 1
    assert h.ec.close(D2, pb) == -Errno.EINVAL  # already closed


def test_rebind_after_close_only_by_the_closer(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    h.ec.close(D2, pb)
    assert h.ec.bind_interdomain(DOM0, D1, pa) == -Errno.EINVAL
    pb2 = h.ec.bind_interdomain(D2, D1, pa)
    assert pb2 == pb  # lowest free port is reused
    h.ack(D2)
    h.ec.send(D1, pa)
    assert h.pending(D2, pb2) == 1


def test_close_clears_stale_pending(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    h.ec.send(D1, pa)
    h.ec.close(D2, pb)
    assert h.pending(D2, pb) == 0


def test_close_invalid_ports(h: Host) -> None:
    for port in (0, 1, 5, NR_EVENT_CHANNELS, 1 << 64, -3):
        assert h.ec.close(D1, port) == -Errno.EINVAL


def test_remove_domain_unbinds_peers_silently(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    pa0, p0 = h.connect(D1, DOM0)
    assert h.ec.remove_domain(D1) == 0
    assert h.ec.domains() == [DOM0, D2]
    assert h.ec.status(D2, DOMID_SELF, pb) == {
        "status": EvtchnStat.unbound,
        "vcpu": 0,
        "dom": D1,
    }
    assert h.ec.status(DOM0, DOMID_SELF, p0)["status"] == EvtchnStat.unbound  # type: ignore[index]
    assert h.kicks == [] and h.pending(D2, pb) == 0
    assert h.ec.send(D2, pb) == 0
    assert h.ec.send(D1, pa) == -Errno.ESRCH
    assert h.ec.remove_domain(D1) == -Errno.ESRCH
    assert pa0 > 0


def test_remove_domain_with_loopback_and_bindings(h: Host) -> None:
    pa = h.ec.alloc_unbound(DOM0, DOMID_SELF, DOMID_SELF)
    h.ec.bind_interdomain(DOM0, DOMID_SELF, pa)
    h.ec.bind_virq(DOM0, Virq.DOM_EXC)
    h.ec.bind_pirq(DOM0, 9)
    assert h.ec.remove_domain(DOM0) == 0
    assert h.ec.bind_virq(D1, Virq.CONSOLE) > 0
    assert h.ec.raise_pirq(9) is False
    assert h.ec.raise_global_virq(Virq.DOM_EXC) is False


def test_readd_after_remove(h: Host) -> None:
    h.ec.remove_domain(D2)
    assert h.ec.add_domain(D2, memoryview(bytearray(SHARED_INFO_SIZE))) == 0
    assert h.ec.add_domain(D2, memoryview(bytearray(SHARED_INFO_SIZE))) == -Errno.EEXIST
    assert h.ec.add_domain(5, memoryview(bytearray(100))) == -Errno.EINVAL
    assert h.ec.add_domain(5, memoryview(bytes(SHARED_INFO_SIZE))) == -Errno.EINVAL
    assert h.ec.add_domain(DOMID_SELF, memoryview(bytearray(SHARED_INFO_SIZE))) == -Errno.EINVAL
    assert h.ec.add_domain(5, memoryview(bytearray(SHARED_INFO_SIZE)), vcpus=0) == -Errno.EINVAL


# -- VIRQs and PIRQs ---------------------------------------------------------


def test_bind_virq_timer_per_vcpu(h: Host) -> None:
    p0 = h.ec.bind_virq(D1, Virq.TIMER, 0)
    p1 = h.ec.bind_virq(D1, Virq.TIMER, 1)
    assert p0 > 0 and p1 > 0 and p0 != p1
    assert h.ec.bind_virq(D1, Virq.TIMER, 0) == -Errno.EEXIST
    assert h.ec.bind_virq(D1, Virq.TIMER, 2) == -Errno.ENOENT  # only 2 vCPUs
    assert h.ec.bind_virq(D1, Virq.TIMER, -1) == -Errno.ENOENT
    assert h.ec.status(D1, DOMID_SELF, p1) == {
        "status": EvtchnStat.virq,
        "vcpu": 1,
        "virq": Virq.TIMER,
    }


def test_bind_virq_invalid(h: Host) -> None:
    for virq in (-1, 4, 23, 24, 1 << 40):
        assert h.ec.bind_virq(D1, virq, 0) == -Errno.EINVAL
    assert h.ec.bind_virq(DOM0, Virq.CONSOLE, 1) == -Errno.EINVAL  # global: vCPU 0 only


def test_raise_virq(h: Host) -> None:
    assert h.ec.raise_virq(D1, Virq.TIMER) is False
    port = h.ec.bind_virq(D1, Virq.TIMER, 0)
    assert h.ec.raise_virq(D1, Virq.TIMER) is True
    assert h.pending(D1, port) == 1 and h.kicks == [D1]
    assert h.ec.raise_virq(99, Virq.TIMER) is False


def test_global_virq_one_handler(h: Host) -> None:
    assert h.ec.bind_virq(D1, Virq.DOM_EXC) == -Errno.EPERM
    port = h.ec.bind_virq(DOM0, Virq.DOM_EXC)
    assert h.ec.bind_virq(DOM0, Virq.DOM_EXC) == -Errno.EEXIST
    c1 = h.ec.bind_virq(D1, Virq.CONSOLE)
    assert c1 > 0
    assert h.ec.bind_virq(D2, Virq.CONSOLE) == -Errno.EBUSY
    assert h.ec.raise_global_virq(Virq.DOM_EXC) is True
    assert h.pending(DOM0, port) == 1
    h.ec.close(D1, c1)  # releases the handler
    assert h.ec.bind_virq(D2, Virq.CONSOLE) > 0
    assert h.ec.raise_global_virq(Virq.CONSOLE) is True
    assert h.ec.raise_global_virq(Virq.TIMER) is False


def test_bind_pirq(h: Host) -> None:
    assert h.ec.bind_pirq(D1, 5) == -Errno.EPERM
    for bad in (-1, 256, 1 << 50):
        assert h.ec.bind_pirq(DOM0, bad) == -Errno.EINVAL
    port = h.ec.bind_pirq(DOM0, 5)
    assert port > 0
    assert h.ec.bind_pirq(DOM0, 5) == -Errno.EEXIST
    assert h.ec.status(DOM0, DOMID_SELF, port) == {"status": EvtchnStat.pirq, "vcpu": 0, "pirq": 5}
    assert h.ec.send(DOM0, port) == -Errno.EINVAL
    assert h.ec.raise_pirq(5) is True and h.pending(DOM0, port) == 1
    assert h.ec.raise_pirq(6) is False
    h.ec.close(DOM0, port)
    assert h.ec.raise_pirq(5) is False


def test_pirq_held_by_another_privileged_domain_is_busy() -> None:
    ec = EventChannels(lambda _d: None)
    for d in (0, 3):
        ec.add_domain(d, memoryview(bytearray(SHARED_INFO_SIZE)), privileged=True)
    assert ec.bind_pirq(0, 7) > 0
    assert ec.bind_pirq(3, 7) == -Errno.EBUSY


# -- status, queries, exhaustion -------------------------------------------


def test_status_permissions_and_ranges(h: Host) -> None:
    port = h.ec.alloc_unbound(D2, DOMID_SELF, D1)
    assert h.ec.status(D1, D2, port) == -Errno.EPERM
    assert h.ec.status(DOM0, D2, port)["status"] == EvtchnStat.unbound  # type: ignore[index]
    assert h.ec.status(D1, DOMID_SELF, 0) == {"status": EvtchnStat.closed, "vcpu": 0}
    assert h.ec.status(D1, DOMID_SELF, NR_EVENT_CHANNELS) == -Errno.EINVAL
    assert h.ec.status(D1, 55, 1) == -Errno.ESRCH


def test_events_pending_and_poll(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    assert not h.ec.events_pending(D2)
    assert not h.ec.poll(D2, [pb])
    h.set_mask(D2, pb)
    h.ec.send(D1, pa)
    assert not h.ec.events_pending(D2)
    assert h.ec.poll(D2, [pb])  # poll ignores the mask
    assert not h.ec.poll(D2, [pb + 1, -1, 1 << 70])
    assert not h.ec.poll(D2, "nonsense")
    assert not h.ec.poll(99, [pb])
    assert not h.ec.events_pending(99)


def test_port_exhaustion(h: Host) -> None:
    ports = [h.ec.alloc_unbound(D1, DOMID_SELF, D2) for _ in range(NR_EVENT_CHANNELS - 1)]
    assert ports == list(range(1, NR_EVENT_CHANNELS))
    assert h.ec.alloc_unbound(D1, DOMID_SELF, D2) == -Errno.ENOSPC
    assert h.ec.bind_virq(D1, Virq.TIMER) == -Errno.ENOSPC
    h.ec.close(D1, 700)
    assert h.ec.alloc_unbound(D1, DOMID_SELF, D2) == 700


def test_port_info_and_statistics(h: Host) -> None:
    pa, pb = h.connect(D1, D2)
    h.ec.send(D1, pa)
    info = h.ec.port_info(D2, pb)
    assert isinstance(info, PortInfo)
    assert (info.state, info.remote_dom, info.remote_port, info.pending) == (
        EvtchnStat.interdomain,
        D1,
        pa,
        True,
    )
    assert h.ec.port_info(D2, 900).state == EvtchnStat.closed  # type: ignore[union-attr]
    assert h.ec.port_info(D2, -1) is None
    stats = h.ec.statistics()
    assert isinstance(stats, EvtchnStatistics)
    assert (stats.domains, stats.interdomain, stats.sends) == (3, 2, 1)
    with pytest.raises(AttributeError):
        stats.kicks = 0  # type: ignore[misc]


# -- fuzz -----------------------------------------------------------------------

anyint = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-2, 40),
    st.integers(NR_EVENT_CHANNELS - 3, NR_EVENT_CHANNELS + 3),
    st.sampled_from([DOMID_SELF, 0x7FEF, 0x7FFF, 0xFFFF]),
)
junk = st.one_of(anyint, st.none(), st.text(max_size=3), st.lists(anyint, max_size=3))
OPS = {
    "alloc_unbound": 3,
    "bind_interdomain": 3,
    "bind_virq": 3,
    "bind_pirq": 2,
    "close": 2,
    "send": 2,
    "status": 3,
    "unmask": 2,
    "raise_virq": 3,
    "raise_global_virq": 1,
    "raise_pirq": 1,
    "events_pending": 1,
    "poll": 2,
    "port_info": 2,
    "remove_domain": 1,
}
BOOL_OPS = {"raise_virq", "raise_global_virq", "raise_pirq", "events_pending", "poll"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(OPS)), st.lists(junk, min_size=3, max_size=3))))
def test_fuzz_never_raises(calls: list[tuple[str, list[object]]]) -> None:
    h = Host()
    # Give the fuzzer something bound to hit.
    h.connect(D1, D2)
    h.ec.bind_virq(DOM0, Virq.DOM_EXC)
    for name, args in calls:
        rc = getattr(h.ec, name)(*args[: OPS[name]])
        if name in BOOL_OPS:
            assert isinstance(rc, bool)
        elif name == "port_info":
            assert rc is None or isinstance(rc, PortInfo)
        elif name == "status":
            assert isinstance(rc, dict) or (isinstance(rc, int) and rc < 0)
        else:
            assert isinstance(rc, int) and (rc >= 0 or -rc in set(Errno))
    assert isinstance(h.ec.statistics(), EvtchnStatistics)
    for d in h.ec.domains():
        for port in range(1, 48):
            _check_port_invariants(h, d, port)


def _check_port_invariants(h: Host, d: int, port: int) -> None:
    """Only bound ports are pending; interdomain ends point at each other."""
    info = h.ec.port_info(d, port)
    assert info is not None
    if info.state == EvtchnStat.closed:
        assert not info.pending
    if info.state == EvtchnStat.interdomain:
        peer = h.ec.port_info(info.remote_dom, info.remote_port)
        assert peer is not None and peer.state == EvtchnStat.interdomain
        assert (peer.remote_dom, peer.remote_port) == (d, port)
