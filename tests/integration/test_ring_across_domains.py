"""A ring.h ring shared by two real DomUs: grants, events, wrap at 2^32."""

import pytest

from tests.conftest import agent_domain


@pytest.mark.parametrize("order,start", [(0, 0), (1, 2**32 - 100)])
def test_many_requests_in_flight_across_index_wrap(make_host, agent, order, start):
    h = make_host(None, agent_domain("fe"), agent_domain("be"))
    fe, be = agent(h, "fe"), agent(h, "be")
    ring = fe("ring_front", backend=be.domid, order=order, start=start)
    be("ring_back", frontend=fe.domid, grefs=ring["grefs"], port=ring["port"], start=start)
    count = 1000
    fe("ring_run", count=count)
    result = h.xl("xs_wait", path=f"/local/domain/{fe.domid}/data/ring-result", timeout_ms=20_000,
                  timeout_s=25)
    ok, done, _, peak, _, rsp_prod = result.split()
    assert (ok, int(done)) == ("ok", count)
    assert int(peak) > 1  # requests really were in flight together
    assert int(rsp_prod) == (start + count) % 2**32  # the index wrapped past 2^32
