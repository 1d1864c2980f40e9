"""The wire (devices.wire) in one process: hub election, forwarding, re-election."""

import time

import pytest
import zmq

from devices.wire import WirePort, wire_endpoint


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


def pump(ports: list[WirePort], want: dict[int, int], timeout_s: float = 5.0) -> dict:
    """Run every port's loop until port i has received want[i] frames."""
    got: dict[int, list[bytes]] = {i: [] for i in range(len(ports))}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for i, p in enumerate(ports):
            p.tick(time.monotonic_ns())
            if p.hub is not None:
                p.hub.on_readable()
            got[i] += p.recv_all()
        if all(len(got[i]) >= n for i, n in want.items()):
            return got
        zmq.select([s for p in ports for s in p.sockets()], [], [], 0.01)
    raise AssertionError(f"frames missing: {({i: len(v) for i, v in got.items()})}")


def hello_all(ports: list[WirePort]) -> None:
    """Until the hub knows every port (each has said hello)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for p in ports:
            p.tick(time.monotonic_ns())
            if p.hub is not None:
                p.hub.on_readable()
        hubs = [p.hub for p in ports if p.hub is not None]
        if hubs and len(hubs[0].peers) == len(ports):
            return
        zmq.select([s for p in ports for s in p.sockets()], [], [], 0.01)
    raise AssertionError("the hub did not learn every port")


def test_wire_names_are_checked():
    with pytest.raises(ValueError):
        wire_endpoint("../x")


def test_one_hub_and_every_frame_to_every_other_port(ctx):
    name = f"t-hub-{time.monotonic_ns()}"
    ports = [WirePort(ctx, name) for _ in range(3)]
    try:
        hello_all(ports)
        assert sum(p.hub is not None for p in ports) == 1
        ports[1].send(b"from-1")
        got = pump(ports, {0: 1, 2: 1})
        assert got[0] == [b"from-1"] and got[2] == [b"from-1"] and got[1] == []
    finally:
        for p in ports:
            p.close()


def test_a_new_hub_is_elected_when_the_hub_goes(ctx):
    name = f"t-elect-{time.monotonic_ns()}"
    ports = [WirePort(ctx, name) for _ in range(3)]
    try:
        hello_all(ports)
        hub = next(p for p in ports if p.hub is not None)
        hub.close()
        rest = [p for p in ports if p is not hub]
        hello_all(rest)
        rest[0].send(b"again")
        assert pump(rest, {1: 1})[1] == [b"again"]
    finally:
        for p in ports:
            p.close()
