"""Posted hypercalls: nobody waits for them, yet a failure is not lost (Xen logs it)."""

import pathlib
import time

from tests.conftest import agent_domain


def test_a_failed_posted_send_is_logged_and_later_calls_still_run_in_order(make_host, agent):
    h = make_host(None, agent_domain("a"), agent_domain("b"))
    a, b = agent(h, "a"), agent(h, "b")
    port = b("alloc_unbound", remote=a.domid)
    local = a("bind", remote=b.domid, port=port)
    a("notify", port=4000)  # not a port of ours: EINVAL, with no reply to carry it
    a("notify", port=local)  # posted after it: still delivered
    assert a("send", port=local) == 0  # a waiting call after posted ones
    deadline = time.monotonic() + 10
    while b("events", port=port) < 1:
        assert time.monotonic() < deadline, "the posted send never arrived"
    log = pathlib.Path(h.dir, "xen.log")
    while f"d{a.domid}: posted hypercall" not in log.read_text():
        assert time.monotonic() < deadline, "the failed posted send was not logged"
