"""Ingest: the daemon's process(job) and the process command's recording, with a stand-in
detector (the real ensemble is tested by the detection issue)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from defectwatch.db import heartbeat as hb
from defectwatch.db import open_database, read_transaction, write_transaction
from defectwatch.db.models import ScanRow
from defectwatch.db.queries import latest_run, sample_totals
from defectwatch.db.registry import activate_version, list_versions, register_version
from defectwatch.domain import Scan
from defectwatch.errors import ScanIncompleteError
from defectwatch.service.ingest import (
    Heartbeat,
    active_model,
    file_sha256,
    make_process,
    make_queue,
    record_file,
)
from tests.db.factories import detection


def fake_scan(path: str, *, comment: str = "") -> Scan:
    data = np.zeros((64, 128), np.float32)
    acquired = np.ones(64, bool)
    acquired[48:] = False  # an aborted scan: 3/4 acquired
    return Scan(
        path=path,
        channel="Z",
        direction="forward",
        unit="m",
        data=data,
        acquired_rows=acquired,
        width_nm=100.0,
        height_nm=50.0,
        scan_dir="down",
        angle_deg=0.0,
        offset_x_nm=0.0,
        offset_y_nm=0.0,
        recorded_at=datetime(2024, 5, 1, 13, 30),
        bias_v=-1.2,
        setpoint_a=5e-11,
        constant_height=False,
        temperature_k=4.5,
        comment=comment,
        channels=(),
    )


def model_dir(root: Path, version: str) -> Path:
    d = root / version
    d.mkdir(parents=True)
    (d / "config.json").write_text(
        json.dumps(
            {
                "version": version,
                "parent": None,
                "metrics": {"f1": 0.9},
                "members": {"m0": "x", "m1": "y"},
            }
        )
    )
    return d


@pytest.fixture
def engine(tmp_path):
    e = open_database(tmp_path / "record.db")
    yield e
    e.dispose()


@pytest.fixture
def watch(tmp_path) -> Path:
    root = tmp_path / "watch"
    (root / "WSe2-SL445").mkdir(parents=True)
    return root


def test_process_records_scan_run_defects_and_done_in_one_go(engine, tmp_path, watch):
    default = model_dir(tmp_path / "models", "default-sim-1")
    loads: list[Path] = []
    calls: list[tuple[str, object, str]] = []

    def detect(path, *, ensemble, channel):
        calls.append((path, ensemble, channel))
        return fake_scan(path), detection(5, 2, 3750.0, version="default-sim-1")

    process = make_process(
        engine,
        channel="Z",
        detect=detect,
        default_dir=lambda: default,
        load_ensemble=lambda d: loads.append(d) or f"ensemble:{d.name}",
    )
    queue = make_queue(engine, roots=[watch], rule="folder")
    path = watch / "WSe2-SL445" / "STM_001.sxm"
    path.write_bytes(b"scan")
    assert queue.enqueue(str(path), sha256=file_sha256(path), size_bytes=4, mtime_ns=1)
    job = queue.claim(worker="w", lease_s=60)
    line = process(job)

    assert "WSe2-SL445 STM_001.sxm: 5 trough, 2 peak" in line
    assert calls == [(str(path), "ensemble:default-sim-1", "Z")] and loads == [default]
    with read_transaction(engine) as s:
        row = s.get(ScanRow, job.id)
        assert (row.status, row.nx, row.ny, row.width_nm) == ("done", 128, 64, 100.0)
        assert row.acquired_area_nm2 == pytest.approx(3750.0)
        assert row.recorded_at == datetime(2024, 5, 1, 13, 30) and row.bias_v == -1.2
        run = latest_run(job.id, session=s)
        assert (run.model_version, run.defect_count, run.area_nm2) == ("default-sim-1", 7, 3750.0)
        # the shipped default was registered and activated on the fresh database
        versions = list_versions(session=s)
        assert [(v.name, v.active, v.members) for v in versions] == [("default-sim-1", True, 2)]
    assert queue.depth() == 0


def test_the_next_scan_uses_a_newly_activated_model(engine, tmp_path, watch):
    default = model_dir(tmp_path / "models", "default-sim-1")
    newer = model_dir(tmp_path / "models", "retrained-2")
    loaded: list[str] = []
    process = make_process(
        engine,
        default_dir=lambda: default,
        load_ensemble=lambda d: loaded.append(d.name) or d,
        detect=lambda p, *, ensemble, channel: (
            fake_scan(p),
            detection(1, 0, 10.0, version=ensemble.name),
        ),
    )
    queue = make_queue(engine, roots=[watch], rule="folder")
    for i in range(3):
        queue.enqueue(str(watch / f"S/{i}.sxm"), sha256=str(i) * 64, size_bytes=1, mtime_ns=1)
    process(queue.claim(worker="w", lease_s=60))
    process(queue.claim(worker="w", lease_s=60))
    with write_transaction(engine) as s:
        register_version("retrained-2", session=s, directory=str(newer), parent="default-sim-1")
        activate_version("retrained-2", session=s)
    assert "(retrained-2)" in process(queue.claim(worker="w", lease_s=60))
    assert loaded == ["default-sim-1", "retrained-2"]  # loaded once each, swapped once
    assert active_model(engine) == ("retrained-2", newer)


def test_errors_propagate_and_record_nothing(engine, tmp_path, watch):
    default = model_dir(tmp_path / "models", "m")

    def detect(path, *, ensemble, channel):
        raise ScanIncompleteError(f"{path}: data is 1 MB, header promises 4 MB")

    process = make_process(
        engine, default_dir=lambda: default, load_ensemble=lambda d: d, detect=detect
    )
    queue = make_queue(engine, roots=[watch], rule="folder")
    queue.enqueue(str(watch / "S" / "a.sxm"), sha256="a" * 64, size_bytes=1, mtime_ns=1)
    job = queue.claim(worker="w", lease_s=60)
    with pytest.raises(ScanIncompleteError):
        process(job)
    with read_transaction(engine) as s:
        assert s.get(ScanRow, job.id).status == "processing"  # the worker decides: retry
        assert latest_run(job.id, session=s) is None


def test_a_lost_lease_records_nothing(engine, tmp_path, watch):
    default = model_dir(tmp_path / "models", "m")
    queue = make_queue(engine, roots=[watch], rule="folder")
    queue.enqueue(str(watch / "S" / "a.sxm"), sha256="a" * 64, size_bytes=1, mtime_ns=1)
    job = queue.claim(worker="w", lease_s=60)
    queue.fail(job, reason="given up elsewhere")
    process = make_process(
        engine,
        default_dir=lambda: default,
        load_ensemble=lambda d: d,
        detect=lambda p, **_: (fake_scan(p), detection(1, 1, 1.0)),
    )
    assert "lease lost" in process(job)
    with read_transaction(engine) as s:
        assert latest_run(job.id, session=s) is None


def test_record_file_for_the_process_command(engine, watch):
    path = watch / "WSe2-SL445" / "STM_002.sxm"
    path.write_bytes(b"content")
    first = record_file(
        path, fake_scan(str(path)), detection(3, 0, 100.0), engine=engine, watch_root=watch
    )
    again = record_file(
        path,
        fake_scan(str(path)),
        detection(2, 0, 100.0, version="v2"),
        engine=engine,
        watch_root=watch,
    )
    assert again != first  # a second run of the same content, not a second scan
    with read_transaction(engine) as s:
        totals = sample_totals(session=s)
        assert [(t.sample, t.scans, t.total) for t in totals] == [("WSe2-SL445", 1, 2)]
    other = watch / "elsewhere.sxm"
    other.write_bytes(b"x")
    record_file(
        other,
        fake_scan(str(other), comment="sample=MoSe2-M12"),
        detection(1, 0, 100.0),
        engine=engine,
        rule="comment",
        watch_root=watch,
    )
    with read_transaction(engine) as s:
        assert [t.sample for t in sample_totals(session=s)] == ["MoSe2-M12", "WSe2-SL445"]


def test_heartbeat_callable(engine):
    beat = Heartbeat(engine, pid=77, host="stm-pc")
    beat()
    beat()
    with read_transaction(engine) as s:
        assert [d.pid for d in hb.alive(session=s, within_s=60)] == [77]
    beat.stop()
    with read_transaction(engine) as s:
        assert hb.alive(session=s, within_s=60) == []


def test_an_upgrade_that_ships_a_new_default_activates_it(engine, tmp_path):
    """A record whose active version is an older shipped default that the upgrade removed
    moves to the new shipped default; a version that still exists is never replaced."""
    old = model_dir(tmp_path / "models", "default-sim-1")
    assert active_model(engine, default_dir=lambda: old) == ("default-sim-1", old)
    new = model_dir(tmp_path / "models", "default-sim-2")
    assert active_model(engine, default_dir=lambda: new) == ("default-sim-1", old)  # still there
    for f in old.iterdir():
        f.unlink()
    old.rmdir()
    assert active_model(engine, default_dir=lambda: new) == ("default-sim-2", new)
    with read_transaction(engine) as s:
        assert [(v.name, bool(v.active)) for v in list_versions(session=s)] == [
            ("default-sim-1", False),
            ("default-sim-2", True),
        ]
