"""The XenBus split-driver state machine (io/xenbus.h), as a table.

Rules (xen-interfaces.md sections 2.5, 2.6, 7.5, 7.6; Linux blkfront's
``blkback_changed`` and blkback's ``frontend_changed``):

1. Each end writes only its own ``<nodename>/state`` and watches the other
   end's (Linux ``otherend_changed``). A driver calls ``next_actions`` from
   that watch with ``Event.OTHEREND_CHANGED`` and both states, or with a
   local event (``PROBE``, ``FATAL``); it then performs the returned duties in
   order, switching state where a ``Switch`` says so.
2. Watches may fire twice or skip an intermediate value, so every row is keyed
   on (my state, the other end's current state), never on the last event, and
   repeating a row's trigger in the row's target state does nothing.
3. Connect (2.5): backend probe -> InitWait; frontend on InitWait sets up the
   ring -> Initialised; backend on Initialised maps it -> Connected; frontend
   on Connected reads the disk -> Connected. Backend Connected again while
   both are connected means "capacity changed".
4. Close (7.6): the toolstack writes backend Closing; the frontend frees its
   ring -> Closed; the backend disconnects -> Closed, and unregisters if the
   toolstack set ``online`` to 0. Backend Closed and frontend Initialising
   again means reconnect (backend -> InitWait).
5. Backend restart (2.6): a connected (or closed) frontend that sees a backend
   at InitWait frees its ring, parking in-flight requests, and sets up a new
   one; the requests are re-issued when the backend reaches Connected.
6. A backend connects only on frontend Initialised: a frontend still at
   Connected is talking to a previous backend instance, and its ring-ref is
   stale (it re-initialises per rule 5).
7. No row means "nothing to do" (Linux's ``break``). Rows never overlap; a
   unit test checks that.
8. A backend that probes a device whose state is already past Initialising
   is a new instance (Domain-0 or its driver restarted; the old instance's
   ring mapping died with it): it publishes its features again and switches
   to InitWait, and the frontend reconnects by rule 5.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from hypervisor.public.xenbus import XenbusState as S

__all__ = [
    "TRANSITIONS",
    "Action",
    "Duty",
    "Event",
    "Role",
    "Switch",
    "Transition",
    "diagram",
    "next_actions",
    "state_after",
]


class Role(enum.Enum):
    FRONTEND = "frontend"
    BACKEND = "backend"


class Event(enum.Enum):
    OTHEREND_CHANGED = "otherend changed"  # the watch on the other end's state fired
    PROBE = "probe"  # the driver found the device (backend: xenbus_probe)
    FATAL = "fatal"  # xenbus_dev_fatal: a local error ends the device


class Duty(enum.Enum):
    """Work a driver does before any later ``Switch`` in the same list."""

    # frontend (blkfront)
    SETUP_RING = "setup-ring"  # talk_to_blkback: grant ring, alloc port, write keys in one txn
    FREE_RING = "free-ring"  # blkif_free(suspend): park in-flight, end ring grants, unbind
    CONNECT = "connect"  # blkfront_connect: read sectors/info/features; re-issue parked I/O
    UPDATE_CAPACITY = "update-capacity"  # re-read sectors while connected
    # backend (blkback)
    PUBLISH_FEATURES = "publish-features"  # max-ring-page-order, feature-max-indirect-...
    MAP_RING = "map-ring"  # connect_ring: read ring-ref/event-channel/protocol, map, bind
    PUBLISH_DISK = "publish-disk"  # connect: sectors, info, sector-size, feature-*
    DISCONNECT = "disconnect"  # xen_blkif_disconnect: drain I/O, unmap, unbind
    REMOVE_IF_OFFLINE = "remove-if-offline"  # unregister when the toolstack wrote online=0
    REMOVE = "remove"  # the frontend is gone: unregister
    # both
    REPORT_ERROR = "report-error"  # write error/<nodename>/error


@dataclass(frozen=True, slots=True)
class Switch:
    """xenbus_switch_state: write ``state`` to my own state node."""

    state: S


Action = Duty | Switch


@dataclass(frozen=True, slots=True)
class Transition:
    """One row: in ``mine``, on ``event`` with the other end in ``other``, do ``actions``."""

    role: Role
    event: Event
    mine: frozenset[S]
    other: frozenset[S]
    actions: tuple[Action, ...]


ALL = frozenset(S)
_ACTIVE = ALL - {S.Closing, S.Closed}


def _row(
    role: Role,
    mine: Iterable[S],
    other: Iterable[S],
    *actions: Action,
    event: Event = Event.OTHEREND_CHANGED,
) -> Transition:
    return Transition(role, event, frozenset(mine), frozenset(other), actions)


F, B = Role.FRONTEND, Role.BACKEND
D, sw = Duty, Switch

# fmt: off
TRANSITIONS: tuple[Transition, ...] = (
    # role  mine                           other             actions
    _row(F, {S.Initialising},              {S.InitWait},     D.SETUP_RING, sw(S.Initialised)),
    _row(F, {S.Connected, S.Closed},       {S.InitWait},     D.FREE_RING, D.SETUP_RING,
                                                             sw(S.Initialised)),
    _row(F, {S.Initialised},               {S.Connected},    D.CONNECT, sw(S.Connected)),
    _row(F, {S.Connected},                 {S.Connected},    D.UPDATE_CAPACITY),
    _row(F, ALL - {S.Closed},              {S.Closing},      D.FREE_RING, sw(S.Closed)),
    # An Initialising frontend waits out a Closed backend: it may be about to reconnect.
    _row(F, ALL - {S.Closed, S.Initialising}, {S.Closed},    D.FREE_RING, sw(S.Closed)),
    _row(F, _ACTIVE,                       ALL,              D.REPORT_ERROR, sw(S.Closing),
         event=Event.FATAL),
    # Probe: a new device (Unknown/Initialising) or a new backend instance (rule 8).
    _row(B, _ACTIVE,                       ALL,              D.PUBLISH_FEATURES, sw(S.InitWait),
         event=Event.PROBE),
    _row(B, {S.InitWait},                  {S.Initialised},  D.MAP_RING, D.PUBLISH_DISK,
                                                             sw(S.Connected)),
    _row(B, _ACTIVE,                       {S.Closing},      sw(S.Closing)),
    _row(B, ALL - {S.Closed},              {S.Closed},       D.DISCONNECT, sw(S.Closed),
                                                             D.REMOVE_IF_OFFLINE),
    _row(B, {S.Closed},                    {S.Closed},       D.REMOVE_IF_OFFLINE),
    _row(B, {S.Closed},                    {S.Initialising}, sw(S.InitWait)),
    _row(B, ALL,                           {S.Unknown},      D.DISCONNECT, D.REMOVE),
    _row(B, _ACTIVE,                       ALL,              D.REPORT_ERROR, sw(S.Closing),
         event=Event.FATAL),
)
# fmt: on


def next_actions(
    role: Role, my_state: S, other_state: S, event: Event = Event.OTHEREND_CHANGED
) -> list[Action]:
    """The duties and state switch for this trigger; ``[]`` when there is nothing to do."""
    for t in TRANSITIONS:
        if t.role is role and t.event is event and my_state in t.mine and other_state in t.other:
            return list(t.actions)
    return []


def state_after(my_state: S, actions: Iterable[Action]) -> S:
    """My state once ``actions`` are done (the last ``Switch`` wins)."""
    for action in actions:
        if isinstance(action, Switch):
            my_state = action.state
    return my_state


def _names(states: frozenset[S]) -> str:
    if states == ALL:
        return "*"
    if states == _ACTIVE:
        return "not Closing/Closed"
    if len(states) > len(ALL) // 2:
        return "not " + "/".join(s.name for s in sorted(ALL - states))
    return "/".join(s.name for s in sorted(states))


def diagram(role: Role | None = None) -> str:
    """The table as text, one line per row: ``mine --trigger--> new  [duties]``."""
    lines = []
    for t in TRANSITIONS:
        if role is not None and t.role is not role:
            continue
        other = "backend" if t.role is Role.FRONTEND else "frontend"
        trigger = f"{other} {_names(t.other)}"
        if t.event is not Event.OTHEREND_CHANGED:
            trigger = t.event.value
        switches = [a.state.name for a in t.actions if isinstance(a, Switch)]
        duties = ", ".join(a.value for a in t.actions if isinstance(a, Duty))
        target = switches[-1] if switches else "(stays)"
        lines.append(f"{t.role.value:8}  {_names(t.mine):26} --{trigger}--> {target}  [{duties}]")
    return "\n".join(lines)


def parse_state(value: str | None) -> S:
    """A xenstore `state` node's text as a XenbusState (Unknown if it is not one)."""
    try:
        return S(int(value or 0))
    except ValueError:
        return S.Unknown
