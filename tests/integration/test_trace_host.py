"""A traced host: every process records, `xenolab trace` renders the story."""

import json
import os

from hypervisor.public import trace as T
from launcher import trace as C
from launcher.hostspec import HostSpec
from tests.conftest import agent_domain, xenolab
from tests.unit.test_trace import check_chrome


def test_xenolab_trace_of_a_running_host_and_after_it_is_down(make_host, tmp_path):
    h = make_host(HostSpec(name="t", domains=(agent_domain("d1"), agent_domain("d2"))),
                  trace=True)
    doms = h.domains()
    out = tmp_path / "trace.json"
    run = xenolab("trace", "--host", h.name, "-o", str(out), "--steps")
    assert f"to {out}" in run.stdout and run.stdout.startswith("1. ")
    doc = json.loads(out.read_text())
    check_chrome(doc)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert {"Xen", "Domain-0", "d1 (agent)", "d2 (agent)"} <= names
    assert len(doms) == 3
    # a guest's EVTCHNOP_send reaches Xen: the arrow joins two processes
    events = C.load(C.folder(h.name))
    sends = [e for e in events if e.point == T.XEN_EVTCHN_SEND and e.trace_id]
    assert sends and {e.domid for e in events if e.point == T.EVTCHN_SEND} >= {0, 1, 2}
    guest = {e.trace_id: e for e in events if e.point == T.EVTCHN_SEND}
    assert all(guest[x.trace_id].domid == x.a for x in sends)
    assert any(e["ph"] == "f" for e in doc["traceEvents"])

    h.down()  # the records outlive the host, until it boots again
    again = xenolab("trace", "--host", h.name, "-o", str(out))
    assert again.returncode == 0 and out.stat().st_size > 0


def test_an_untraced_host_records_nothing(make_host):
    h = make_host(None, agent_domain("d1"))
    assert not os.path.exists(C.folder(h.name))
    run = xenolab("trace", "--host", h.name, check=False)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert "xenolab up --trace" in run.stderr and "Traceback" not in run.stderr
