"""`density` corrects counts by the version's calibration, or by the record's reviewed scans
(held out by sample), on a real SQLite file."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from defectwatch.db import open_database, write_transaction
from defectwatch.db.labels import replace_labels
from defectwatch.db.models import ScanRow
from defectwatch.db.registry import register_version
from defectwatch.pipeline.calibration import (
    Calibration,
    KindCalibration,
    corrected_interval,
)
from defectwatch.pipeline.density import poisson_ci95
from defectwatch.service.cli import app
from defectwatch.service.queries import density_report
from tests.db.factories import detection, record
from tests.service.test_record_cli import JSON_KEYS

runner = CliRunner()
KEYS = JSON_KEYS  # density --json keeps its keys
# the version's own calibration: troughs precision 0.9, recall 0.6; peaks precision 0.8,
# recall 0.4 (as written into config.json by `service.calibration`)
SIMULATED = Calibration(
    {
        "trough": KindCalibration("trough", 540, 600, 900, 40, 0.05, 0.02),
        "peak": KindCalibration("peak", 80, 100, 200, 40, 0.1, 0.05),
    },
    "simulated",
    "simulated validation, v2, 40 scans",
    {"scans": 40},
)


@dataclass(frozen=True)
class Point:
    row: float
    col: float
    kind: str
    radius_nm: float | None = None


def _version(tmp_path, name: str, calibration: Calibration | None) -> str:
    directory = tmp_path / name
    directory.mkdir()
    config = {"format": 1, "version": name}
    if calibration is not None:
        config["calibration"] = calibration.to_json()
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


@pytest.fixture
def db(tmp_path) -> str:
    """Sample S: one scan by v2 (10 troughs, 4 peaks on 1e4 nm^2); sample R: three scans by v2
    reviewed by a person; sample A: one scan by the uncalibrated v1; sample C: one scan whose
    detections were only accepted (not a review)."""
    url = f"sqlite:///{tmp_path / 'record.db'}"
    engine = open_database(url)
    with write_transaction(engine) as s:
        register_version("v1", session=s, directory=_version(tmp_path, "v1", None), members=1)
        register_version(
            "v2", session=s, directory=_version(tmp_path, "v2", SIMULATED), members=1, activate=True
        )
    record(engine, "/w/S/s1.sxm", sample="S", runs=[detection(10, 4, 10_000.0, version="v2")])
    record(engine, "/w/A/a1.sxm", sample="A", runs=[detection(6, 2, 10_000.0, version="v1")])
    reviewed = [
        record(engine, f"/w/R/r{i}.sxm", sample="R", runs=[detection(4, 2, 2500.0, version="v2")])
        for i in range(3)
    ]
    accepted = record(
        engine, "/w/C/c1.sxm", sample="C", runs=[detection(4, 2, 2500.0, version="v2")]
    )
    with write_transaction(engine) as s:
        s.execute(update(ScanRow).values(pixel_size_x_nm=0.1, pixel_size_y_nm=0.1))
        for scan_id in reviewed:
            # detections sit at (i, i) px, 0.1 nm/px: troughs 0-3, peaks 4-5. The person
            # confirms 3 troughs and both peaks, rejects one trough, adds 2 missed troughs
            labels = [Point(i, i, "trough") for i in range(3)]
            labels += [Point(4, 4, "peak"), Point(5, 5, "peak")]
            labels += [Point(200, 200, "trough"), Point(300, 300, "trough")]
            replace_labels(scan_id, labels, session=s, source="reviewed", exhaustive=True)
        replace_labels(
            accepted,
            [Point(i, i, "trough") for i in range(4)],
            session=s,
            source="accepted",
            exhaustive=True,
        )
    engine.dispose()
    return url


def test_density_json_reports_the_corrected_density_beside_the_detected_one(db):
    result = runner.invoke(app, ["density", "A", "R", "S", "--json", "--db", db])
    assert result.exit_code == 0, result.output
    report = {r["sample"]: r for r in json.loads(result.stdout)}
    assert all(set(r) == KEYS for r in report.values())
    # A: v1 has no calibration -> the raw count with its exact Poisson interval
    a = report["A"]
    assert a["calibration"] == "uncalibrated"
    assert a["density_per_cm2"] == a["raw_density_per_cm2"]
    assert a["density_per_cm2"]["trough"] == pytest.approx(6e10)
    lo, hi = poisson_ci95(6)
    assert a["ci95_per_cm2"]["trough"] == pytest.approx([lo * 1e10, hi * 1e10])
    # S: corrected by the 3 reviewed scans of R (troughs: 9 matched of 12 detected, 15 true ->
    # x 0.75 / 0.6 = 1.25; peaks: 6 of 6, 6 true -> x 1)
    s = report["S"]
    assert s["calibration"] == "calibrated on 3 reviewed scans (v2)"
    assert s["counts"] == {"trough": 10, "peak": 4, "total": 14}
    assert s["raw_density_per_cm2"]["trough"] == pytest.approx(1e11)
    assert s["density_per_cm2"]["trough"] == pytest.approx(1.25e11)
    assert s["density_per_cm2"]["peak"] == pytest.approx(4e10)
    assert s["density_per_cm2"]["total"] == pytest.approx(1.65e11)
    for k in ("trough", "peak", "total"):
        lo, hi = s["ci95_per_cm2"][k]
        assert lo < s["density_per_cm2"][k] < hi
    # R: its own labels never correct its count -> v2's simulated calibration
    r = report["R"]
    assert r["calibration"] == "simulated validation, v2, 40 scans"
    assert r["density_per_cm2"]["trough"] == pytest.approx(
        r["raw_density_per_cm2"]["trough"] * 0.9 / 0.6
    )
    assert r["density_per_cm2"]["peak"] == pytest.approx(
        r["raw_density_per_cm2"]["peak"] * 0.8 / 0.4
    )
    expected = corrected_interval([({"trough": 12, "peak": 6}, SIMULATED.kinds)])
    assert r["ci95_per_cm2"]["peak"] == pytest.approx(
        [expected["peak"].low * 1e14 / 7500, expected["peak"].high * 1e14 / 7500]
    )


def test_too_few_reviewed_scans_fall_back_to_the_versions_calibration(tmp_path, db):
    engine = open_database(db)
    with write_transaction(engine) as s:  # one reviewed scan goes: 2 left, fewer than 3
        scan = s.query(ScanRow).filter(ScanRow.path == "/w/R/r0.sxm").one()
        s.delete(scan)
    (s_density,) = density_report(engine, ["S"])
    assert s_density.calibration == "simulated validation, v2, 40 scans"
    assert s_density.density_per_cm2["trough"] == pytest.approx(1e11 * 1.5)


def test_density_table_says_the_density_is_corrected_and_by_what(db):
    result = runner.invoke(app, ["density", "S", "A", "--db", db])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "corrected" in text and "detected" in text
    assert "S: corrected, calibrated on 3 reviewed scans (v2)" in text
    assert "A: uncalibrated" in text
    csv_out = runner.invoke(app, ["density", "S", "--csv", "--db", db]).stdout.splitlines()
    assert csv_out[0].endswith("raw_density_per_cm2,calibration")
    assert csv_out[1].startswith("S,trough,1,10,") and "reviewed scans" in csv_out[1]


def test_current_maps_are_corrected_by_their_own_calibration(tmp_path):
    """A version calibrated apart on C-AFM current maps: a sample's topography scan is
    corrected by the topography calibration, its current map by the current one, and
    `calibration` names both; the JSON round trip keeps ``by_channel``."""
    current = Calibration(
        {
            "trough": KindCalibration("trough", 80, 100, 80, 16, 0.0, 0.0),  # P 0.8, R 1.0
            "peak": KindCalibration("peak", 50, 50, 100, 16, 0.0, 0.0),  # P 1.0, R 0.5
        },
        "simulated",
        "simulated validation, v3, 16 Current maps",
    )
    cal = Calibration(dict(SIMULATED.kinds), "simulated", "simulated validation, v3, 40 scans")
    cal.by_channel["Current"] = current
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal
    assert cal.for_channel("Current") is current and cal.for_channel("Z") is cal
    url = f"sqlite:///{tmp_path / 'record.db'}"
    engine = open_database(url)
    with write_transaction(engine) as s:
        register_version(
            "v3", session=s, directory=_version(tmp_path, "v3", cal), members=1, activate=True
        )
    topo = record(engine, "/w/M/z.sxm", sample="M", runs=[detection(6, 4, 10_000.0, version="v3")])
    cafm = record(engine, "/w/M/i.sxm", sample="M", runs=[detection(8, 5, 10_000.0, version="v3")])
    with write_transaction(engine) as s:
        s.execute(update(ScanRow).where(ScanRow.id == topo).values(channel="Z"))
        s.execute(update(ScanRow).where(ScanRow.id == cafm).values(channel="Current"))
    (m,) = density_report(engine, ["M"])
    # topography: 6 x 0.9 / 0.6 = 9 troughs, 4 x 0.8 / 0.4 = 8 peaks; current: 8 x 0.8 = 6.4
    # troughs, 5 / 0.5 = 10 peaks; over 2e4 nm^2
    assert m.counts == {"trough": 14, "peak": 9, "total": 23}
    assert m.density_per_cm2["trough"] == pytest.approx((9 + 6.4) / 2e4 * 1e14)
    assert m.density_per_cm2["peak"] == pytest.approx((8 + 10) / 2e4 * 1e14)
    assert (
        m.calibration
        == "simulated validation, v3, 16 Current maps; simulated validation, v3, 40 scans"
    )
