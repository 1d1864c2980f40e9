"""`xenolab demo` through the CLI, as a user runs it: every section's steps
present, in causal order, and a well-formed Chrome trace at the end."""

import json
import re

import pytest

from tests.conftest import assert_no_leaks, shm_entries, xenolab

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "trace.json"
    shm = shm_entries()
    run = xenolab("demo", "-o", str(out))
    assert_no_leaks("demo", shm)  # the demo's host is down and left nothing behind
    return run.stdout, json.loads(out.read_text())


def steps(text: str, section: int) -> list[str]:
    body = text.split(f"=== {section}.")[1].split("\n===")[0]
    return re.findall(r"^\s*\d+\. (.*)$", body, re.M)


def test_section_1_ends_when_foo_starts_running(demo):
    lines = steps(demo[0], 1)
    assert lines[-1].endswith("<== foo starts running")
    order = ["calls spawn()", "creates process", 'looks up "foo"', "blkfront queues a read",
             "Xen → Domain-0", "blkback takes request", "raises IRQ",
             "blkfront completes request", "builds address space 0..0xc0000000",
             "mmu_update", "PIN_L2", "execs /bin/foo", "foo starts running"]
    pos = 0
    for want in order:  # in this order, each after the one before
        pos = next((i for i in range(pos, len(lines)) if want in lines[i]), None)
        assert pos is not None, f"no {want!r} after the steps before it:\n" + "\n".join(lines)


def test_section_2_foo_resumes_only_after_its_io_completed(demo):
    lines = steps(demo[0], 2)
    assert "calls open()" in lines[0] and "write() returns 4096" in lines[-1]
    blocks = [i for i, x in enumerate(lines) if x.endswith("foo BLOCKS")]
    resumes = [i for i, x in enumerate(lines) if x.endswith("foo RESUMES")]
    assert blocks and len(blocks) == len(resumes)
    for b, r in zip(blocks, resumes, strict=True):
        assert b < r
        between = lines[b:r]
        assert any("blkfront completes request" in x for x in between)
        assert any("blkback answers request" in x for x in between)
    assert "foo: wrote 4096 bytes to bar, read 4096 back: same" in demo[0]


def test_section_3_shows_isolation_and_xen_refusals(demo):
    text = demo[0].split("=== 3.")[1].split("\n===")[0]
    assert "read 111 back from 0x9000000: own value" in text
    assert "read 222 back from 0x9000000: own value" in text
    assert text.count("Segmentation fault (signal 11)") == 2
    assert "read 7 back from 0x9000000: own value" in text
    assert len(re.findall(r"REFUSED E[A-Z]+ at entry 0", text)) == 3


def test_section_4_foo_over_tcp_blocks_until_the_network_answers(demo):
    lines = steps(demo[0], 4)
    assert "calls connect()" in lines[0] and "recv() returns 15" in lines[-1]
    # the whole path, in order: the SYN leaves d1 and reaches d2 through Dom0
    order = ["TCP/IP sends TCP 10.0.0.11", "netfront puts 1 frame(s) on the tx ring",
             "EVTCHNOP_send", "Xen → Domain-0", "netback reads 1 frame(s) from d1",
             "bridge xenbr0 forwards vif1.0>vif2.0", "into d2/XenoLinux's rx buffers",
             "Xen → d2/XenoLinux", "d2/XenoLinux: netfront takes",
             "d2/XenoLinux: TCP/IP receives TCP 10.0.0.11"]
    pos = 0
    for want in order:
        pos = next((i for i in range(pos, len(lines)) if want in lines[i]), None)
        assert pos is not None, f"no {want!r} after the steps before it:\n" + "\n".join(lines)
    for who in ("foo", "echod"):
        blocks = [i for i, x in enumerate(lines) if f"<== {who} BLOCKS" in x]
        resumes = [i for i, x in enumerate(lines) if x.endswith(f"<== {who} RESUMES")]
        assert blocks and resumes, who
        for b in blocks:  # each wake-up follows its block, and a frame's arrival
            r = next((i for i in resumes if i > b), None)
            if r is None:  # echod still waits for the next message when foo is done
                assert who == "echod" and b > max(resumes), lines[b:]
                continue
            assert any("netfront takes" in x for x in lines[b:r]), (who, lines[b:r])
    assert "reply b'hello from foo\\n'" in demo[0]


def test_section_5_destroys_pauses_and_creates(demo):
    text = demo[0].split("=== 5.")[1].split("Trace files")[0]
    assert "still here" in text and "--p---" in text
    assert re.search(r"^\s+d2\s+3\s+32", text, re.M)  # created again, a new domid


def test_trace_json_is_well_formed(demo):
    events = demo[1]["traceEvents"]
    names = {e["args"]["name"] for e in events if e.get("ph") == "M"
             and e["name"] == "process_name"}
    assert {"Xen", "Domain-0", "d1 (XenoLinux)"} <= names
    starts = {e["id"] for e in events if e.get("ph") == "s"}
    assert starts and all(e["id"] in starts for e in events if e.get("ph") in ("t", "f"))
    for e in events:
        if e.get("ph") != "M":
            assert {"ph", "ts", "pid", "tid"} <= e.keys()
    by_thread: dict = {}
    for e in (e for e in events if e.get("ph") == "X"):
        by_thread.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for slices in by_thread.values():  # nested or disjoint, never overlapping
        slices.sort(key=lambda s: (s[0], -s[1]))
        stack: list = []
        for a, b in slices:
            while stack and stack[-1] <= a:
                stack.pop()
            assert not stack or b <= stack[-1] + 1e-6
            stack.append(b)
