"""Event channels, grants and xenstore between real DomUs (tests.kernels.agent)."""

import os
import signal

import pytest

from hypervisor.public.grant_table import GNTST
from launcher.hostspec import DomainSpec
from tests.conftest import agent_domain


@pytest.fixture
def pair(make_host, agent):
    h = make_host(None, agent_domain("a1"), agent_domain("a2"))
    return h, agent(h, "a1"), agent(h, "a2")


def wait_events(a, port, n):
    for _ in range(200):  # each probe is a full round trip through the guest
        if a("events", port=port) >= n:
            return
    raise AssertionError(f"{a.name}: fewer than {n} events on port {port}")


def test_event_channel_ping_pong_and_close(pair):
    h, a1, a2 = pair
    port = a1("alloc_unbound", remote=a2.domid, echo=True)
    local = a2("bind", remote=a1.domid, port=port)
    assert a2("status", port=local)[1]["status"] == 2  # EVTCHNSTAT_interdomain
    base = a2("events", port=local)  # Xen marks a freshly bound port pending
    for i in range(1, 21):
        a2("send", port=local)
        wait_events(a2, local, base + i)
    assert a1("events", port=port) == 20
    a1("close", port=port)
    st = a2("status", port=local)[1]
    assert st["status"] == 1 and st["dom"] == a1.domid  # back to unbound
    assert a2("send", port=local) == 0  # sends to an unbound port are dropped


def test_bind_refused_for_the_wrong_domain(pair):
    h, a1, a2 = pair
    port = a1("alloc_unbound", remote=a2.domid)
    res = a1.raw("bind", remote=a1.domid, port=port)
    assert not res["ok"] and "EINVAL" in res["error"]
    res = a2.raw("bind", remote=999, port=port)
    assert not res["ok"] and "ESRCH" in res["error"]


def test_grant_map_read_write_then_revoke(pair):
    h, a1, a2 = pair
    ref = a1("grant", domid=a2.domid, fill=0xAB)
    m = a2("map", domid=a1.domid, ref=ref)
    assert m["status"] == GNTST.okay
    assert a2("peek", handle=m["handle"]) == "ab" * 16
    assert a1("in_use", ref=ref) is True
    assert a1("end_access", ref=ref) is False  # mapped: cannot be revoked
    a2("poke", handle=m["handle"], fill=0xCD)
    assert a1("page", ref=ref) == "cd" * 16  # the very same frame
    assert a2("unmap", handle=m["handle"]) == GNTST.okay
    assert a1("in_use", ref=ref) is False
    assert a1("end_access", ref=ref) is True


def test_grant_map_refusals(pair):
    h, a1, a2 = pair
    other = a1("grant", domid=0, fill=1)  # granted to Dom0, not to a2
    ro = a1("grant", domid=a2.domid, fill=2, readonly=True)
    revoked = a1("grant", domid=a2.domid, fill=3)
    assert a1("end_access", ref=revoked) is True
    cases = {
        "wrong domid": (a1.domid, other, False, GNTST.general_error),
        "read-only mapped writable": (a1.domid, ro, False, GNTST.general_error),
        "never granted": (a1.domid, 200, False, GNTST.general_error),
        "revoked": (a1.domid, revoked, False, GNTST.general_error),
        "out of range": (a1.domid, 10**6, False, GNTST.bad_gntref),
        "no such domain": (999, ro, False, GNTST.bad_domain),
    }
    for what, (dom, ref, readonly, want) in cases.items():
        got = a2("map", domid=dom, ref=ref, readonly=readonly)["status"]
        assert got == want, what
    assert a2("map_raw", domid=a1.domid, ref=ro, flags=0) == GNTST.bad_gntref  # no host_map
    m = a2("map", domid=a1.domid, ref=ro, readonly=True)
    assert m["status"] == GNTST.okay and a2("peek", handle=m["handle"]) == "02" * 16
    assert not a2.raw("poke", handle=m["handle"], fill=9)["ok"]  # read-only mapping
    assert a1("page", ref=ro) == "02" * 16


def test_granter_destroyed_while_mapped_lingers_as_zombie(pair):
    h, a1, a2 = pair
    ref = a1("grant", domid=a2.domid, fill=0x5A)
    m = a2("map", domid=a1.domid, ref=ref)
    old = a1.domid
    h.xl("destroy", dom="a1")
    zombie = [d for d in h.xl("list") if d["domid"] == old]
    assert zombie and zombie[0]["name"] == "(null)" and zombie[0]["state_letters"][5] == "d"
    assert a2("peek", handle=m["handle"]) == "5a" * 16  # the frame stays valid
    assert a2("unmap", handle=m["handle"]) == GNTST.okay
    assert h.xl("wait_gone", domid=old, timeout_ms=5000) is True


def test_grant_copy_between_domains(pair):
    h, a1, a2 = pair
    src = a1("grant", domid=a2.domid, fill=0x11, readonly=True)
    dst_ro = a1("grant", domid=a2.domid, fill=0x22, readonly=True)
    dst = a1("grant", domid=a2.domid, fill=0x33)
    op = {"source": {"ref": src, "domid": a1.domid, "offset": 0},
          "dest": {"ref": dst, "domid": a1.domid, "offset": 8}, "len": 8, "flags": 3}
    bad = {**op, "dest": {"ref": dst_ro, "domid": a1.domid, "offset": 0}}
    cross = {**op, "len": 4096}
    assert a2("copy", ops=[op, bad, cross]) == [GNTST.okay, GNTST.general_error,
                                                 GNTST.bad_copy_arg]
    assert a1("page", ref=dst) == "33" * 8 + "11" * 8


def test_xenstore_permissions_between_domus(pair):
    h, a1, a2 = pair
    assert a1("xs_read", path="name") == "a1"
    a1("xs_write", path="data/mine", value="1")
    for op, args in (("xs_read", {"path": f"/local/domain/{a2.domid}/name"}),
                     ("xs_write", {"path": f"/local/domain/{a2.domid}/data/x", "value": "1"}),
                     ("xs_dir", {"path": f"/local/domain/{a2.domid}"})):
        res = a1.raw(op, **args)
        assert not res["ok"] and res["name"] == "EACCES", (op, res)
    res = a1.raw("xs_write", path="name", value="evil")  # home is read-only to its guest
    assert not res["ok"] and res["name"] == "EACCES"


def test_xenstore_watch_fires_initially_and_on_change(pair):
    h, a1, a2 = pair
    home = f"/local/domain/{a1.domid}"
    a1("xs_write", path="data/w", value="")
    a1("xs_watch", path="data/w", token="t1")
    assert h.xl("xs_wait", path=f"{home}/data/watch-t1") == "data/w"  # initial fire
    h.xl("xs_write", path=f"{home}/data/w/child", value="x")
    assert h.xl("xs_wait", path=f"{home}/data/watch-t1", not_value="data/w") == "data/w/child"


def test_xenstore_transaction_conflict_gets_eagain(pair):
    h, a1, a2 = pair
    a1("xs_write", path="data/k", value="0")
    tx = a1("tx_start")
    assert a1("tx_read", tx=tx, path="data/k") == "0"
    a1("tx_write", tx=tx, path="data/k2", value="from-tx")
    h.xl("xs_write", path=f"/local/domain/{a1.domid}/data/k", value="changed")
    res = a1.raw("tx_end", tx=tx)
    assert not res["ok"] and res["name"] == "EAGAIN"
    assert not a1.raw("xs_read", path="data/k2")["ok"]  # nothing of it was applied
    tx = a1("tx_start")
    a1("tx_write", tx=tx, path="data/k2", value="retry")
    a1("tx_end", tx=tx)
    assert a1("xs_read", path="data/k2") == "retry"


def test_mapper_death_releases_its_mappings_and_unbinds_ports(make_host, agent):
    h = make_host(None, DomainSpec(name="a1", memory_mib=16, kernel="tests.kernels.agent"),
                  DomainSpec(name="a2", memory_mib=16, kernel="tests.kernels.agent",
                             on_crash="preserve"))
    a1, a2 = agent(h, "a1"), agent(h, "a2")
    ref = a1("grant", domid=a2.domid, fill=7)
    a2("map", domid=a1.domid, ref=ref)
    port = a1("alloc_unbound", remote=a2.domid)
    a2("bind", remote=a1.domid, port=port)
    assert a1("status", port=port)[1]["status"] == 2
    assert a1("in_use", ref=ref) is True
    os.kill(h["a2"]["pid"], signal.SIGKILL)
    for _ in range(200):  # until Xen has reaped it (a crashed domain stays: preserve)
        if h["a2"]["state"] == "crashed":
            break
    assert h["a2"]["state_letters"] == "---sc-"
    assert a1("in_use", ref=ref) is False  # Xen dropped the dead mapper's pins
    assert a1("end_access", ref=ref) is True
    st = a1("status", port=port)[1]
    assert st["status"] == 1 and st["dom"] == a2.domid  # the peer's death unbound it
