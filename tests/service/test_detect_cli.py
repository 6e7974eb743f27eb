"""`process` and `evaluate` as a user runs them: real .sxm files, a real model directory, a real
SQLite file, the pictures written and opened."""

from __future__ import annotations

import csv
import json

import cv2
import pytest
from typer.testing import CliRunner

from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member, save_version
from defectwatch.pipeline.preprocess import PreprocessParams
from defectwatch.service.cli import app
from defectwatch.service.simulation import write_simulated_scans

runner = CliRunner()
PROCESS_KEYS = {
    "path",
    "status",
    "error",
    "nx",
    "ny",
    "width_nm",
    "height_nm",
    "pixel_size_nm",
    "acquired_fraction",
    "model",
    "defects",
    "density_per_cm2",
    "density_ci95_per_cm2",
}
DEFECT_KEYS = {
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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    spec = UnetSpec(nb_filters=4)
    cfg = ModelConfig(
        version="tiny-cli",
        pixel_size_nm=0.1,
        architecture=spec,
        preprocess=PreprocessParams().to_dict(),
        metrics={"threshold": 0.34},
    )
    return save_version(
        tmp_path_factory.mktemp("m") / "tiny",
        cfg,
        [build_member(spec).state_dict() for _ in range(2)],
    )


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("SL445")
    write_simulated_scans(folder, n=2, size_nm=8.0, pixels=64, seed=3, density_per_cm2=5e12)
    return folder


def test_process_json_records_overlays_and_reports_bad_files(tiny_model, scans, tmp_path):
    bad = tmp_path / "broken.sxm"
    bad.write_bytes(b":NANONIS_VERSION:\n2\n:SCANIT_TYPE:\n")  # a header cut short
    db = tmp_path / "record.sqlite"
    files = sorted(scans.glob("*.sxm"))
    result = runner.invoke(
        app,
        [
            "process",
            *map(str, files),
            str(bad),
            "--json",
            "--model",
            str(tiny_model),
            "--db",
            str(db),
            "--overlay",
            str(tmp_path / "pictures"),
        ],
    )
    assert result.exit_code == 1  # one file failed, the others still ran
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert [x["status"] for x in lines] == ["ok", "ok", "failed"]
    for obj in lines:
        assert set(obj) >= PROCESS_KEYS
    ok = lines[0]
    assert ok["model"] == "tiny-cli" and ok["nx"] == 64 and ok["acquired_fraction"] == 1.0
    assert set(ok["density_per_cm2"]) == {"trough", "peak", "total"}
    found = [d for x in lines[:2] for d in x["defects"]]
    assert found, "the tiny model (seed 0) finds a defect in each scan: nothing to check"
    for d in found:
        assert set(d) == DEFECT_KEYS and d["kind"] in ("trough", "peak")
        assert 0 <= d["row"] < 64 and 0 <= d["col"] < 64 and 0 <= d["confidence"] <= 1
        # nm from the frame's corner: 8 nm over 64 px, pixel centres
        assert d["x_nm"] == pytest.approx((d["col"] + 0.5) * 8.0 / 64, abs=1e-3)
        assert d["y_nm"] == pytest.approx((d["row"] + 0.5) * 8.0 / 64, abs=1e-3)
    for x in lines[:2]:  # the densities count what is listed, over the 64 nm^2 frame
        n = {k: sum(d["kind"] == k for d in x["defects"]) for k in ("trough", "peak")}
        assert x["density_per_cm2"]["total"] == pytest.approx(
            (n["trough"] + n["peak"]) / 64.0 * 1e14
        )
        assert x["density_per_cm2"]["peak"] == pytest.approx(n["peak"] / 64.0 * 1e14)
    assert "broken.sxm" in lines[2]["error"]
    # the pictures exist and show two panels side by side
    for f in files:
        picture = cv2.imread(str(tmp_path / "pictures" / f"{f.stem}.png"))
        assert picture is not None and picture.shape[1] > 2 * picture.shape[0] * 0.9
    # and the two good scans are in the database, under the folder's sample
    density = runner.invoke(app, ["density", "--db", str(db), "--json"])
    assert density.exit_code == 0, density.output
    (row,) = json.loads(density.stdout)
    assert row["sample"] == scans.name and row["scans"] == 2
    assert row["counts"]["total"] == sum(len(x["defects"]) for x in lines[:2])


def test_process_without_database_and_a_missing_model(tiny_model, scans, tmp_path):
    files = sorted(scans.glob("*.sxm"))
    result = runner.invoke(app, ["process", str(files[0]), "--no-db", "--model", str(tiny_model)])
    assert result.exit_code == 0, result.output
    assert files[0].name in result.stdout
    missing = runner.invoke(
        app, ["process", str(files[0]), "--no-db", "--model", str(tmp_path / "nowhere")]
    )
    assert missing.exit_code == 1 and "no such model version directory" in missing.output


def test_evaluate_writes_summary_and_figures(tiny_model, scans, tmp_path):
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(scans),
            "--simulate",
            "1",
            "--size-nm",
            "8",
            "--pixels",
            "64",
            "--model",
            str(tiny_model),
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trough" in result.stdout and "pixel level" in result.stdout
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["objects"]["n_scans"] == 3 and summary["settings"]["threshold"] == 0.34
    assert set(summary["objects"]["kinds"]) >= {"trough", "peak"}
    for name in ("pixel_level.png", "object_thresholds.png"):
        assert cv2.imread(str(tmp_path / "ev" / name)) is not None
    nothing = runner.invoke(app, ["evaluate", "--model", str(tiny_model)])
    assert nothing.exit_code == 1 and "nothing to evaluate" in nothing.output


def test_evaluate_scores_against_the_reported_or_every_marked_defect(tiny_model, scans):
    def summary(*extra):
        result = runner.invoke(
            app, ["evaluate", str(scans), "--model", str(tiny_model), "--json", *extra]
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    reported, marked = summary(), summary("--truth", "marked")
    assert reported["settings"]["truth"] == "reported" and marked["settings"]["truth"] == "marked"
    assert reported["settings"]["report_contrast"] == {"trough": -1.25, "peak": 1.0}
    # the truth asked for: every visible defect, or those at the version's limits (CSV contrast)
    rows = [
        r
        for p in scans.glob("*.csv")
        for r in csv.DictReader(open(p, newline=""))
        if r["visible"] == "1"
    ]
    limit = {"trough": lambda c: c <= -1.25, "peak": lambda c: c >= 1.0}
    for kind in ("trough", "peak"):
        asked = {
            name: s["objects"]["kinds"][kind]["tp"] + s["objects"]["kinds"][kind]["fn"]
            for name, s in (("reported", reported), ("marked", marked))
        }
        assert asked["marked"] == sum(r["kind"] == kind for r in rows)
        assert asked["reported"] == sum(
            r["kind"] == kind and limit[kind](float(r["contrast"])) for r in rows
        )
    bad = runner.invoke(app, ["evaluate", str(scans), "--model", str(tiny_model), "--truth", "all"])
    assert bad.exit_code == 1 and "--truth must be" in bad.output


def test_evaluate_per_scan_shows_each_scans_counts(tiny_model, scans):
    result = runner.invoke(
        app,
        ["evaluate", str(scans), "--model", str(tiny_model), "--per-scan"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(
        runner.invoke(app, ["evaluate", str(scans), "--model", str(tiny_model), "--json"]).stdout
    )
    for scan in summary["objects"]["scans"]:
        t = scan["scores"]["trough"]
        assert scan["name"] in result.stdout
        assert f"{t['tp']}/{t['fp']}/{t['fn']}" in result.stdout
