"""A malicious frontend, driven from the host: the `rogue` fault.

The rogue is a DomU running the test kernel `tests.kernels.agent` with
`blkfront=off`: XenoLinux without its own blkfront, plus an agent that
runs commands written to its xenstore node `data/cmd` (JSON `{"id", "op",
"args"}`) and answers in `data/res`. Its rogue_* commands do the blkfront
handshake by hand and push requests Dom0's blkback must refuse. We write
the commands as Domain-0 does, through the toolstack's xenstore ops.

Ops (launcher.fault_scenario.ROGUE_OPS): connect; bad-requests (a grant
that does not exist, sectors past the page, 12 segments, a sector past the
disk); revoke-grant (a request on a page whose grant is ended at once);
flood (thousands of notifications on the ring's event channel);
corrupt-index (req_prod a whole ten rings ahead: blkback must cut it off).
"""

import itertools
import json
import time

from launcher.rundir import HostError

XVDA = 51712
CONNECTED, CLOSING, CLOSED = "4", "5", "6"
FLOOD = 2000


class Rogue:
    def __init__(self, host, dom: str, timeout_s: float = 10.0) -> None:
        self.h, self.dom, self.timeout_s = host, dom, timeout_s
        self.seq = itertools.count(1)
        self.backend: str | None = None

    @property
    def domid(self) -> int:
        return self.h[self.dom]["domid"]

    def call(self, op: str, **args):
        n, domid = next(self.seq), self.domid
        self.h.xl("xs_write", path=f"/local/domain/{domid}/data/cmd",
                  value=json.dumps({"id": n, "op": op, "args": args}))
        prev, deadline = None, time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            left = max(0.1, deadline - time.monotonic())
            raw = self.h.xl("xs_wait", path=f"/local/domain/{domid}/data/res",
                            not_value=prev, timeout_ms=int(left * 1000), timeout_s=left + 5)
            res = json.loads(raw)
            if res["id"] == n:
                if not res["ok"]:
                    raise HostError(f"{self.dom} {op}: {res['error']}")
                return res["result"]
            prev = raw
        raise HostError(f"{self.dom} did not answer {op}")

    def backend_state(self) -> str | None:
        return None if self.backend is None else self.h.xl("xs_read",
                                                             path=f"{self.backend}/state")

    def _wait_state(self, states: tuple[str, ...]) -> str | None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            state = self.backend_state()
            if state in states:
                return state
            try:  # long-poll for the next change of state
                left = max(0.1, deadline - time.monotonic())
                self.h.xl("xs_wait", path=f"{self.backend}/state", not_value=state,
                          timeout_ms=int(left * 1000), timeout_s=left + 5)
            except HostError:
                break
        return self.backend_state()

    def connect(self) -> str:
        if self.backend is None:
            self.backend = self.call("rogue_connect")
        return f"backend state {self._wait_state((CONNECTED,))}"

    def do(self, op: str) -> str:
        """Run one rogue op; a line saying what came of it."""
        if op == "connect" or self.backend is None:
            said = self.connect()
            if op == "connect":
                return said
        if op == "bad-requests":
            return self._bad_requests()
        if op == "revoke-grant":
            ref = self.call("grant", domid=0, fill=0x5A)
            self.call("rogue_request", segments=[[ref, 0, 7]], req_id=900)
            self.call("end_access", ref=ref)
            return f"grant {ref} ended while in use; backend state {self.backend_state()}"
        if op == "flood":
            port = int(self.h.xl("xs_read",
                                 path=f"/local/domain/{self.domid}/device/vbd/{XVDA}/"
                                 "event-channel"))
            self.call("send", port=port, times=FLOOD)
            return f"{FLOOD} notifications on port {port}; backend state {self.backend_state()}"
        if op == "corrupt-index":
            self.call("rogue_bogus_index")
            return f"req_prod ten rings ahead; backend state {self._wait_state((CLOSING, CLOSED))}"
        raise HostError(f"unknown rogue op {op!r}")

    def _bad_requests(self) -> str:
        cases = [dict(segments=[[5000, 0, 7]], req_id=1),  # a grant that does not exist
                 dict(segments=[[1, 0, 9]], own_page=True, req_id=3),  # past the page
                 dict(segments=[[1, 0, 7]], own_page=True, nr_segments=12, req_id=4),
                 dict(segments=[[1, 0, 7]], own_page=True, sector=10**9, req_id=5)]
        for case in cases:
            self.call("rogue_request", **case)
        got: dict = {}
        deadline = time.monotonic() + self.timeout_s
        while len(got) < len(cases) and time.monotonic() < deadline:
            got.update(dict(self.call("rogue_responses")))
        return f"responses {dict(sorted(got.items()))} (-1 = BLKIF_RSP_ERROR)"
