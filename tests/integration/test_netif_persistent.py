"""Persistent grants on netif across real processes: negotiated, used, and redone on reconnect."""

import re

from tests.integration.test_netif_host import MAC1, MAC2, _hex, _recv, _wait, net_host  # noqa: F401
from tests.kernels.netagent import digest, make_frame


def _front(g, key: str) -> int:
    return int(re.search(rf"{key}=(\d+)", g("net_state")["eth0"]["stats"])[1])


def _front_grants(g) -> int:
    return _front(g, "persistent_grants")


def test_both_ends_agree_and_frames_go_through_the_mappings(net_host):  # noqa: F811
    h, d1, d2 = net_host
    made = [[_hex(MAC2), _hex(MAC1), seed, 60 + 97 * seed] for seed in range(12)]
    d1("net_send", dev="eth0", made=made)
    got = _recv(d2, len(made), "frames at d2")
    assert got == [[digest(make_frame(*m)), m[3], 0] for m in made]
    assert _front_grants(d2) == 256  # d2's rx pool, granted once
    assert 0 < _front_grants(d1) <= 256 + 12  # d1's rx pool and the tx ids it used
    back = {r["name"]: r for g in ("d1", "d2") for r in h.xl("network_list", dom=g)}
    assert back[f"vif{d2.domid}.0"]["persistent_grants"] == 256  # rx pool mapped in one go
    assert back[f"vif{d1.domid}.0"]["persistent_grants"] >= 1  # the tx pages used


def test_a_netback_restart_unmaps_and_the_new_connection_maps_again(net_host):  # noqa: F811
    h, d1, d2 = net_host
    d1("net_send", dev="eth0", made=[[_hex(MAC2), _hex(MAC1), 1, 100]])
    _recv(d2, 1, "a frame before the restart")
    h.xl("netback_restart", dom="d2")
    _wait(lambda: h.xl("network_list", dom="d2")[0]["backend_state"] == "4"
          and d2("net_state")["eth0"]["connected"], what="d2 reconnected")
    made = [_hex(MAC2), _hex(MAC1), 11, 200]
    d1("net_send", dev="eth0", made=[made])
    assert _recv(d2, 1, "a frame after the restart") == [[digest(make_frame(*made)), 200, 0]]
    # netback unmapped the old pool at its disconnect, so d2 could revoke all of it
    assert _front_grants(d2) == 256 and _front(d2, "grants_deferred") == 0
