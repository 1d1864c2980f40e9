"""The toolstack's run-directory records (domains.dom0.toolstack.records)."""

from domains.dom0.toolstack.records import Records


def test_a_domain_record_round_trips_with_what_was_handled(tmp_path):
    r = Records(str(tmp_path / "libxl"))
    r.save(3, {"name": "d1"}, ["crash", "poweroff"])
    (path,) = r.domain_files()
    assert path.endswith("3.json")
    r.forget(3)
    r.forget(3)  # twice is fine
    assert r.domain_files() == []


def test_pending_restarts_and_a_torn_one(tmp_path):
    r = Records(str(tmp_path))
    r.begin_restart({"name": "d1", "memory_mib": 16})
    (tmp_path / "pending-d2.json").write_text("{not json")
    assert r.pending_restarts() == [{"name": "d1", "memory_mib": 16}]
    assert not (tmp_path / "pending-d2.json").exists()
    r.end_restart("d1")
    assert r.pending_restarts() == []
    assert r.domain_files() == []  # pending files are not domain records


def test_restart_history_keeps_numbers_only(tmp_path):
    r = Records(str(tmp_path))
    assert r.restart_history() == {}
    r.save_restart_history({"d1": [1.5, 2.5]})
    assert r.restart_history() == {"d1": [1.5, 2.5]}
    (tmp_path / "restarts.json").write_text('{"d1": [1, "x"], "d2": 7}')
    assert r.restart_history() == {"d1": [1.0]}
