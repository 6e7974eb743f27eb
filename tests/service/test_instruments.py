"""Several microscopes on one database: each scan records its instrument; `status` lists every
daemon's heartbeat per instrument; `scans`, `samples` and `density` take `--instrument`. Once
on SQLite, once on a real PostgreSQL server."""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from defectwatch.db import heartbeat as hb
from defectwatch.db import open_database, write_transaction
from defectwatch.db.models import utcnow
from defectwatch.db.queue import SqlJobQueue, mark_done
from defectwatch.db.records import add_detection_run
from defectwatch.errors import NotFoundError
from defectwatch.pipeline.scan import read_scan
from defectwatch.service import queries
from defectwatch.service.cli import app
from defectwatch.service.config import check_instrument, default_instrument, get_settings
from defectwatch.service.ingest import record_detection
from tests.daemon.queue_double import write_scan
from tests.db.factories import detection, sha

runner = CliRunner()


def fill(url: str) -> None:
    """STM-1 (a daemon's queue): two scans of sample A; STM-2 (`process`): one of A, one of
    B; a daemon per instrument beating, STM-2's older run stopped."""
    engine = open_database(url)
    queue = SqlJobQueue(engine, sample_for=lambda p: p.split("/")[2], instrument="STM-1")
    for k, (troughs, peaks) in enumerate([(4, 0), (2, 2)]):
        assert queue.enqueue(f"/w/A/one_{k}.sxm", sha256=sha(f"one{k}"), size_bytes=1, mtime_ns=1)
        job = queue.claim(worker="stm1:1", lease_s=60)
        with write_transaction(engine) as s:
            assert mark_done(job, session=s)
            add_detection_run(job.id, detection(troughs, peaks, 2500.0), session=s)
    with tempfile.TemporaryDirectory() as folder:  # a small real Scan for the metadata
        scan = read_scan(write_scan(Path(folder) / "s.sxm", 1))
    for name, sample, det in [
        ("two_0", "A", detection(10, 0, 5000.0)),
        ("two_1", "B", detection(1, 0, 10_000.0)),
    ]:
        with write_transaction(engine) as s:
            record_detection(
                scan,
                det,
                session=s,
                sha256=sha(name),
                sample=sample,
                path=f"/w/{sample}/{name}.sxm",
                size_bytes=1,
                mtime_ns=1,
                instrument="STM-2",
            )
    now = utcnow()
    with write_transaction(engine) as s:
        hb.beat(session=s, pid=11, host="pc-1", started_at=now, instrument="STM-1")
        old = now - timedelta(hours=2)
        hb.beat(session=s, pid=20, host="pc-2", started_at=old, now=old, instrument="STM-2")
        hb.stopped(session=s, pid=20, host="pc-2", started_at=old, now=old)
        hb.beat(session=s, pid=21, host="pc-2", started_at=now, instrument="STM-2")
    engine.dispose()


def cli(*args: str) -> object:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_scans_samples_density_per_instrument_and_status_per_instrument(any_db_url):
    fill(any_db_url)
    db = ("--db", any_db_url)
    every = cli("scans", "--json", *db)
    assert sorted((s["file"], s["instrument"]) for s in every) == [
        ("one_0.sxm", "STM-1"),
        ("one_1.sxm", "STM-1"),
        ("two_0.sxm", "STM-2"),
        ("two_1.sxm", "STM-2"),
    ]
    assert {s["file"] for s in cli("scans", "--json", "--instrument", "STM-1", *db)} == {
        "one_0.sxm",
        "one_1.sxm",
    }

    density = {d["sample"]: d for d in cli("density", "--json", "--instrument", "STM-1", *db)}
    assert set(density) == {"A"}  # STM-1 never scanned B
    assert (density["A"]["scans"], density["A"]["counts"]["total"], density["A"]["area_nm2"]) == (
        2,
        8,
        5000.0,
    )
    both = {d["sample"]: d for d in cli("density", "--json", *db)}
    assert (both["A"]["scans"], both["A"]["counts"]["total"]) == (3, 18)

    samples = {s["sample"]: s for s in cli("samples", "--json", "--instrument", "STM-2", *db)}
    assert {k: (v["scans"], v["done"]) for k, v in samples.items()} == {"A": (1, 1), "B": (1, 1)}

    status = cli("status", "--json", *db)
    per = {i["instrument"]: i for i in status["instruments"]}
    assert set(per) == {"STM-1", "STM-2"} and per["STM-1"]["alive"] and per["STM-2"]["alive"]
    assert [(d["pid"], d["alive"]) for d in per["STM-2"]["daemons"]] == [(21, True)]
    assert {d["instrument"] for d in status["daemons"]} == {"STM-1", "STM-2"}
    text = runner.invoke(app, ["status", *db])
    assert text.exit_code == 0 and "STM-1" in text.stdout and "pid 21 on pc-2" in text.stdout

    unknown = runner.invoke(app, ["density", "--instrument", "STM-9", *db])
    assert (
        unknown.exit_code == 1
        and "no scan recorded for instrument 'STM-9'" in unknown.output
        and "STM-1, STM-2" in unknown.output
    )


def test_unknown_instrument_and_the_default_name(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    fill(url)
    engine = open_database(url)
    with pytest.raises(NotFoundError, match="STM-3"):
        queries.scans_report(engine, instrument="STM-3")
    engine.dispose()
    monkeypatch.setenv("DEFECTWATCH_INSTRUMENT", "  LT-STM  ")
    get_settings.cache_clear()
    try:
        assert default_instrument() == "LT-STM"
        monkeypatch.delenv("DEFECTWATCH_INSTRUMENT")
        get_settings.cache_clear()
        import socket

        assert default_instrument() == socket.gethostname()
    finally:
        get_settings.cache_clear()
    with pytest.raises(Exception, match="1 to 200 characters"):
        check_instrument("   ")
