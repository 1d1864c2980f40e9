"""The domain kernel's event loop: fairness between a busy data path and extra readers,
and what a busy turn does with the calls it posted."""

from collections import deque

import zmq

from domains.kernel.kernel import Kernel


class FakeXen:
    """The hypercall client as run_once sees it: a socket, upcalls, posted calls."""

    def __init__(self, sock) -> None:
        self.sock, self.upcall, self.posted, self.flushed = sock, False, [], 0

    def drain(self) -> None:
        pass

    def flush(self) -> None:
        self.posted, self.flushed = [], self.flushed + 1


def make_kernel(ctx):
    k = object.__new__(Kernel)  # the loop only: no Xen, memory or grant table
    xen_sock = ctx.socket(zmq.PAIR)
    xen_sock.bind("inproc://xen")
    k.xen = FakeXen(xen_sock)
    k.ready, k.queued, k.timers, k.readers = deque(), set(), [], {}
    k.poller = zmq.Poller()
    k.poller.register(xen_sock, zmq.POLLIN)
    k.running = True
    return k


def test_a_reader_is_served_while_the_loop_never_goes_idle():
    ctx = zmq.Context()
    try:
        k = make_kernel(ctx)
        ctl, peer = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        ctl.bind("inproc://ctl")
        peer.connect("inproc://ctl")
        served = []
        k.add_reader(ctl, lambda: served.append(ctl.recv()))

        def data_path() -> None:  # sustained traffic: always more work queued
            k.call_soon(data_path)
        k.call_soon(data_path)
        peer.send(b"xl list")
        for _ in range(200):
            k.run_once()
            if served:
                break
        assert served == [b"xl list"]
    finally:
        ctx.destroy(0)


def test_a_busy_turn_sends_what_it_posted_at_its_end():
    ctx = zmq.Context()
    try:
        k = make_kernel(ctx)

        def notify() -> None:  # a driver's turn: two notifications posted, more work queued
            k.xen.posted += [["send", 1], ["send", 2]]
            k.call_soon(lambda: None)
        k.call_soon(notify)
        k.run_once()
        assert k.xen.posted == [] and k.xen.flushed == 1  # one multicall for the turn
    finally:
        ctx.destroy(0)
