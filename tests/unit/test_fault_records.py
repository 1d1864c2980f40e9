"""The writer's record format and its checks (launcher.fault_records), and
that the guest's /bin/writer and /bin/reader write and read the same format."""

import pathlib
import zlib

import pytest

from launcher import fault_records as fr

BIN = pathlib.Path(__file__).resolve().parents[2] / "domains" / "xenolinux" / "bin"


def program(name: str) -> dict:
    """A guest program's top level, with the one libc helper its format needs."""
    ns = {"crc32": lambda b: zlib.crc32(b) & 0xFFFFFFFF}
    exec(compile((BIN / name).read_text(), name, "exec"), ns)  # noqa: S102
    return ns


@pytest.mark.parametrize("name", ["writer", "reader"])
def test_guest_programs_use_the_hosts_record_format(name):
    ns = program(name)
    for seq in (1, 2, 99, 12345, 9_999_999_999):
        assert ns["record"](seq) == fr.record(seq)


def test_a_record_is_64_bytes_numbered_and_checksummed():
    rec = fr.record(7)
    assert len(rec) == fr.RECORD and rec.endswith(b"\n")
    seq, crc, payload = rec[:-1].split(b" ")
    assert int(seq) == 7 and len(seq) == 10 and len(payload) == 43
    assert int(crc, 16) == zlib.crc32(seq + b" " + payload)
    assert fr.record(8) != rec


def test_scan_finds_bad_records_and_a_torn_tail():
    data = bytearray(b"".join(fr.record(i) for i in range(1, 11)))
    data[3 * 64 + 20] ^= 1  # record 4: a flipped payload bit
    data[6 * 64:7 * 64] = bytes(64)  # record 7: a block that never reached the disk
    s = fr.scan(bytes(data) + fr.record(11)[:30])
    assert (s.records, s.intact, s.bad, s.tail) == (10, 8, [(4, 4), (7, 7)], 30)
    assert s.missing([(1, 3)]) == []
    assert s.missing([(1, 12)]) == [(4, 4), (7, 7), (11, 12)]  # 11, 12 are not there at all


def test_a_record_in_the_wrong_place_is_not_intact():
    data = fr.record(1) + fr.record(3) + fr.record(2)
    assert fr.scan(data).bad == [(2, 3)]


def test_ranges_merge_intersect_and_print():
    r = fr.add_range([], 5, 8)
    r = fr.add_range(r, 1, 3)
    r = fr.add_range(r, 4, 4)
    assert r == [(1, 8)]
    assert fr.intersect([(1, 10)], [(3, 4), (9, 20)]) == [(3, 4), (9, 10)]
    assert fr.count([(1, 3), (7, 7)]) == 4
    assert fr.show([(1, 3), (7, 7)]) == "1-3,7" and fr.show([]) == "none"
    assert fr.parse_ranges("1-3,7") == [(1, 3), (7, 7)] and fr.parse_ranges("none") == []


def test_reader_summary_line_parses():
    text = "/ # reader /data\nreader /data: 704 bytes, 11 records, 9 intact, bad 3-4, tail 0\n"
    s = fr.parse_reader(text)["/data"]
    assert (s.size, s.records, s.intact, s.bad, s.tail) == (704, 11, 9, [(3, 4)], 0)


def test_writer_lines_parse_even_behind_a_prompt():
    ev = fr.parse_line("d1", "/ # writer /data ack 3 24 123456789\r")
    assert (ev.kind, ev.batch, ev.last, ev.t_ns, ev.path) == ("ack", 3, 24, 123456789, "/data")
    ev = fr.parse_line("d1", "writer /data w 3 17 24 5")
    assert (ev.kind, ev.batch, ev.first, ev.last) == ("w", 3, 17, 24)
    ev = fr.parse_line("d1", "writer /data fail 4 32 EIO 7")
    assert (ev.kind, ev.error, ev.t_ns) == ("fail", "EIO", 7)
    ev = fr.parse_line("d1", "writer /x start 12 101 9")
    assert (ev.kind, ev.pid, ev.first) == ("start", 12, 101)
    assert fr.parse_line("d1", "writer /data ack x 24 5") is None
    assert fr.parse_line("d1", "[ 0.1] blkfront: ...") is None


def test_line_splitter_joins_pieces():
    s = fr.LineSplitter()
    assert s.feed(b"writer /d ack 1 8 ") == []
    assert s.feed(b"5\r\nwriter") == ["writer /d ack 1 8 5"]
    assert s.feed(b" /d w 2 9 16 6\n") == ["writer /d w 2 9 16 6"]


def events(*lines: str) -> fr.WriterLog:
    log = fr.WriterLog("d1", "/data")
    for line in lines:
        log.add(fr.parse_line("d1", line))
    return log


def test_writer_log_counts_batches_and_acknowledged_records():
    log = events("writer /data start 2 1 1", "writer /data w 1 1 8 2",
                 "writer /data ack 1 8 3", "writer /data w 2 9 16 4",
                 "writer /data fail 2 16 EIO 5", "writer /data w 3 9 16 6",
                 "writer /data ack 3 16 7", "writer /data w 4 17 24 8")
    assert log.acked == [(1, 16)] and log.issued == [(1, 24)]
    assert log.statistics() == {"batches_issued": 4, "batches_acked": 2, "batches_failed": 1,
                                "batches_unanswered": 1, "records_issued": 24,
                                "records_acked": 16, "writer_starts": 1}
    assert log.times("ack") == [3, 7]


def test_a_writer_that_restarts_below_its_acknowledgements_lost_them():
    ok = events("writer /data start 2 1 1", "writer /data w 1 1 8 2", "writer /data ack 1 8 3",
                "writer /data w 2 9 16 4", "writer /data start 2 9 5")  # crash mid-batch 2
    assert ok.lost_on_restart == []
    bad = events("writer /data start 2 1 1", "writer /data w 1 1 8 2", "writer /data ack 1 8 3",
                 "writer /data start 2 5 5")  # came back with only 4 records intact
    assert bad.lost_on_restart == [(5, 8)]


def test_a_block_load_totals_its_runs():
    from launcher.fault_records import LoadLog
    log = LoadLog("d2", "/load")
    lines = ["blkload /load start 7 100", "blkload /load ops 16 16 0 200",
             "writer /data ack 1 8 250", "blkload /other ops 99 99 0 260",
             "blkload /load ops 30 34 1 300",
             "blkload /load start 9 400", "blkload /load ops 5 3 0 500"]
    mine = [log.feed(x) for x in lines]
    assert mine == [True, True, False, False, True, True, True]
    assert log.statistics() == {"domain": "d2", "path": "/load", "starts": 2, "reads": 35,
                                "writes": 37, "failed": 1, "ops": 72}
    assert log.times == [200, 300, 500]
