"""Writing and reading the record: totals per sample, latest runs, rename/merge, lookups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from defectwatch.db import heartbeat as hb
from defectwatch.db import read_transaction, write_transaction
from defectwatch.db.models import DefectRow, ScanRow
from defectwatch.db.queries import (
    find_scans,
    last_processed,
    latest_run,
    list_scans,
    run_defects,
    sample_totals,
    status_counts,
)
from defectwatch.db.records import add_detection_run, rename_sample
from defectwatch.errors import NotFoundError
from tests.db.factories import detection, record

ON_POSTGRESQL = True  # each test once more on a real PostgreSQL server (conftest.py)


def test_totals_count_each_done_scan_once_through_its_latest_run(engine):
    a = record(
        engine,
        "/w/A/1.sxm",
        sample="A",
        runs=[
            detection(50, 50, 1000.0),  # old model
            detection(4, 1, 2500.0, version="v2"),
        ],
    )
    record(engine, "/w/A/2.sxm", sample="A", runs=[detection(2, 3, 7500.0)])
    record(engine, "/w/A/3.sxm", sample="A", runs=[detection(9, 9, 100.0)], status="failed")
    record(engine, "/w/A/4.sxm", sample="A", runs=[], status="queued")
    record(engine, "/w/B/1.sxm", sample="B", runs=[detection(1, 0, 400.0)])
    with read_transaction(engine) as s:
        totals = {t.sample: t for t in sample_totals(session=s)}
        assert latest_run(a, session=s).model_version == "v2"
    ta = totals["A"]
    assert (ta.scans, ta.done, ta.failed, ta.pending) == (4, 2, 1, 1)
    assert (ta.trough, ta.peak, ta.total, ta.area_nm2) == (6, 4, 10, 10_000.0)
    assert ta.latest_path == "/w/A/4.sxm"
    assert (totals["B"].total, totals["B"].area_nm2) == (1, 400.0)
    with read_transaction(engine) as s:
        only_b = sample_totals(session=s, samples=["B"])
    assert [t.sample for t in only_b] == ["B"]


def test_rename_and_merge_samples(engine):
    record(engine, "/w/A/1.sxm", sample="A", runs=[detection(1, 0, 100.0)])
    record(engine, "/w/a-typo/1.sxm", sample="a-typo", runs=[detection(2, 0, 100.0)])
    with write_transaction(engine) as s:
        assert rename_sample("a-typo", "A", session=s) == "merged"
        assert rename_sample("A", "WSe2-SL445", session=s) == "renamed"
        assert rename_sample("WSe2-SL445", "WSe2-SL445", session=s) == "unchanged"
    with read_transaction(engine) as s:
        totals = sample_totals(session=s)
        assert [(t.sample, t.done, t.total) for t in totals] == [("WSe2-SL445", 2, 3)]
    with pytest.raises(NotFoundError, match="'nope'"):
        with write_transaction(engine) as s:
            rename_sample("nope", "x", session=s)


def test_defects_stored_and_read_back_in_reading_order(engine):
    scan_id = record(engine, "/w/A/1.sxm", sample="A", runs=[detection(3, 2, 100.0)])
    with read_transaction(engine) as s:
        run = latest_run(scan_id, session=s)
        rows = run_defects(run.id, session=s)
    assert [d.kind for d in rows] == ["trough"] * 3 + ["peak"] * 2
    assert [d.row for d in rows] == sorted(d.row for d in rows)
    assert [d.contrast for d in rows] == [None, -3.0, -3.0, 2.5, 2.5]  # NaN: not measured
    assert (run.trough_count, run.peak_count, run.defect_count) == (3, 2, 5)


def test_deleting_a_scan_cascades_to_runs_and_defects(engine):
    scan_id = record(engine, "/w/A/1.sxm", sample="A", runs=[detection(3, 2, 100.0)])
    with write_transaction(engine) as s:
        s.delete(s.get(ScanRow, scan_id))
    with read_transaction(engine) as s:
        assert s.scalar(select(func.count()).select_from(DefectRow)) == 0


def test_find_scans_by_id_path_or_file_name(engine):
    one = record(engine, "/w/A/STM_001.sxm", sample="A", runs=[])
    record(engine, "/w/B/STM_001.sxm", sample="B", runs=[])
    three = record(engine, "/w/B/STM_0_1.sxm", sample="B", runs=[])
    with read_transaction(engine) as s:
        assert [r.id for r in find_scans(str(one), session=s)] == [one]
        assert [r.path for r in find_scans("/w/A/STM_001.sxm", session=s)] == ["/w/A/STM_001.sxm"]
        assert len(find_scans("STM_001.sxm", session=s)) == 2
        # "_" is not a wildcard
        assert [r.id for r in find_scans("STM_0_1.sxm", session=s)] == [three]
        assert find_scans("missing.sxm", session=s) == []


def test_listing_status_and_last_processed(engine):
    record(engine, "/w/A/1.sxm", sample="A", runs=[detection(1, 0, 100.0)])
    record(engine, "/w/A/2.sxm", sample="A", runs=[], status="failed")
    last = record(engine, "/w/B/1.sxm", sample="B", runs=[detection(0, 2, 100.0)])
    with read_transaction(engine) as s:
        assert status_counts(session=s) == {"queued": 0, "processing": 0, "done": 2, "failed": 1}
        assert last_processed(session=s)[0].id == last
        failed = list_scans(session=s, status="failed")
        assert [(r.path, n, run) for r, n, run in failed] == [("/w/A/2.sxm", "A", None)]
        assert [r.path for r, _, _ in list_scans(session=s, sample="B")] == ["/w/B/1.sxm"]


def test_heartbeat_alive_then_stale_or_stopped(engine):
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    with write_transaction(engine) as s:
        hb.beat(session=s, pid=42, host="stm1", started_at=t0, now=t0)
        hb.beat(session=s, pid=42, host="stm1", started_at=t0, now=t0 + timedelta(seconds=10))
    with read_transaction(engine) as s:
        alive = hb.alive(session=s, within_s=30, now=t0 + timedelta(seconds=20))
        assert [(d.pid, d.beat_at) for d in alive] == [(42, t0 + timedelta(seconds=10))]
        assert hb.alive(session=s, within_s=30, now=t0 + timedelta(seconds=60)) == []
    with write_transaction(engine) as s:
        hb.stopped(session=s, pid=42, host="stm1", started_at=t0)
    with read_transaction(engine) as s:
        assert hb.alive(session=s, within_s=1e9) == []
        assert hb.last_beat(session=s).pid == 42


def test_timestamps_come_back_aware_utc(engine):
    scan_id = record(engine, "/w/A/1.sxm", sample="A", runs=[detection(1, 0, 100.0)])
    with write_transaction(engine) as s:
        add_detection_run(
            scan_id,
            detection(1, 0, 100.0),
            session=s,
            finished_at=datetime(2025, 6, 1, 14, 0, tzinfo=UTC).astimezone(),
        )
    with read_transaction(engine) as s:
        run = latest_run(scan_id, session=s)
    assert run.finished_at == datetime(2025, 6, 1, 14, 0, tzinfo=UTC)
    assert run.finished_at.tzinfo is not None
