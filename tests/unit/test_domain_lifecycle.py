"""The domain lifecycle table and xl list's state letters."""

import pytest

from hypervisor.domain import TRANSITIONS, Domain, DomState, TransitionError
from hypervisor.public.xen import ShutdownReason


def domain(state=DomState.created):
    d = Domain(1, "d1", 32768, 1, False, b"s" * 16, None, None, 32)
    d.state = state
    return d


def test_normal_life():
    d = domain()
    for event, state in (("unpause", "running"), ("block", "blocked"), ("wake", "running"),
                         ("pause", "paused"), ("unpause", "running"), ("shutdown", "shutdown"),
                         ("destroy", "dying")):
        d.transition(event)
        assert d.state.value == state


@pytest.mark.parametrize("state", list(DomState))
def test_only_listed_transitions_are_allowed(state):
    for event in ("unpause", "block", "wake", "pause", "shutdown", "crash", "destroy"):
        d = domain(state)
        if (state, event) in TRANSITIONS:
            d.transition(event)
            assert d.state is TRANSITIONS[(state, event)]
        else:
            with pytest.raises(TransitionError):
                d.transition(event)


def test_state_letters():
    assert domain(DomState.running).state_letters() == "r-----"
    assert domain(DomState.blocked).state_letters() == "-b----"
    assert domain(DomState.paused).state_letters() == "--p---"
    d = domain(DomState.shutdown)
    d.shutdown_reason = ShutdownReason.reboot
    assert d.state_letters() == "---sr-"
    assert domain(DomState.crashed).state_letters() == "---sc-"
    z = domain(DomState.dying)
    assert z.state_letters() == "-----d" and z.info()["name"] == "(null)"
