"""Random and malformed hypercalls from a real DomU never take Xen down."""

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypervisor.public import envelope
from hypervisor.public.mmu import MMU_UPDATE_SIZE, MMUEXT_OP_SIZE
from hypervisor.public.xen import Hypercall
from tests.conftest import agent_domain

# Calls that legitimately never answer (shutdown) or answer only on an event.
NO_REPLY = {(Hypercall.sched_op, 1), (Hypercall.sched_op, 2), (Hypercall.sched_op, 3)}
HYPERCALLS = [int(h) for h in Hypercall] + [0, 99, 2**31]
scalars = st.one_of(st.integers(-2**63, 2**64 - 1), st.binary(max_size=64), st.text(max_size=20),
                    st.none(), st.booleans(), st.floats(allow_nan=False))
values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(
        ["dom", "port", "ref", "flags", "remote_dom", "remote_port", "virq", "domid", "data",
         "nr_frames", "handle", "source", "dest", "len", "offset", "deadline_ns", "ports",
         "reqs", "ops", "foreigndom"]),
        kids, max_size=5)), max_leaves=12)


@st.composite
def mmu_frames(draw):
    """mmu_update / mmuext_op with packed structs of random (mostly whole) sizes."""
    hc = draw(st.sampled_from([Hypercall.mmu_update, Hypercall.mmuext_op]))
    size = MMU_UPDATE_SIZE if hc == Hypercall.mmu_update else MMUEXT_OP_SIZE
    n = draw(st.integers(0, 6))
    raw = draw(st.binary(min_size=n * size, max_size=n * size + draw(st.sampled_from([0, 0, 3]))))
    args = {"reqs" if hc == Hypercall.mmu_update else "ops": raw}
    if draw(st.booleans()):
        args["foreigndom"] = draw(st.integers(-1, 2**32) | st.sampled_from([0, 1, 0x7FF0]))
    return msgpack.packb([1, draw(st.integers(1, 2**31 - 1)), int(hc), 0, args])


@st.composite
def frames(draw):
    kind = draw(st.integers(0, 11))
    if kind >= 10:
        return draw(mmu_frames())
    if kind == 0:
        return draw(st.binary(max_size=200))  # not even msgpack
    if kind == 1:
        return msgpack.packb(draw(values))  # msgpack, wrong shape
    hc = draw(st.sampled_from(HYPERCALLS))
    cmd = draw(st.integers(0, 60) | st.integers(-2**40, 2**40))
    if (hc, cmd) in NO_REPLY:
        cmd = 100
    args = draw(values | st.lists(values, min_size=1, max_size=3))
    seq = draw(st.integers(1, 2**31 - 1))
    return msgpack.packb([draw(st.sampled_from([1, 1, 1, 2])), seq, hc, cmd, args])


def test_random_hypercalls_from_a_domu(make_host, agent):
    h = make_host(None, agent_domain("fuzz"), agent_domain("peer"))
    fuzz, peer = agent(h, "fuzz"), agent(h, "peer")

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(frames())
    def one(frame):
        res = fuzz("hypercall_raw", frame_hex=frame.hex())
        assert res is not None, "Xen did not answer"
        assert "bad_reply" not in res
        assert isinstance(res["rc"], int)

    one()
    assert h.alive()
    # Xen and both guests still do real work.
    port = peer("alloc_unbound", remote=fuzz.domid)
    assert fuzz("bind", remote=peer.domid, port=port) > 0
    assert {"Domain-0", "fuzz", "peer"} <= set(h.domains())
    assert "hypercall handler failed" not in h.xl("dmesg").decode()


def test_garbage_is_answered_einval(make_host, agent):
    h = make_host(None, agent_domain("g"))
    g = agent(h, "g")
    res = g("hypercall_raw", frame_hex=b"\xc1garbage".hex())
    assert res == {"rc": -22, "seq": 0}
    res = g("hypercall_raw", frame_hex=envelope.encode_request(7, 12345, 0, None).hex())
    assert res == {"rc": -38, "seq": 7}  # ENOSYS
