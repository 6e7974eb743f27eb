"""`defectwatch demo` end to end: a real daemon thread, real files written in chunks, a real
SQLite file, a tiny random model (plumbing, not science)."""

from __future__ import annotations

import csv
import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from defectwatch.errors import ConfigError
from defectwatch.service import demo
from defectwatch.service.cli import app
from defectwatch.service.demo import DemoOptions, DemoPaths, DemoSample, demo_folder, run_demo
from defectwatch.service.queries import status_report

TINY_SAMPLES = (
    DemoSample("WSe2-SL445", "wse2", 3e12, 96, 9.6),
    DemoSample("WSe2-SL447", "wse2", 1e12, 64, 6.4),
    DemoSample("MoSe2-M12", "mose2", 2e12, 64, 6.4),
)
QUICK = DemoOptions(
    scans=4,
    samples=TINY_SAMPLES,
    write_s=0.2,
    chunks=4,
    gap_s=0.0,
    stable_for_s=0.3,
    startup_timeout_s=60.0,
    timeout_s=60.0,
    poll_s=0.1,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random model version (2 members, 4 filters)."""
    import torch

    from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member, save_version
    from defectwatch.pipeline.preprocess import PreprocessParams

    torch.manual_seed(0)
    spec = UnetSpec(nb_filters=4)
    return save_version(
        tmp_path_factory.mktemp("models") / "tiny",
        ModelConfig(
            version="tiny",
            pixel_size_nm=0.1,
            architecture=spec,
            preprocess=PreprocessParams().to_dict(),
        ),
        [build_member(spec).state_dict() for _ in range(2)],
    )


def test_every_scan_recorded_once_and_each_sample_in_the_density_table(tmp_path, tiny_model):
    events = []
    with demo_folder(tmp_path / "demo run") as paths:
        result = run_demo(paths, options=QUICK, model_dir=tiny_model, on_event=events.append)

    assert result.model == "tiny" and not result.missing and not result.failed
    written = {str(p) for p in result.written}
    assert len(written) == 4
    assert sorted(s["path"] for s in result.scans) == sorted(written)
    assert {s["status"] for s in result.scans} == {"done"}
    assert {s["sample"] for s in result.scans} == {s.name for s in TINY_SAMPLES}
    assert {d.sample for d in result.density} == {s.name for s in TINY_SAMPLES}
    assert next(d for d in result.density if d.sample == "WSe2-SL445").scans == 2
    # the simulated truth, per sample, from the CSVs beside the scans over their acquired area
    names = {s.name for s in TINY_SAMPLES}
    assert set(result.truth_per_cm2) == set(result.truth_all_per_cm2) == names
    assert set(result.truth_reported_per_cm2) == names
    for name in names:
        mine = [s for s in result.scans if s["sample"] == name]
        truth = [
            row
            for s in mine
            for row in csv.DictReader(open(Path(s["path"]).with_suffix(".csv"), newline=""))
        ]
        area_nm2 = sum(s["acquired_area_nm2"] for s in mine)
        assert area_nm2 > 0
        assert result.truth_all_per_cm2[name] == pytest.approx(len(truth) / area_nm2 * 1e14)
        visible = sum(row["visible"] == "1" for row in truth)
        assert result.truth_per_cm2[name] == pytest.approx(visible / area_nm2 * 1e14)
        assert result.truth_reported_per_cm2[name] <= result.truth_per_cm2[name]
    assert sum(result.truth_all_per_cm2.values()) > 0

    with sqlite3.connect(paths.db_file) as db:  # one scan row and one run per file
        assert db.execute("select count(*), count(distinct sha256) from scan").fetchone() == (4, 4)
        runs = db.execute("select scan_id, count(*) from detection_run group by scan_id")
        assert sorted(n for _, n in runs) == [1, 1, 1, 1]

    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "stopped"
    assert kinds.count("written") == 4
    recorded = [e for e in events if e.kind == "recorded"]
    assert [e.index for e in recorded] == [1, 2, 3, 4]
    assert {str(e.path) for e in recorded} == written

    # the daemon stopped cleanly: thread gone, heartbeat says so, the log has its lines
    assert not any(t.name == "defectwatch-demo-daemon" for t in threading.enumerate())
    from defectwatch.db import open_database

    engine = open_database(paths.db_url)
    try:
        assert status_report(engine)["daemon_alive"] is False
    finally:
        engine.dispose()
    text = paths.log_file.read_text()
    assert "defectwatch watch:" in text and "stopped:" in text
    for path in result.written:  # truth beside each scan, staging gone
        assert path.with_suffix(".csv").is_file()
    assert not (paths.root / demo.STAGING_NAME).exists()


def test_cli_demo_prints_progress_density_table_and_next_commands(
    tmp_path, tiny_model, monkeypatch
):
    monkeypatch.setattr(demo, "DemoOptions", lambda scans: dataclasses.replace(QUICK, scans=scans))
    outdir = tmp_path / "kept demo"
    result = CliRunner().invoke(
        app, ["demo", "--outdir", str(outdir), "--scans", "3", "--model", str(tiny_model)]
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert "daemon watching, model tiny" in text
    assert "[3/3]" in text and "daemon stopped" in text
    for sample in TINY_SAMPLES:
        assert sample.name in text
    assert "density cm⁻²" in text  # the `defectwatch density` table
    assert f"defectwatch density --db '{outdir / 'defectwatch.db'}'" in text
    assert (outdir / "defectwatch.db").is_file() and (outdir / "watch.log").is_file()


def test_daemon_stopped_when_the_demo_is_interrupted(tmp_path, tiny_model):
    """Ctrl-C (here: an error in the caller's callback) still stops the daemon thread."""

    def interrupt(event):
        if event.kind == "written":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with demo_folder() as paths:
            run_demo(
                paths,
                options=dataclasses.replace(QUICK, scans=2),
                model_dir=tiny_model,
                on_event=interrupt,
            )
    assert not any(t.name == "defectwatch-demo-daemon" for t in threading.enumerate())
    assert not paths.root.exists()


def test_temporary_folder_removed_unless_kept():
    with demo_folder() as paths:
        (paths.watch_dir / "x").mkdir(parents=True)
    assert not paths.root.exists() and not paths.kept
    with demo_folder(keep=True) as kept:
        pass
    assert kept.root.is_dir() and kept.kept
    kept.root.rmdir()


def test_outdir_must_be_new_or_empty(tmp_path):
    (tmp_path / "old.db").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        with demo_folder(tmp_path):
            pass
    assert (tmp_path / "old.db").exists()


def test_missing_model_is_one_clear_error(tmp_path):
    paths = DemoPaths(tmp_path, kept=True)
    with pytest.raises(ConfigError, match="no config.json"):
        run_demo(paths, options=QUICK, model_dir=tmp_path / "nowhere")


def test_demo_truth_counts_what_the_model_reports_what_a_labeller_marks_and_everything(tmp_path):
    from defectwatch.pipeline.simulate import TruthDefect
    from defectwatch.service.demo import _truth
    from defectwatch.service.simulation import write_truth_csv

    truth = [
        TruthDefect(1, 1, 0.1, 0.1, "peak", "x", True, 2.5),  # reported
        TruthDefect(2, 2, 0.2, 0.2, "peak", "x", True, 1.4),  # marked, under +2.0
        TruthDefect(3, 3, 0.3, 0.3, "trough", "x", True, -1.6),  # reported
        TruthDefect(4, 4, 0.4, 0.4, "trough", "x", False, -0.2),
    ]  # too faint to mark
    write_truth_csv(tmp_path / "a.csv", truth)
    rows = [
        {
            "path": str(tmp_path / "a.sxm"),
            "acquired_area_nm2": 100.0,
            "status": "done",
            "sample": "S",
        }
    ]
    marked, every, reported = _truth(rows, {"trough": -1.5, "peak": 2.0})
    assert (marked["S"], every["S"], reported["S"]) == pytest.approx((3e12, 4e12, 2e12))
