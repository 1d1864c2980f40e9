"""The guest's event-channel driver: bind ports, dispatch upcalls.

Rules (reference 5.3, with the model's byte-per-port layout):
1. Xen sets pending bytes and upcall_pending; the guest clears them.
2. On an upcall the guest clears upcall_pending *first*, then scans the
   pending array, clearing each port's byte *before* calling its handler,
   so a send that races the handler raises a fresh event instead of being
   lost.
3. A masked port stays pending; `unmask` asks Xen, which re-delivers.
"""

from collections.abc import Callable

from domains.kernel.hypercall import HypercallClient
from hypervisor.public import trace
from hypervisor.public.event_channel import (
    EVTCHN_MASK_OFFSET,
    EVTCHN_PENDING_OFFSET,
    NR_EVENT_CHANNELS,
    VCPU_UPCALL_PENDING,
    EvtchnOp,
)
from hypervisor.public.xen import DOMID_SELF, Hypercall

Handler = Callable[[int], None]
OP = Hypercall.event_channel_op


class EventChannelDriver:
    def __init__(self, client: HypercallClient, shared_info: memoryview) -> None:
        self.client = client
        self.shinfo = shared_info
        self.pending = shared_info[EVTCHN_PENDING_OFFSET:EVTCHN_PENDING_OFFSET + NR_EVENT_CHANNELS]
        self.mask = shared_info[EVTCHN_MASK_OFFSET:EVTCHN_MASK_OFFSET + NR_EVENT_CHANNELS]
        self.handlers: dict[int, Handler] = {}
        self.upcalls = 0
        self.events = 0

    # ---- binding -------------------------------------------------------

    def alloc_unbound(self, remote_dom: int, dom: int = DOMID_SELF) -> int:
        rc, _ = self.client.check(OP, EvtchnOp.alloc_unbound,
                                  {"dom": dom, "remote_dom": remote_dom}, "alloc_unbound")
        return rc

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        rc, _ = self.client.check(OP, EvtchnOp.bind_interdomain,
                                  {"remote_dom": remote_dom, "remote_port": remote_port},
                                  "bind_interdomain")
        return rc

    def bind_virq(self, virq: int, vcpu: int = 0) -> int:
        rc, _ = self.client.check(OP, EvtchnOp.bind_virq, {"virq": virq, "vcpu": vcpu},
                                  "bind_virq")
        return rc

    def bind_pirq(self, pirq: int) -> int:
        return self.client.check(OP, EvtchnOp.bind_pirq, {"pirq": pirq}, "bind_pirq")[0]

    def close(self, port: int) -> None:
        self.handlers.pop(port, None)
        self.client.call(OP, EvtchnOp.close, {"port": port})

    def notify(self, port: int, trace_id: int = 0) -> None:
        """notify_remote_via_evtchn: a posted EVTCHNOP_send (its result unused);
        trace_id is the request it is for (a new trace if none)."""
        if trace.on:
            trace.stamp(trace.EVTCHN_SEND, trace_id or trace.new_id(), port)
        self.client.post(OP, EvtchnOp.send, {"port": port})

    def send(self, port: int, trace_id: int = 0) -> int:
        """EVTCHNOP_send, waiting for its return value."""
        if trace.on:
            trace.stamp(trace.EVTCHN_SEND, trace_id or trace.new_id(), port)
        return self.client.call(OP, EvtchnOp.send, {"port": port})[0]

    def status(self, port: int, dom: int = DOMID_SELF):
        return self.client.call(OP, EvtchnOp.status, {"dom": dom, "port": port})

    def on(self, port: int, handler: Handler) -> None:
        self.handlers[port] = handler

    # ---- masking -------------------------------------------------------

    def mask_port(self, port: int) -> None:
        self.mask[port] = 1

    def unmask(self, port: int) -> None:
        self.mask[port] = 0
        if self.pending[port]:
            self.client.call(OP, EvtchnOp.unmask, {"port": port})

    def is_pending(self, port: int) -> bool:
        return bool(self.pending[port])

    def clear(self, port: int) -> None:
        self.pending[port] = 0

    # ---- upcalls -------------------------------------------------------

    def dispatch(self) -> int:
        """Handle every pending, unmasked port; returns how many."""
        self.shinfo[VCPU_UPCALL_PENDING] = 0
        self.upcalls += 1
        snap = bytes(self.pending)
        handled = 0
        port = snap.find(1)
        while port >= 0:
            if not self.mask[port]:
                self.pending[port] = 0
                if trace.on:
                    trace.stamp(trace.EVTCHN_UPCALL, 0, port)
                handler = self.handlers.get(port)
                if handler is not None:
                    handler(port)
                handled += 1
            port = snap.find(1, port + 1)
        self.events += handled
        return handled
