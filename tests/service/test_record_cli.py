"""The query commands on a database filled with the db functions (no model needed)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from defectwatch.db import heartbeat as hb
from defectwatch.db import open_database, write_transaction
from defectwatch.db.models import ScanRow, utcnow
from defectwatch.db.registry import register_version
from defectwatch.pipeline.density import poisson_ci95
from defectwatch.service.cli import app
from tests.db.factories import detection, record

runner = CliRunner()
JSON_KEYS = {
    "sample",
    "scans",
    "area_nm2",
    "counts",
    "density_per_cm2",
    "ci95_per_cm2",
    "raw_density_per_cm2",
    "calibration",
}


@pytest.fixture
def filled(tmp_path) -> str:
    """Two samples: A (two done scans, one re-run, one failed), B (one done scan)."""
    url = f"sqlite:///{tmp_path / 'record.db'}"
    engine = open_database(url)
    record(
        engine,
        "/w/A/STM_001.sxm",
        sample="A",
        runs=[detection(90, 90, 2500.0, version="old"), detection(4, 2, 2500.0)],
    )
    record(engine, "/w/A/STM_002.sxm", sample="A", runs=[detection(6, 0, 7500.0)])
    record(engine, "/w/A/broken.sxm", sample="A", runs=[], status="failed")
    record(engine, "/w/B/STM_001.sxm", sample="B", runs=[detection(0, 3, 10_000.0)])
    with write_transaction(engine) as s:
        register_version("v1", session=s, directory="/models/v1", members=10, activate=True)
        s.execute(
            update(ScanRow)
            .where(ScanRow.path == "/w/A/broken.sxm")
            .values(last_error="broken.sxm: not a Nanonis file")
        )
        hb.beat(session=s, pid=1234, host="stm-pc", started_at=utcnow())
    engine.dispose()
    return url


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result


def test_density_json_is_area_weighted_over_latest_runs_with_poisson_ci(filled):
    result = invoke("density", "--json", "--db", filled)
    assert result.exit_code == 0, result.output
    report = {r["sample"]: r for r in json.loads(result.stdout)}
    assert set(report) == {"A", "B"}
    a = report["A"]
    assert set(a) == JSON_KEYS
    assert a["scans"] == 2 and a["area_nm2"] == 10_000.0
    assert a["counts"] == {"trough": 10, "peak": 2, "total": 12}
    # 12 defects on 1e4 nm^2 = 1e-10 cm^2 -> 1.2e11 cm^-2 (area-weighted, not mean of ratios)
    assert a["density_per_cm2"]["total"] == pytest.approx(1.2e11)
    lo, hi = poisson_ci95(12)
    assert a["ci95_per_cm2"]["total"] == pytest.approx([lo * 1e10, hi * 1e10])
    assert set(a["ci95_per_cm2"]) == {"trough", "peak", "total"}
    assert report["B"]["counts"] == {"trough": 0, "peak": 3, "total": 3}
    assert report["B"]["ci95_per_cm2"]["trough"][0] == 0.0


def test_density_of_named_samples_csv_and_table(filled):
    result = invoke("density", "B", "--csv", "--db", filled)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["sample"], r["kind"], r["defects"]) for r in rows] == [
        ("B", "trough", "0"),
        ("B", "peak", "3"),
        ("B", "total", "3"),
    ]
    assert float(rows[2]["density_per_cm2"]) == pytest.approx(3e10)
    table = invoke("density", "--db", filled)
    assert table.exit_code == 0 and "trough" in table.stdout and "1.2e+11" in table.stdout


def test_density_of_an_unknown_sample_is_one_line_and_exit_1(filled):
    result = invoke("density", "nope", "--db", filled)
    assert result.exit_code == 1
    assert "no sample called 'nope'" in result.output and "Traceback" not in result.output


def test_missing_database_file_is_an_error_not_a_new_database(tmp_path):
    path = tmp_path / "absent.db"
    result = invoke("status", "--db", str(path))
    assert result.exit_code == 1 and "no database at" in result.output
    assert not path.exists()


def test_db_from_the_environment(filled, monkeypatch):
    from defectwatch.service.config import get_settings

    monkeypatch.setenv("DEFECTWATCH_DB", filled)
    get_settings.cache_clear()
    try:
        result = invoke("density", "--json")
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 2


def test_samples_table_json_and_rename_merge(filled):
    result = invoke("samples", "--db", filled)
    assert result.exit_code == 0, result.output
    assert "A" in result.stdout and "STM_002.sxm" not in result.stdout  # newest A is broken
    rows = json.loads(invoke("samples", "--json", "--db", filled).stdout)
    a = next(r for r in rows if r["sample"] == "A")
    assert (a["scans"], a["done"], a["failed"], a["area_nm2"]) == (3, 2, 1, 10_000.0)
    assert a["latest_path"] == "/w/A/broken.sxm"

    merged = invoke("samples", "rename", "B", "A", "--db", filled)
    assert merged.exit_code == 0 and "merged B into A" in merged.stdout
    renamed = invoke("samples", "--db", filled, "rename", "A", "WSe2-SL445")
    assert renamed.exit_code == 0 and "renamed A -> WSe2-SL445" in renamed.stdout
    report = json.loads(invoke("density", "--json", "--db", filled).stdout)
    assert [(r["sample"], r["scans"], r["counts"]["total"]) for r in report] == [
        ("WSe2-SL445", 3, 15)
    ]
    missing = invoke("samples", "rename", "B", "C", "--db", filled)
    assert missing.exit_code == 1 and "no sample called 'B'" in missing.output


def test_scans_filtered_by_status_and_sample(filled):
    failed = json.loads(invoke("scans", "--status", "failed", "--json", "--db", filled).stdout)
    assert [(s["file"], s["sample"], s["last_error"]) for s in failed] == [
        ("broken.sxm", "A", "broken.sxm: not a Nanonis file")
    ]
    b = json.loads(invoke("scans", "--sample", "B", "--json", "--db", filled).stdout)
    assert [(s["path"], s["counts"]) for s in b] == [
        ("/w/B/STM_001.sxm", {"trough": 0, "peak": 3, "total": 3})
    ]
    table = invoke("scans", "--db", filled)
    assert table.exit_code == 0 and "not a Nanonis file" in table.stdout
    bad = invoke("scans", "--status", "weird", "--db", filled)
    assert bad.exit_code == 1 and "choose queued" in bad.output


def test_defects_by_id_path_or_unique_file_name(filled):
    result = invoke("defects", "STM_002.sxm", "--csv", "--db", filled)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 6 and set(rows[0]) == {
        "row",
        "col",
        "x_nm",
        "y_nm",
        "kind",
        "confidence",
        "uncertainty",
        "area_nm2",
        "contrast",
    }
    latest = json.loads(invoke("defects", "1", "--json", "--db", filled).stdout)
    assert len(latest) == 6  # scan 1's latest run, not the old 180-defect one
    table = invoke("defects", "/w/B/STM_001.sxm", "--db", filled)
    assert table.exit_code == 0 and "3 defects" in table.stdout
    ambiguous = invoke("defects", "STM_001.sxm", "--db", filled)
    assert ambiguous.exit_code == 1 and "matches 2 scans" in ambiguous.output
    unknown = invoke("defects", "nope.sxm", "--db", filled)
    assert unknown.exit_code == 1 and "no scan 'nope.sxm'" in unknown.output


def test_status_shows_daemon_queue_failures_and_model(filled):
    s = json.loads(invoke("status", "--json", "--db", filled).stdout)
    assert s["daemon_alive"] is True and s["daemons"][0]["pid"] == 1234
    assert s["queue_depth"] == 0 and s["failures"] == 1
    assert s["active_model"]["name"] == "v1"
    assert s["last_processed"]["path"] == "/w/B/STM_001.sxm"
    human = invoke("status", "--db", filled)
    assert human.exit_code == 0
    assert "alive" in human.stdout and "v1" in human.stdout and "broken.sxm" in human.stdout


def test_every_record_command_has_help():
    for command in (
        ["samples"],
        ["samples", "rename"],
        ["density"],
        ["scans"],
        ["defects"],
        ["status"],
    ):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "--db" in result.stdout, command


def test_unusable_databases_are_one_line_errors(tmp_path):
    garbage = tmp_path / "not a db.db"
    garbage.write_text("this is not SQLite")
    for url, message in [
        (str(garbage), "file is not a database"),
        ("nosuchdialect://x", "database nosuchdialect://x:"),
        ("postgresql+nodriver://u:secret@/db", "u:***@"),
    ]:
        result = invoke("density", "--db", url)
        assert result.exit_code == 1, url
        assert message in result.output and "Traceback" not in result.output, result.output
        assert "secret" not in result.output
