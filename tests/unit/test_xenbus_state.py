"""The XenBus state table (domains/kernel/xenbus_state.py), driven through a fake store."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.kernel.xenbus_state import (
    TRANSITIONS,
    Duty,
    Event,
    Role,
    Switch,
    diagram,
    next_actions,
    state_after,
)
from hypervisor.public.xenbus import XenbusState as S

F, B = Role.FRONTEND, Role.BACKEND
OTHER = {F: B, B: F}


class Bus:
    """Two state nodes and a watch on each (Linux ``otherend_changed``).

    A write to one end's node queues a watch event for the other end; the
    handler reads the other end's *current* state, so events may coalesce or
    arrive after several writes, as with real xenstore watches. Registering a
    watch fires it once.
    """

    def __init__(self, front: S = S.Initialising, back: S = S.Initialising) -> None:
        self.state = {F: front, B: back}
        self.pending = {F: 1, B: 1}
        self.duties: list[tuple[Role, Duty]] = []
        self.online = True

    def write(self, role: Role, state: S) -> None:
        if self.state[role] != state:  # xenbus_switch_state skips a no-op write
            self.state[role] = state
            self.pending[OTHER[role]] += 1

    def apply(self, role: Role, actions) -> None:
        for action in actions:
            if isinstance(action, Switch):
                self.write(role, action.state)
            else:
                self.duties.append((role, action))

    def local(self, role: Role, event: Event) -> None:
        self.apply(role, next_actions(role, self.state[role], self.state[OTHER[role]], event))

    def deliver(self, role: Role) -> None:
        self.pending[role] -= 1
        self.apply(role, next_actions(role, self.state[role], self.state[OTHER[role]]))

    def settle(self, order=None) -> None:
        """Deliver watch events until none is pending (``order`` picks who goes next)."""
        for _ in range(1000):
            ready = [r for r in (F, B) if self.pending[r]]
            if not ready:
                return
            self.deliver(order(ready) if order else ready[0])
        raise AssertionError("the state machine did not settle")

    def did(self, role: Role) -> list[Duty]:
        return [d for r, d in self.duties if r is role]


def connected_bus() -> Bus:
    bus = Bus()
    bus.local(B, Event.PROBE)
    bus.settle()
    assert bus.state == {F: S.Connected, B: S.Connected}
    bus.duties.clear()
    return bus


# -- the table ------------------------------------------------------------------


def test_rows_never_overlap():
    for role, event, mine, other in itertools.product(Role, Event, S, S):
        rows = [t for t in TRANSITIONS if t.role is role and t.event is event
                and mine in t.mine and other in t.other]  # fmt: skip
        assert len(rows) <= 1, (role, event, mine, other, rows)


def test_no_row_means_nothing_to_do():
    assert next_actions(F, S.Initialised, S.InitWait) == []  # waiting for Connected
    assert next_actions(B, S.InitWait, S.Connected) == []  # stale frontend (rule 6)
    assert next_actions(F, S.Closed, S.Closed) == []


def test_state_after():
    assert state_after(S.Initialising, next_actions(F, S.Initialising, S.InitWait)) is (
        S.Initialised
    )
    assert state_after(S.Connected, [Duty.UPDATE_CAPACITY]) is S.Connected


def test_diagram_has_one_line_per_row():
    text = diagram()
    assert len(text.splitlines()) == len(TRANSITIONS)
    front = diagram(F)
    assert all(line.startswith("frontend ") for line in front.splitlines())
    assert "--backend InitWait--> Initialised  [setup-ring]" in front
    assert "--probe--> InitWait  [publish-features]" in diagram(B)


# -- connect (reference 2.5) ---------------------------------------------------------


def test_connect_handshake_in_order():
    bus = Bus()
    bus.local(B, Event.PROBE)
    bus.settle()
    assert bus.state == {F: S.Connected, B: S.Connected}
    assert bus.duties == [
        (B, Duty.PUBLISH_FEATURES),
        (F, Duty.SETUP_RING),
        (B, Duty.MAP_RING),
        (B, Duty.PUBLISH_DISK),
        (F, Duty.CONNECT),
    ]


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 3))
def test_connect_survives_any_watch_order_and_duplicates(rnd, extra):
    bus = Bus()
    for _ in range(extra):  # spurious firings, as after a xenstored restart
        bus.pending[rnd.choice((F, B))] += 1
    bus.local(B, Event.PROBE)
    bus.settle(order=rnd.choice)
    assert bus.state == {F: S.Connected, B: S.Connected}
    for role, duty in ((F, Duty.SETUP_RING), (B, Duty.MAP_RING), (F, Duty.CONNECT)):
        assert bus.did(role).count(duty) == 1


def test_frontend_may_initialise_before_the_backend_probes():
    bus = Bus()
    bus.apply(F, [Duty.SETUP_RING, Switch(S.Initialised)])  # shortcut: no InitWait wait
    bus.settle()
    assert bus.state == {F: S.Initialised, B: S.Initialising}
    bus.local(B, Event.PROBE)
    bus.pending[B] += 1  # the backend registers its watch after probing
    bus.settle()
    assert bus.state == {F: S.Connected, B: S.Connected}


def test_backend_connected_again_means_capacity_changed():
    bus = connected_bus()
    assert next_actions(F, S.Connected, S.Connected) == [Duty.UPDATE_CAPACITY]
    bus.pending[F] += 1
    bus.settle()
    assert bus.did(F) == [Duty.UPDATE_CAPACITY]


# -- close and reconnect (reference 7.6, 2.6) -------------------------------------------


def test_graceful_unplug():
    bus = connected_bus()
    bus.online = False
    bus.write(B, S.Closing)  # the toolstack, in one transaction with online=0
    bus.settle()
    assert bus.state == {F: S.Closed, B: S.Closed}
    assert bus.did(F) == [Duty.FREE_RING]
    assert bus.did(B) == [Duty.DISCONNECT, Duty.REMOVE_IF_OFFLINE]


def test_frontend_reconnects_after_close_and_reinitialise():
    bus = connected_bus()
    bus.write(B, S.Closing)
    bus.settle()
    bus.duties.clear()
    bus.write(F, S.Initialising)  # the frontend starts over (xenbus reset)
    bus.settle()
    assert bus.state == {F: S.Connected, B: S.Connected}
    assert bus.did(B) == [Duty.MAP_RING, Duty.PUBLISH_DISK]


def test_backend_restart_makes_the_frontend_free_and_set_up_a_new_ring():
    bus = connected_bus()
    bus.state[B] = S.Initialising  # a new backend instance starts over
    bus.local(B, Event.PROBE)
    bus.settle()
    assert bus.state == {F: S.Connected, B: S.Connected}
    assert bus.did(F) == [Duty.FREE_RING, Duty.SETUP_RING, Duty.CONNECT]
    assert bus.did(B) == [Duty.PUBLISH_FEATURES, Duty.MAP_RING, Duty.PUBLISH_DISK]


def test_backend_restart_after_the_frontend_closed():
    bus = connected_bus()
    bus.write(B, S.Closed)  # the old backend died after closing
    bus.settle()
    assert bus.state[F] is S.Closed
    bus.state[B] = S.Initialising
    bus.local(B, Event.PROBE)
    bus.settle()
    assert bus.state == {F: S.Connected, B: S.Connected}


@pytest.mark.parametrize("role", [F, B])
def test_fatal_error_closes_both_ends(role):
    bus = connected_bus()
    bus.local(role, Event.FATAL)
    bus.settle()
    assert bus.state == {F: S.Closed, B: S.Closed}
    assert (role, Duty.REPORT_ERROR) in bus.duties
    assert next_actions(role, S.Closed, S.Closed, Event.FATAL) == []


def test_frontend_vanishing_removes_the_backend():
    assert next_actions(B, S.Connected, S.Unknown) == [Duty.DISCONNECT, Duty.REMOVE]


@pytest.mark.parametrize("backend", [S.InitWait, S.Initialised, S.Connected])
def test_a_new_backend_instance_probing_a_live_device_starts_over(backend):
    """Rule 8: Domain-0 restarted; its blkback finds the device past Initialising."""
    assert next_actions(B, backend, S.Connected, Event.PROBE) == [
        Duty.PUBLISH_FEATURES, Switch(S.InitWait)]
    assert next_actions(F, S.Connected, S.InitWait) == [
        Duty.FREE_RING, Duty.SETUP_RING, Switch(S.Initialised)]
    assert next_actions(B, S.InitWait, S.Initialised) == [
        Duty.MAP_RING, Duty.PUBLISH_DISK, Switch(S.Connected)]
