"""What lets xenstore survive Domain-0: the saved state (persist.py) and the
guest's side of the reconnection (domains.kernel.xenbus rule 4)."""

from __future__ import annotations

import msgpack
import pytest

from domains.dom0.xenstored import XenstoreServer, persist
from domains.dom0.xenstored.store import Node, Store
from domains.kernel.bytering import XenstoreControl, xenstore_server
from domains.kernel.xenbus import XenbusClient, XenbusError
from hypervisor.public.xs_wire import (
    XENSTORE_CONNECTED,
    XENSTORE_RECONNECT,
    XENSTORE_RESTARTED,
    MessageParser,
    XsdSockmsgType,
    pack_msg,
)

T = XsdSockmsgType


class _Hooks:
    def introduce(self, domid, gfn, port):
        pass

    def release(self, domid):
        pass


def _tree(store: Store) -> dict:
    return {p: (n.value, n.perms, n.children) for p in store.paths() if (n := store.get(p))}


def _server_with_nodes() -> XenstoreServer:
    server = XenstoreServer(_Hooks())
    xs = server.local_client(0)
    xs.write("/local/domain/1/name", "g")
    xs.set_perms("/local/domain/1", ["n0", "r1"])
    xs.write("/local/domain/1/device/vbd/51712/state", "4")
    return server


# ---- persist: snapshot + journal ---------------------------------------------

def test_snapshot_and_journal_rebuild_the_tree_and_the_rings():
    server = _server_with_nodes()
    store = server.store
    snap = persist.snapshot(store, {1: (2, 5)}, seq=0)
    store.journal = []
    xs = server.local_client(0)
    xs.write("/local/domain/1/device/vbd/51712/state", "5")
    xs.rm("/local/domain/1/name")
    xs.write("/tool/x", "y")
    journal, seq = persist.records(0, store.journal, {1: (2, 5), 2: (2, 7)})
    got, rings, last = persist.decode(snap, journal)
    assert _tree(got) == _tree(store)
    assert rings == {1: (2, 5), 2: (2, 7)} and last == seq


def test_replay_skips_what_the_snapshot_already_holds():
    """A kill between a new snapshot and the journal's truncation: the old
    records must not take nodes back to older values."""
    server = _server_with_nodes()
    store = server.store
    store.journal = []
    server.local_client(0).write("/tool/v", "old")
    journal, seq = persist.records(0, store.journal, None)
    server.local_client(0).write("/tool/v", "new")
    snap = persist.snapshot(store, {}, seq=seq + 1)
    got, _, _ = persist.decode(snap, journal)
    assert got.get("/tool/v").value == b"new"


def test_a_torn_journal_tail_keeps_the_records_before_it():
    store = _server_with_nodes().store
    snap = persist.snapshot(store, {}, seq=0)
    one, seq = persist.records(0, [("/a", Node(b"1", store.get("/").perms))], None)
    two, _ = persist.records(seq, [("/b", Node(b"2", store.get("/").perms))], None)
    got, _, last = persist.decode(snap, one + two[:-3])
    assert got.get("/a").value == b"1" and got.get("/b") is None and last == seq


@pytest.mark.parametrize("snap", [b"", b"\x93garbage", msgpack.packb({"version": 99}),
                                  msgpack.packb({"version": 1, "seq": 0, "nodes": [[1]],
                                                 "rings": []})])
def test_a_bad_snapshot_is_refused(snap):
    with pytest.raises(persist.StateError):
        persist.decode(snap)


# ---- the guest's reconnection ------------------------------------------------

class _Evtchn:
    def __init__(self) -> None:
        self.notified = 0

    def on(self, port, fn):
        pass

    def notify(self, port):
        self.notified += 1

    def is_pending(self, port):
        return False

    def clear(self, port):
        pass


class _Xen:
    """SCHEDOP_poll runs the next step of a scripted xenstored."""

    def __init__(self, steps) -> None:
        self.steps = steps

    def flush(self):
        pass

    def call(self, *_):
        self.steps.pop(0)()
        return 0, None


class _Kernel:
    def __init__(self, steps) -> None:
        self.evtchn, self.xen, self.soon = _Evtchn(), _Xen(steps), []

    def call_soon(self, fn):
        self.soon.append(fn)


def test_guest_resends_after_a_restarted_xenstored_asks_it_to_reconnect():
    page = bytearray(4096)
    server_end, ctl = xenstore_server(page), XenstoreControl(page)
    parser, seen = MessageParser(), []

    def answer_all():
        for msg in parser.feed(server_end.rx.read()):
            seen.append(msg)
            reply = b"OK\0" if msg.type != T.TRANSACTION_START else b"7\0"
            server_end.tx.write(pack_msg(msg.type, msg.req_id, msg.tx_id, reply))

    def die_holding_the_request():
        server_end.rx.read()  # the old xenstored read it and died
        ctl.connection = XENSTORE_RESTARTED  # the new one asks for a reconnection

    def reset():
        assert ctl.connection == XENSTORE_RECONNECT  # the guest asked, as in Xen
        server_end.rx.discard()
        server_end.tx.write(b"\x02\x00garbage")  # a partial reply the guest must drop
        ctl.connection = XENSTORE_CONNECTED

    k = _Kernel([answer_all])
    xs = XenbusClient(k, page, port=3)
    xs.watch("device", "tok", lambda *_: None)
    k.xen.steps = [die_holding_the_request, lambda: None, reset, answer_all]
    xs.write("device/x", "1")
    assert xs.reconnects == 1
    types = [m.type for m in seen]
    assert types == [T.WATCH, T.WRITE, T.WATCH]  # the write resent, the watch again
    # A request inside a transaction is not resent: its transaction is gone.
    k.xen.steps = [answer_all]
    tx = xs.transaction_start()
    k.xen.steps = [die_holding_the_request, lambda: None, reset]
    with pytest.raises(XenbusError) as err:
        xs.write("device/y", "1", tx)
    assert err.value.name == "EAGAIN"
