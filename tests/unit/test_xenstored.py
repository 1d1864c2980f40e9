"""xenstored core: permissions, watches, transactions, quotas, domains, fuzz."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.dom0.xenstored import (
    Caller,
    Perm,
    ProtocolError,
    XenstoreServer,
    XsError,
    paths,
)
from domains.dom0.xenstored.perms import XS_PERM_READ, XS_PERM_WRITE
from domains.dom0.xenstored.store import Store
from hypervisor.public.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    MessageParser,
    XsdSockmsgType,
    XsMsg,
    join_fields,
    split_fields,
)

T = XsdSockmsgType


class Hooks:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.refuse = False

    def introduce(self, domid: int, gfn: int, port: int) -> None:
        if self.refuse:
            raise XsError("EINVAL", "cannot map ring")
        self.calls.append(("introduce", domid, gfn, port))

    def release(self, domid: int) -> None:
        self.calls.append(("release", domid))


class Host:
    """A server with Domain-0 ("d0") and guests "d1", "d2" laid out as libxl does."""

    def __init__(self) -> None:
        self.hooks = Hooks()
        self.server = XenstoreServer(self.hooks)
        self.req_id = 0
        self.server.connect("d0", 0, privileged=True)
        for domid in (1, 2):
            self.ok("d0", T.INTRODUCE, str(domid), "100", "5")
            self.server.connect(f"d{domid}", domid)
            home = f"/local/domain/{domid}"
            self.ok("d0", T.MKDIR, home)
            self.ok("d0", T.SET_PERMS, home, "n0", f"r{domid}")
            self.ok("d0", T.MKDIR, f"{home}/data")
            self.ok("d0", T.SET_PERMS, f"{home}/data", f"n{domid}")

    def send(self, conn, type_, *fields, tx=0, raw=None) -> list[tuple[str, XsMsg]]:
        self.req_id += 1
        payload = join_fields(*fields) if raw is None else raw
        out = self.server.handle(conn, XsMsg(type_, self.req_id, tx, payload))
        return [(cid, MessageParser().feed(data)[0]) for cid, data in out]

    def reply(self, conn, type_, *fields, tx=0, raw=None) -> XsMsg:
        out = self.send(conn, type_, *fields, tx=tx, raw=raw)
        assert out[0][0] == conn and out[0][1].req_id == self.req_id
        return out[0][1]

    def ok(self, conn, type_, *fields, tx=0, raw=None) -> bytes:
        msg = self.reply(conn, type_, *fields, tx=tx, raw=raw)
        assert msg.type == type_, msg.payload
        return msg.payload

    def err(self, conn, type_, *fields, tx=0, raw=None) -> str:
        msg = self.reply(conn, type_, *fields, tx=tx, raw=raw)
        assert msg.type == T.ERROR, msg.payload
        return msg.payload.rstrip(b"\0").decode()

    def write(self, conn, path, value, tx=0):
        return self.send(conn, T.WRITE, raw=join_fields(path, value, terminate=False), tx=tx)

    def events(self, conn, type_, *fields, tx=0, raw=None) -> list[tuple[str, str, str]]:
        out = self.send(conn, type_, *fields, tx=tx, raw=raw)
        return [_event(cid, m) for cid, m in out[1:]]

    def write_events(self, conn, path, value, tx=0) -> list[tuple[str, str, str]]:
        return [_event(cid, m) for cid, m in self.write(conn, path, value, tx)[1:]]


def _event(cid: str, msg: XsMsg) -> tuple[str, str, str]:
    assert msg.type == T.WATCH_EVENT and msg.req_id == msg.tx_id == 0
    path, token = split_fields(msg.payload)
    return cid, path.decode(), token.decode()


@pytest.fixture
def host() -> Host:
    return Host()


# --- permissions -----------------------------------------------------------

def test_perm_parse_and_format():
    assert Perm.parse("r5") == Perm("r", 5) and str(Perm("b", 2)) == "b2"
    for bad in ("", "x1", "r", "r-1", "r1a", "r99999", "r١"):
        with pytest.raises(XsError) as exc:
            Perm.parse(bad)
        assert exc.value.errno == "EINVAL"


def test_access_rules():
    perms = (Perm("r", 3), Perm("w", 5), Perm("n", 6))
    assert Caller(3).may(perms, XS_PERM_READ | XS_PERM_WRITE)  # owner
    assert Caller(0, privileged=True).may(perms, XS_PERM_WRITE)
    assert Caller(5).access(perms) == XS_PERM_WRITE  # first matching later entry
    assert Caller(6).access(perms) == 0
    assert Caller(9).access(perms) == XS_PERM_READ  # default: the owner's letter


def test_domu_cannot_touch_another_domus_subtree(host):
    host.write("d2", "/local/domain/2/data/secret", "x")
    for conn, path in (("d1", "/local/domain/2/data/secret"), ("d1", "/local/domain/2")):
        assert host.err(conn, T.READ, path) == "EACCES"
        assert host.err(conn, T.DIRECTORY, path) == "EACCES"
        assert host.err(conn, T.GET_PERMS, path) == "EACCES"
        assert host.err(conn, T.RM, path) == "EACCES"
    assert host.err("d1", T.WRITE, raw=b"/local/domain/2/data/secret\0y") == "EACCES"
    assert host.err("d1", T.WRITE, raw=b"/local/domain/2/data/new\0y") == "EACCES"
    assert host.err("d1", T.SET_PERMS, "/local/domain/2/data", "n1") == "EACCES"


def test_missing_node_behind_unreadable_ancestor_is_eacces(host):
    assert host.err("d1", T.READ, "/local/domain/2/data/nothing") == "EACCES"
    assert host.err("d1", T.READ, "/local/domain/1/nothing") == "ENOENT"


def test_domu_reads_its_home_but_writes_only_what_it_owns(host):
    assert host.ok("d1", T.DIRECTORY, "/local/domain/1") == b"data\0"
    assert host.err("d1", T.WRITE, raw=b"/local/domain/1/name\0evil") == "EACCES"
    host.write("d1", "/local/domain/1/data/a/b", "v")
    assert host.ok("d1", T.GET_PERMS, "/local/domain/1/data/a/b") == b"n1\0"
    assert host.ok("d1", T.READ, "/local/domain/1/data/a") == b""  # created parent


def test_new_node_inherits_and_unprivileged_creator_owns(host):
    host.ok("d0", T.MKDIR, "/shared")
    host.ok("d0", T.SET_PERMS, "/shared", "w0", "r2")
    host.write("d0", "/shared/by0", "x")
    assert host.ok("d0", T.GET_PERMS, "/shared/by0") == b"w0\0r2\0"
    host.write("d1", "/shared/by1", "x")  # w0: default write for everyone
    assert host.ok("d0", T.GET_PERMS, "/shared/by1") == b"w1\0r2\0"
    assert host.ok("d1", T.READ, "/shared/by1") == b"x"  # owner reads despite w1


def test_set_perms_owner_rules(host):
    node = "/local/domain/1/data"
    host.write("d1", f"{node}/x", "1")
    assert host.ok("d1", T.SET_PERMS, f"{node}/x", "n1", "r2") == b"OK\0"
    assert host.ok("d2", T.READ, f"{node}/x") == b"1"
    assert host.err("d1", T.SET_PERMS, f"{node}/x", "n2") == "EPERM"
    assert host.err("d2", T.SET_PERMS, f"{node}/x", "n2") == "EACCES"
    assert host.ok("d0", T.SET_PERMS, f"{node}/x", "n2") == b"OK\0"
    assert host.err("d1", T.READ, f"{node}/x") == "EACCES"
    assert host.err("d0", T.SET_PERMS, node, "q1") == "EINVAL"
    assert host.err("d0", T.SET_PERMS, raw=b"/local\0") == "EINVAL"


def test_relative_paths_resolve_under_home(host):
    host.write("d1", "data/rel", "v")
    assert host.ok("d0", T.READ, "/local/domain/1/data/rel") == b"v"
    assert host.ok("d1", T.READ, "data/rel") == b"v"
    assert host.ok("d1", T.GET_DOMAIN_PATH, "7") == b"/local/domain/7\0"


@pytest.mark.parametrize(
    "path",
    ["", "/a//b", "/a/", "/a b", "/é", "@releaseDomain", "@x", "/" + "a" * 3072, "a" * 2049],
)
def test_invalid_paths(host, path):
    assert host.err("d0", T.READ, path) == "EINVAL"


def test_path_helpers():
    assert list(paths.ancestors("/a/b")) == ["/a", "/"]
    assert paths.is_under("/a/b", "/a") and not paths.is_under("/ab", "/a")
    assert paths.depth_below("/a/b/c", "/a") == 2 and paths.depth_below("/a", "/") == 1
    assert paths.canonicalize_watch("x", 3) == ("/local/domain/3/x", "/local/domain/3/")


# --- nodes -----------------------------------------------------------------

def test_write_read_directory_and_parents(host):
    host.write("d0", "/a/b/c", b"\x00\xffbin")
    assert host.ok("d0", T.READ, "/a/b/c") == b"\x00\xffbin"
    assert host.ok("d0", T.READ, "/a/b") == b""
    host.write("d0", "/a/b/d", "")
    assert host.ok("d0", T.DIRECTORY, "/a/b") == b"c\0d\0"
    assert host.ok("d0", T.DIRECTORY, "/a/b/c") == b""


def test_mkdir_existing_is_fine(host):
    host.write("d0", "/m", "keep")
    assert host.ok("d0", T.MKDIR, "/m") == b"OK\0"
    assert host.ok("d0", T.READ, "/m") == b"keep"


def test_rm_rules(host):
    host.write("d0", "/a/b/c", "1")
    assert host.ok("d0", T.RM, "/a/b/absent") == b"OK\0"
    assert host.err("d0", T.RM, "/a/absent/x") == "ENOENT"
    assert host.err("d0", T.RM, "/") == "EINVAL"
    assert host.ok("d0", T.RM, "/a") == b"OK\0"
    assert host.err("d0", T.READ, "/a/b/c") == "ENOENT"
    assert b"a\0" not in host.ok("d0", T.DIRECTORY, "/")


def test_directory_too_large_for_one_reply_is_e2big(host):
    for i in range(300):
        host.write("d0", f"/big/child-with-a-longish-name-{i:04d}", "")
    assert host.err("d0", T.DIRECTORY, "/big") == "E2BIG"


# --- watches ---------------------------------------------------------------

def test_watch_replies_then_fires_once(host):
    out = host.send("d0", T.WATCH, "/w", "tok")
    assert out[0][1].type == T.WATCH and out[0][1].payload == b"OK\0"
    assert [_event(c, m) for c, m in out[1:]] == [("d0", "/w", "tok")]


def test_watch_fires_on_node_and_descendants_within_depth(host):
    host.ok("d0", T.WATCH, "/w", "all")
    host.ok("d0", T.WATCH, "/w", "shallow", "1")
    assert host.write_events("d0", "/w/a", "1") == [
        ("d0", "/w/a", "all"),
        ("d0", "/w/a", "shallow"),
    ]
    assert host.write_events("d0", "/w/a/b", "1") == [("d0", "/w/a/b", "all")]
    assert host.write_events("d0", "/other", "1") == []


def test_removing_an_ancestor_fires_with_the_watched_path(host):
    host.write("d0", "/p/q/r", "1")
    host.ok("d0", T.WATCH, "/p/q/r", "deep")
    host.ok("d0", T.WATCH, "/p/never/existed", "ghost")
    assert host.events("d0", T.RM, "/p") == [
        ("d0", "/p/q/r", "deep"),
        ("d0", "/p/never/existed", "ghost"),
    ]


def test_events_reach_only_domains_that_may_read(host):
    host.ok("d2", T.WATCH, "/local/domain/1", "spy")  # the initial event is not filtered
    host.ok("d1", T.WATCH, "/local/domain/1", "mine")
    assert host.write_events("d0", "/local/domain/1/data/x", "1") == [
        ("d1", "/local/domain/1/data/x", "mine")
    ]


def test_removed_nodes_are_checked_with_the_permissions_they_had(host):
    host.write("d1", "/local/domain/1/data/x", "1")
    host.ok("d1", T.WATCH, "/local/domain/1/data/x", "t")
    host.ok("d2", T.WATCH, "/local/domain/1/data/x", "t")
    assert host.events("d0", T.RM, "/local/domain/1") == [("d1", "/local/domain/1/data/x", "t")]


def test_set_perms_notifies_who_could_read_before(host):
    host.write("d1", "data/x", "1")
    host.ok("d1", T.SET_PERMS, "data/x", "n1", "r2")
    host.ok("d2", T.WATCH, "/local/domain/1/data/x", "t")
    assert host.events("d1", T.SET_PERMS, "data/x", "n1") == [
        ("d2", "/local/domain/1/data/x", "t")
    ]


def test_relative_watch_reports_relative_paths(host):
    assert host.events("d1", T.WATCH, "data", "rel") == [("d1", "data", "rel")]
    assert host.write_events("d1", "data/k", "v") == [("d1", "data/k", "rel")]


def test_watch_errors_and_quota(host):
    host.ok("d1", T.WATCH, "data", "t")
    assert host.err("d1", T.WATCH, "data", "t") == "EEXIST"
    assert host.err("d1", T.UNWATCH, "data", "other") == "ENOENT"
    assert host.err("d1", T.WATCH, "@bogus", "t") == "EINVAL"
    assert host.err("d1", T.WATCH, raw=b"data\0") == "EINVAL"
    for i in range(127):
        host.ok("d1", T.WATCH, f"data/{i}", "t")
    assert host.err("d1", T.WATCH, "data/x", "t") == "E2BIG"
    for i in range(200):
        host.ok("d0", T.WATCH, f"/q/{i}", "t")  # Domain-0 has no quota
    assert host.ok("d1", T.UNWATCH, "data", "t") == b"OK\0"
    assert host.write_events("d0", "/local/domain/1/data/z", "") == []


def test_disconnect_and_reset_drop_watches(host):
    host.ok("d1", T.WATCH, "data", "t")
    host.ok("d2", T.WATCH, "data", "t")
    host.ok("d2", T.RESET_WATCHES)
    host.server.disconnect("d1")
    host.server.disconnect("d1")  # idempotent
    assert host.server.statistics().watches == 0
    with pytest.raises(ProtocolError):
        host.send("d1", T.READ, "data")


# --- transactions ----------------------------------------------------------

def _start(host, conn="d0") -> int:
    return int(host.ok(conn, T.TRANSACTION_START, "").rstrip(b"\0"))


def test_transaction_commit_applies_and_fires_only_then(host):
    host.ok("d0", T.WATCH, "/t", "w")
    tx = _start(host)
    assert tx != 0
    assert host.write_events("d0", "/t/a", "1", tx=tx) == []
    assert host.ok("d0", T.READ, "/t/a", tx=tx) == b"1"
    assert host.err("d0", T.READ, "/t/a") == "ENOENT"
    assert host.events("d0", T.TRANSACTION_END, "T", tx=tx) == [("d0", "/t/a", "w")]
    assert host.ok("d0", T.READ, "/t/a") == b"1"


def test_transaction_abort_discards(host):
    tx = _start(host)
    host.write("d0", "/t/a", "1", tx=tx)
    host.ok("d0", T.TRANSACTION_END, "F", tx=tx)
    assert host.err("d0", T.READ, "/t/a") == "ENOENT"
    assert host.err("d0", T.READ, "/t/a", tx=tx) == "ENOENT"  # no such transaction


def test_conflicting_write_gives_eagain(host):
    host.write("d0", "/s/state", "1")
    tx = _start(host)
    assert host.ok("d0", T.READ, "/s/state", tx=tx) == b"1"
    host.write("d1", "/local/domain/1/data/unrelated", "x")
    host.write("d0", "/s/state", "2")
    host.write("d0", "/s/other", "3", tx=tx)
    assert host.err("d0", T.TRANSACTION_END, "T", tx=tx) == "EAGAIN"
    assert host.err("d0", T.READ, "/s/other") == "ENOENT"


@pytest.mark.parametrize(
    "first, meanwhile",
    [
        ((T.DIRECTORY, "/s"), ("write", "/s/new")),  # listing saw the children
        ((T.READ, "/s/gone"), ("rm", "/s/gone")),  # read, then removed
        ((T.READ, "/s/later"), ("write", "/s/later")),  # read absent, then created
    ],
)
def test_conflicts_on_listing_and_existence(host, first, meanwhile):
    host.write("d0", "/s/gone", "1")
    tx = _start(host)
    host.send("d0", *first, tx=tx)
    if meanwhile[0] == "write":
        host.write("d0", meanwhile[1], "x")
    else:
        host.ok("d0", T.RM, meanwhile[1])
    assert host.err("d0", T.TRANSACTION_END, "T", tx=tx) == "EAGAIN"


def test_removed_before_first_access_still_conflicts(host):
    host.write("d0", "/s/gone", "1")
    tx = _start(host)
    host.ok("d0", T.RM, "/s/gone")
    assert host.err("d0", T.READ, "/s/gone", tx=tx) == "ENOENT"
    host.write("d0", "/s/x", "1", tx=tx)
    assert host.err("d0", T.TRANSACTION_END, "T", tx=tx) == "EAGAIN"


def test_unrelated_changes_do_not_conflict(host):
    host.write("d0", "/s/a", "1")
    tx = _start(host)
    host.ok("d0", T.READ, "/s/a", tx=tx)
    host.write("d0", "/s/a", "2", tx=tx)
    host.write("d0", "/elsewhere", "x")
    assert host.ok("d0", T.TRANSACTION_END, "T", tx=tx) == b"OK\0"
    assert host.ok("d0", T.READ, "/s/a") == b"2"


def test_transaction_rm_and_perms_inside(host):
    host.write("d0", "/s/a/b", "1")
    tx = _start(host)
    host.ok("d0", T.RM, "/s/a", tx=tx)
    host.ok("d0", T.SET_PERMS, "/s", "n0", "r1", tx=tx)
    assert host.ok("d0", T.DIRECTORY, "/s", tx=tx) == b""
    host.ok("d0", T.TRANSACTION_END, "T", tx=tx)
    assert host.ok("d0", T.DIRECTORY, "/s") == b""
    assert host.ok("d1", T.DIRECTORY, "/s") == b""


def test_transaction_protocol_errors_and_quota(host):
    tx = _start(host, "d1")
    assert host.err("d1", T.TRANSACTION_START, "", tx=tx) == "EBUSY"
    assert host.err("d1", T.READ, "data", tx=tx + 99) == "ENOENT"
    assert host.err("d2", T.READ, "/local/domain/2", tx=tx) == "ENOENT"  # not d2's
    assert host.err("d1", T.TRANSACTION_END, "X", tx=tx) == "EINVAL"
    assert host.err("d1", T.TRANSACTION_END, "T") == "ENOENT"
    for _ in range(9):
        _start(host, "d1")
    assert host.err("d1", T.TRANSACTION_START, "") == "ENOSPC"
    assert host.server.statistics().transactions == 10
    host.server.disconnect("d1")
    assert host.server.statistics().transactions == 0


def test_store_prunes_tombstones():
    store = Store()
    txn = store.begin()
    store.put("/x", store.get("/"))
    store.drop("/x")
    assert store.changed_since("/x", txn.start_gen)
    store.abort(txn)
    assert not store.changed_since("/x", 0)


# --- quotas ----------------------------------------------------------------

def test_node_quota(host):
    # /local/domain/1/data is already owned by domain 1: 999 more fit.
    for i in range(999):
        host.write("d1", f"data/n{i}", "")
    assert host.err("d1", T.WRITE, raw=b"data/one-too-many\0") == "ENOSPC"
    assert host.err("d1", T.MKDIR, "data/one-too-many") == "ENOSPC"
    host.ok("d1", T.RM, "data/n0")
    host.write("d1", "data/fits-again", "")
    host.write("d0", "/local/domain/1/data/by-dom0", "")  # Domain-0 is not limited


def test_value_and_perms_quota(host):
    assert host.write("d1", "data/v", b"x" * 2048)[0][1].type == T.WRITE
    assert host.err("d1", T.WRITE, raw=b"data/v\0" + b"x" * 2049) == "ENOSPC"
    host.write("d0", "/big", b"x" * 4000)
    assert host.err("d1", T.SET_PERMS, "data/v", "n1", "r2", "r3", "r4", "r5", "r6") == "ENOSPC"
    host.ok("d1", T.SET_PERMS, "data/v", "n1", "r2", "r3", "r4", "r5")


# --- domains ---------------------------------------------------------------

def test_introduce_calls_hook_and_fires_special_watch(host):
    host.ok("d1", T.WATCH, "@introduceDomain", "i")  # allowed, and fired at once
    host.ok("d0", T.WATCH, "@introduceDomain", "i")
    assert host.events("d0", T.INTRODUCE, "3", "4660", "9") == [
        ("d1", "@introduceDomain", "i"),
        ("d0", "@introduceDomain", "i"),
    ]
    assert host.hooks.calls[-1] == ("introduce", 3, 4660, 9)
    assert host.ok("d1", T.IS_DOMAIN_INTRODUCED, "3") == b"T\0"
    assert host.ok("d1", T.IS_DOMAIN_INTRODUCED, "4") == b"F\0"
    assert host.err("d0", T.INTRODUCE, "3", "1", "1") == "EEXIST"


def test_introduce_and_release_are_privileged_and_validated(host):
    assert host.err("d1", T.INTRODUCE, "5", "1", "1") == "EACCES"
    assert host.err("d1", T.RELEASE, "2") == "EACCES"
    assert host.err("d0", T.INTRODUCE, "5", "x", "1") == "EINVAL"
    assert host.err("d0", T.INTRODUCE, "32752", "1", "1") == "EINVAL"  # DOMID_FIRST_RESERVED
    assert host.err("d0", T.RELEASE, "0") == "EINVAL"
    assert host.err("d0", T.RELEASE, "9") == "ENOENT"
    host.hooks.refuse = True
    assert host.err("d0", T.INTRODUCE, "5", "1", "1") == "EINVAL"
    assert host.ok("d0", T.IS_DOMAIN_INTRODUCED, "5") == b"F\0"


def test_release_fires_and_forgets_the_domain(host):
    host.write("d0", "/backend/vbd/1", "")
    host.ok("d0", T.SET_PERMS, "/backend/vbd/1", "n0", "r1")
    host.write("d1", "data/x", "1")
    host.ok("d0", T.WATCH, "@releaseDomain", "r")
    host.ok("d0", T.WATCH, "/local/domain/1/data/x", "w")
    assert host.events("d0", T.RELEASE, "1") == [
        ("d0", "/local/domain/1/data/x", "w"),
        ("d0", "@releaseDomain", "r"),
    ]
    assert host.hooks.calls[-1] == ("release", 1)
    assert host.err("d0", T.READ, "/local/domain/1/data") == "ENOENT"  # it owned that
    assert host.ok("d0", T.GET_PERMS, "/local/domain/1") == b"n0\0"  # access revoked
    assert host.ok("d0", T.GET_PERMS, "/backend/vbd/1") == b"n0\0"
    with pytest.raises(ProtocolError):  # its connection is gone
        host.send("d1", T.READ, "data")


def test_fire_special_for_the_adapter(host):
    host.ok("d0", T.WATCH, "@releaseDomain", "r")
    out = host.server.fire_special("@releaseDomain")
    assert [_event(c, MessageParser().feed(d)[0]) for c, d in out] == [
        ("d0", "@releaseDomain", "r")
    ]


# --- the engine's contract --------------------------------------------------

def test_unknown_connection_and_oversized_message_are_protocol_errors(host):
    with pytest.raises(ProtocolError):
        host.server.handle("nobody", XsMsg(T.READ, 1, 0, b"/\0"))
    with pytest.raises(ProtocolError):
        host.server.handle("d1", XsMsg(T.READ, 1, 0, b"x" * (XENSTORE_PAYLOAD_MAX + 1)))


def test_unsupported_and_malformed_requests(host):
    assert host.err("d1", 99, "") == "ENOSYS"
    assert host.err("d1", T.WATCH_EVENT, "a", "b") == "ENOSYS"
    assert host.err("d1", T.READ, raw=b"data") == "EINVAL"  # not NUL-terminated
    assert host.err("d1", T.READ, raw=b"data\0extra\0") == "EINVAL"
    assert host.err("d1", T.WRITE, raw=b"data") == "EINVAL"
    assert host.err("d1", T.GET_DOMAIN_PATH, "-1") == "EINVAL"
    reply = host.reply("d1", T.READ, raw=b"data", tx=0)
    assert reply.req_id == host.req_id and reply.tx_id == 0


def test_statistics(host):
    stats = host.server.statistics()
    assert (stats.connections, stats.watches, stats.transactions) == (3, 0, 0)
    assert stats.nodes == 7  # /, /local, /local/domain, two homes, two data dirs
    with pytest.raises(AttributeError):
        stats.nodes = 1


def _check_tree(store: Store) -> None:
    """Children and parents agree, and the quota counts match the owners."""
    owners = Counter(store.get(path).owner for path in store.paths())
    for path in store.paths():
        node = store.get(path)
        for name in node.children:
            assert store.get(paths.child(path, name)) is not None
        if path != "/":
            assert paths.basename(path) in store.get(paths.parent(path)).children
        assert store.owned(node.owner) == owners[node.owner]


_names = st.sampled_from(["a", "b", "data", "x", "", "@releaseDomain", "/", "..", "é"])
_path = st.lists(_names, max_size=4).map("/".join) | st.sampled_from(
    ["/", "/local/domain/1/data", "/local/domain/2", "data/x", "/a/b"]
)
_field = _path.map(str.encode) | st.binary(max_size=12) | st.sampled_from(
    [b"T", b"F", b"n0", b"r1", b"b2", b"1", b"0", b"99999999999999999999999"]
)
_payload = st.lists(_field, max_size=4).map(lambda f: join_fields(*f)) | st.binary(max_size=40)
_request = st.tuples(
    st.sampled_from(["d0", "d1", "d2"]),
    st.integers(0, 30) | st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 4) | st.integers(0, 2**32 - 1),
    _payload,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_request, max_size=25))
def test_random_requests_never_crash_the_server(requests):
    host = Host()
    for conn, type_, req_id, tx_id, payload in requests:
        try:
            out = host.server.handle(conn, XsMsg(type_, req_id, tx_id, payload))
        except ProtocolError:
            host.server.disconnect(conn)
            continue
        first = MessageParser().feed(out[0][1])
        assert out[0][0] == conn and first[0].req_id == req_id and first[0].tx_id == tx_id
        for _, data in out[1:]:
            assert MessageParser().feed(data)[0].type == T.WATCH_EVENT
    _check_tree(host.server.store)


# --- the in-process client -----------------------------------------------------

def test_local_client_round_trip_and_watch_callbacks(host):
    client = host.server.local_client(sink=None)
    seen = []
    client.watch("/local/domain/1/data", "fe", lambda p, t: seen.append((p, t)))
    client.write("/local/domain/1/data/state", "4")
    assert seen == []  # callbacks wait for dispatch()
    assert client.pending == 2 and client.dispatch() == 2
    assert seen == [("/local/domain/1/data", "fe"), ("/local/domain/1/data/state", "fe")]
    assert client.read("/local/domain/1/data/state") == b"4"
    assert client.directory("/local/domain/1") == ["data"]
    assert client.get_perms("/local/domain/1") == ["n0", "r1"]
    assert not client.exists("/nope")
    with pytest.raises(XsError) as exc:
        client.read("/nope")
    assert exc.value.errno == "ENOENT"
    with pytest.raises(XsError):
        client.watch("/local/domain/1/data", "fe", print)
    client.watch("/local/domain/1/data/state", "fe", lambda p, t: seen.append((p, "second")))
    client.unwatch("/local/domain/1/data", "fe")
    client.unwatch("/local/domain/1/data/state", "fe")
    with pytest.raises(XsError):
        client.unwatch("/local/domain/1/data", "fe")
    client.rm("/local/domain/1/data/state")
    assert client.dispatch() == 0


def test_local_client_sends_other_connections_events_to_sink(host):
    host.ok("d1", T.WATCH, "data", "t")
    sent = []
    client = host.server.local_client(sink=sent.extend)
    client.write("/local/domain/1/data/k", "v")
    assert [(c, MessageParser().feed(d)[0].payload) for c, d in sent] == [
        ("d1", b"data/k\0t\0")
    ]


def test_local_client_transactions(host):
    client = host.server.local_client()
    with client.transaction() as t:
        t.write("/tx/a", "1")
        assert t.read("/tx/a") == b"1" and not client.exists("/tx/a")
    assert client.read("/tx/a") == b"1"
    with pytest.raises(XsError) as exc, client.transaction() as t:
        t.read("/tx/a")
        client.write("/tx/a", "2")
        t.write("/tx/a", "3")
    assert exc.value.errno == "EAGAIN" and client.read("/tx/a") == b"2"
    with pytest.raises(RuntimeError), client.transaction() as t:
        t.write("/tx/b", "1")
        raise RuntimeError
    assert not client.exists("/tx/b") and host.server.statistics().transactions == 0


def test_unprivileged_local_client_and_domain_calls(host):
    guest = host.server.local_client(domid=2)
    with pytest.raises(XsError) as exc:
        guest.read("/local/domain/1")
    assert exc.value.errno == "EACCES"
    dom0 = host.server.local_client()
    dom0.introduce(8, 1, 2)
    assert dom0.is_introduced(8) and dom0.get_domain_path(8) == "/local/domain/8"
    dom0.release(8)
    assert not dom0.is_introduced(8)
    guest.close()
    assert host.server.statistics().connections == 4
