"""`defectwatch retrain` end to end on tiny models: labelled simulated scans in a real SQLite
record -> candidate -> gate -> activation (or not) -> the daemon's next scan -> rollback; the
frozen split, the lock, too few labels; the gate and the partial-label masks on their own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from defectwatch.db import open_database, read_transaction, write_transaction
from defectwatch.db.models import Label, ModelVersion, SplitAssignment
from defectwatch.db.records import add_scan
from defectwatch.db.registry import register_version, rollback_version
from defectwatch.db.splits import split_assignments
from defectwatch.pipeline.labels import DEFAULT_RADIUS_NM, IGNORE
from defectwatch.pipeline.scan import read_scan
from defectwatch.service.cli import app
from defectwatch.service.ingest import active_model, file_sha256, make_process, make_queue
from defectwatch.service.retraining import (
    LabelledScan,
    RetrainLockedError,
    example_from_labels,
    gate,
    label_radius_nm,
    retrain_lock,
)
from defectwatch.service.simulation import read_truth_csv, write_simulated_scans
from tests.db.factories import detection

runner = CliRunner()
TINY = [
    "--recipe",
    "scratch",
    "--filters",
    "4",
    "--members",
    "2",
    "--iterations",
    "5",
    "--crop",
    "64",
]


@pytest.fixture(scope="module")
def sim_scans(tmp_path_factory) -> list[Path]:
    """Eight small simulated WSe2 scans (12 nm, 96 px) with their truth CSVs."""
    folder = tmp_path_factory.mktemp("scans")
    written = write_simulated_scans(
        folder, n=8, size_nm=12.0, pixels=96, density_per_cm2=3e12, seed=40
    )
    return [w.sxm for w in written]


BLIND_RULE = {"report_contrast": {"trough": -1.7, "peak": 1.5}}  # a lab's own, inherited


@pytest.fixture(scope="module")
def blind_model(tmp_path_factory) -> Path:
    """A tiny version (4 filters, 2 members) that sees nothing: its F1 is 0 for every class,
    so any candidate holds or beats it and ``--promote auto`` must activate."""
    import torch

    from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member, save_version
    from defectwatch.pipeline.preprocess import PreprocessParams

    spec = UnetSpec(nb_filters=4)
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        state = build_member(spec).state_dict()
        state["px.weight"] = torch.zeros_like(state["px.weight"])
        state["px.bias"] = torch.tensor([20.0, -20.0, -20.0])
        members.append(state)
    out = tmp_path_factory.mktemp("shipped") / "blind-1"
    return save_version(
        out,
        ModelConfig(
            version="blind-1",
            pixel_size_nm=0.1,
            architecture=spec,
            preprocess=PreprocessParams().to_dict(),
            metrics={"threshold": 0.5},
            detection=BLIND_RULE,
        ),
        members,
    )


def record_scans(engine, paths: list[Path], *, exhaustive: bool = True) -> list[int]:
    """Scan rows for these files, each labelled with its visible truth."""
    ids = []
    with write_transaction(engine) as s:
        for path in paths:
            st = path.stat()
            row = add_scan(
                str(path),
                session=s,
                sha256=file_sha256(path),
                size_bytes=st.st_size,
                mtime_ns=st.st_mtime_ns,
                sample="S",
                status="done",
            )
            row.channel = "Z"
            for d in read_truth_csv(path.with_suffix(".csv")):
                if d.visible:
                    s.add(
                        Label(
                            scan_id=row.id,
                            row=d.row,
                            col=d.col,
                            kind=d.kind,
                            radius_nm=1.4,
                            source="truth",
                            exhaustive=exhaustive,
                        )
                    )
            ids.append(row.id)
    return ids


@pytest.fixture
def record(tmp_path, blind_model):
    """A record whose active version is the blind model; returns (db url, models dir)."""
    db = tmp_path / "record.db"
    engine = open_database(db)
    with write_transaction(engine) as s:
        register_version("blind-1", session=s, directory=str(blind_model), members=2, activate=True)
    engine.dispose()
    return str(db), tmp_path / "models"


def invoke(db: str, models: Path, *args: str):
    return runner.invoke(app, ["retrain", "--db", db, "--models-dir", str(models), *TINY, *args])


def versions(db: str) -> list[tuple[str, bool, str | None]]:
    engine = open_database(db)
    with read_transaction(engine) as s:
        rows = [(v.name, v.active, v.parent) for v in s.scalars(select(ModelVersion))]
    engine.dispose()
    return rows


# -- end to end ---------------------------------------------------------------------------------


def test_tiny_retrain_is_promoted_picked_up_by_the_daemon_and_rolled_back(
    record, sim_scans, tmp_path
):
    db, models = record
    engine = open_database(db)
    record_scans(engine, sim_scans[:6])
    loaded: list[str] = []
    process = make_process(
        engine,
        load_ensemble=lambda d: loaded.append(d.name) or d,
        detect=lambda p, *, ensemble, channel: (
            read_scan(p),
            detection(1, 0, 10.0, version=ensemble.name),
        ),
    )
    queue = make_queue(engine, roots=[tmp_path], rule="folder")
    for i in range(2):
        queue.enqueue(str(sim_scans[i]), sha256=f"{i}" * 64, size_bytes=1, mtime_ns=1)
    assert "(blind-1)" in process(queue.claim(worker="w", lease_s=60))

    result = invoke(db, models, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    name = report["version"]
    assert report["activated"] is True and report["parent"] == "blind-1"
    assert report["decision"]["mode"] == "auto" and report["decision"]["would_promote"]
    assert report["active"]["mean_f1"] == 0.0  # the blind model finds nothing
    assert report["data"]["train"]["scans"] == 4 and report["data"]["test"]["scans"] == 2
    assert "test split holds only 2 scan(s)" in result.stderr

    # the version directory: weights, config with parent, recipe, data summary, metrics
    cfg = json.loads((models / name / "config.json").read_text())
    assert cfg["parent"] == "blind-1" and len(cfg["members"]) == 2
    assert cfg["detection"] == BLIND_RULE  # the parent's report rule carries over
    assert cfg["training"]["members"] == 2 and cfg["training"]["iterations"] == 5
    assert cfg["training"]["crop_px"] == 64 and cfg["architecture"]["nb_filters"] == 4
    assert cfg["training"]["mask_radius_nm"] == DEFAULT_RADIUS_NM  # the parent records none
    assert cfg["data"]["test"]["scans"] == 2 and sum(cfg["data"]["train"]["labels"].values())
    assert set(cfg["metrics"]["kinds"]) == {"trough", "peak"}
    assert cfg["metrics"]["compared_with"]["version"] == "blind-1"
    assert cfg["metrics"]["gate"]["promote"] is True
    assert {"map", "mean_auroc", "mean_f1"} <= set(cfg["metrics"]["pixels"])
    assert not list(models.glob(".*.partial"))
    with read_transaction(engine) as s:
        v = s.scalar(select(ModelVersion).where(ModelVersion.name == name))
        assert v.active and v.members == 2 and v.parent == "blind-1"
        assert v.metrics["mean_f1"] == cfg["metrics"]["mean_f1"]

    # the daemon's next scan runs on the new version, loaded once
    assert f"({name})" in process(queue.claim(worker="w", lease_s=60))
    assert loaded == ["blind-1", name]

    # rollback restores the previous version
    with write_transaction(engine) as s:
        assert rollback_version(session=s).name == "blind-1"
    assert active_model(engine)[0] == "blind-1"
    engine.dispose()


def test_never_keeps_a_candidate_and_the_frozen_split_only_grows(record, sim_scans):
    db, models = record
    engine = open_database(db)
    first = record_scans(engine, sim_scans[:4])
    result = invoke(db, models, "--promote", "never", "--name", "cand-1")
    assert result.exit_code == 0, result.output
    assert "kept as a candidate" in result.stdout and "--promote never" in result.stdout
    assert "active blind-1 vs candidate cand-1" in result.stdout and "ΔF1" in result.stdout
    assert "warning" in result.stderr and "only 1 scan(s)" in result.stderr
    assert ("cand-1", False, "blind-1") in versions(db)
    assert active_model(engine)[0] == "blind-1"
    with read_transaction(engine) as s:
        before = split_assignments(session=s)
    assert set(before) == set(first) and list(before.values()).count("test") == 1

    later = record_scans(engine, sim_scans[4:8])
    result = invoke(db, models, "--promote", "never", "--name", "cand-2", "--json")
    assert result.exit_code == 0, result.output
    with read_transaction(engine) as s:
        after = split_assignments(session=s)
    assert {i: after[i] for i in first} == before  # nothing moved
    assert set(after) == set(first) | set(later)
    test_before = {i for i, v in before.items() if v == "test"}
    test_after = {i for i, v in after.items() if v == "test"}
    assert test_before < test_after and len(test_after) == 2
    report = json.loads(result.stdout)
    assert report["data"]["test"]["scans"] == 2 and not report["activated"]
    # the candidate's threshold is its own, chosen on its training scans (not the test split)
    config = json.loads((models / "cand-2" / "config.json").read_text())
    table = config["metrics"]["threshold_table"]
    assert "training scans" in config["metrics"]["threshold_chosen_on"]
    assert table[f"{config['metrics']['threshold']:.2f}"] == max(table.values())
    engine.dispose()


def test_fewer_than_four_labelled_scans_is_an_error_and_creates_nothing(record, sim_scans):
    db, models = record
    engine = open_database(db)
    record_scans(engine, sim_scans[:3])
    result = invoke(db, models)
    assert result.exit_code == 1
    assert "3 scan(s) are labelled" in result.stderr and "at least 4" in result.stderr
    assert "Traceback" not in result.output
    assert versions(db) == [("blind-1", True, None)]
    assert not [p for p in models.iterdir() if p.name != ".retrain.lock"]
    with read_transaction(engine) as s:
        assert s.scalar(select(func.count()).select_from(SplitAssignment)) == 0
    engine.dispose()


def test_a_second_retrain_is_refused_while_one_holds_the_lock(record, sim_scans):
    db, models = record
    engine = open_database(db)
    record_scans(engine, sim_scans[:4])
    engine.dispose()
    with retrain_lock(models):
        result = invoke(db, models)
        assert result.exit_code == 1
        assert "another retrain is running" in result.stderr
        assert f"pid {os.getpid()}" in result.stderr
        with pytest.raises(RetrainLockedError):
            with retrain_lock(models):
                pass
    assert versions(db) == [("blind-1", True, None)]
    # a lock file left by a dead process is not held: the next retrain takes it
    (models / ".retrain.lock").write_text("pid 999999 on elsewhere since yesterday")
    with retrain_lock(models) as path:
        assert path.read_text().startswith(f"pid {os.getpid()}")


def test_from_active_fine_tunes_and_refuses_another_width(record, sim_scans):
    db, models = record
    engine = open_database(db)
    record_scans(engine, sim_scans[:4], exhaustive=False)
    engine.dispose()
    bad = runner.invoke(
        app,
        [
            "retrain",
            "--db",
            db,
            "--models-dir",
            str(models),
            "--recipe",
            "scratch",
            "--from-active",
            "--filters",
            "8",
            "--members",
            "1",
            "--iterations",
            "2",
            "--crop",
            "64",
        ],
    )
    assert bad.exit_code == 1 and "--from-active" in bad.stderr and "4 filters" in bad.stderr
    ok = runner.invoke(
        app,
        [
            "retrain",
            "--db",
            db,
            "--models-dir",
            str(models),
            "--recipe",
            "scratch",
            "--from-active",
            "--members",
            "1",
            "--iterations",
            "3",
            "--crop",
            "64",
            "--promote",
            "force",
            "--json",
        ],
    )
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["activated"] and report["training"]["from"] == "active version blind-1"
    assert report["data"]["train"]["partial_scans"] == 3
    assert versions(db)[-1] == (report["version"], True, "blind-1")


# -- the gate -----------------------------------------------------------------------------------


def test_gate_promotes_a_candidate_that_holds_or_improves():
    d = gate({"trough": 0.80, "peak": 0.60}, {"trough": 0.81, "peak": 0.55})
    assert d.promote and d.would_promote and d.judged == ("trough", "peak")
    assert d.candidate_mean_f1 == pytest.approx(0.70)
    assert gate({"trough": 0.5, "peak": 0.5}, {"trough": 0.5, "peak": 0.5}).promote  # holds


def test_gate_refuses_a_worse_candidate_and_says_why():
    # better on average, but troughs drop by more than the tolerance
    d = gate({"trough": 0.70, "peak": 0.95}, {"trough": 0.80, "peak": 0.60})
    assert not d.promote and not d.would_promote
    assert any("trough F1 drops from 0.800 to 0.700" in r for r in d.reasons)
    # no class drops beyond the tolerance, but the mean is lower
    d = gate({"trough": 0.79, "peak": 0.59}, {"trough": 0.80, "peak": 0.60})
    assert not d.promote and any("mean F1 0.690 is below" in r for r in d.reasons)
    # a larger tolerance does not excuse a lower mean
    assert not gate(
        {"trough": 0.79, "peak": 0.59}, {"trough": 0.80, "peak": 0.60}, tolerance=0.5
    ).promote


def test_gate_judges_only_classes_with_labels_and_modes_override():
    d = gate({"trough": 0.9, "peak": None}, {"trough": 0.8, "peak": 0.9})
    assert d.promote and d.judged == ("trough",)
    empty = gate({"trough": None, "peak": float("nan")}, {"trough": 0.8, "peak": 0.9})
    assert not empty.promote and "no labelled defects" in empty.reasons[0]
    never = gate({"trough": 0.9, "peak": 0.9}, {"trough": 0.1, "peak": 0.1}, mode="never")
    assert not never.promote and never.would_promote
    assert never.summary().startswith("--promote never (the comparison alone would activate")
    force = gate({"trough": 0.1, "peak": 0.1}, {"trough": 0.9, "peak": 0.9}, mode="force")
    assert force.promote and not force.would_promote and "would refuse" in force.summary()


# -- training examples from labels --------------------------------------------------------------


def test_label_radius_is_clipped_to_the_class_default():
    assert label_radius_nm(None, "trough") == DEFAULT_RADIUS_NM["trough"]
    assert label_radius_nm(1.4, "peak") == DEFAULT_RADIUS_NM["peak"]  # box incl. halo
    assert label_radius_nm(0.05, "trough") == 0.5 * DEFAULT_RADIUS_NM["trough"]
    assert label_radius_nm(0.5, "peak") == 0.5
    # the active version's own training radius is the default when it records one
    assert label_radius_nm(1.4, "trough", defaults={"trough": 1.0, "peak": 1.2}) == 1.0
    assert label_radius_nm(None, "peak", defaults={"trough": 1.0, "peak": 1.2}) == 1.2


def test_partial_labels_leave_unmarked_areas_ignored(sim_scans):
    scan = read_scan(sim_scans[0])
    item = LabelledScan(
        scan_id=1,
        name="a",
        split="train",
        scan=scan,
        rows=(20.0, 70.0),
        cols=(20.0, 60.0),
        kinds=("trough", "peak"),
        radius_nm=(None, 2.0),
        exhaustive=False,
    )
    scale = scan.pixel_size_x_nm / 0.1  # scan px -> model px (0.1 nm)
    partial = example_from_labels(item, target_nm=0.1).mask
    full = example_from_labels(
        LabelledScan(**{**item.__dict__, "exhaustive": True}), target_nm=0.1
    ).mask

    def at(r: float, c: float) -> tuple[int, int]:
        return int(round((r + 0.5) * scale - 0.5)), int(round((c + 0.5) * scale - 0.5))

    for mask in (partial, full):
        assert mask[at(20, 20)] == 1 and mask[at(70, 60)] == 2
    # 1 nm beyond the trough's 0.6 nm disc: background taught in both
    r, c = at(20, 20)
    assert partial[r, c + 12] == 0 and full[r, c + 12] == 0
    # far from every mark: ignored when partial, background when exhaustive
    far = at(20, 80)
    assert partial[far] == IGNORE and full[far] == 0
    assert (partial == IGNORE).mean() > 0.8 and (full == IGNORE).mean() < 0.01
    # the peak's 2 nm box radius is capped at its class default (0.7 nm = 7 model px)
    r, c = at(70, 60)
    assert full[r, c + 6] == 2 and full[r, c + 9] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--crop", "60"], "--crop 60: use a multiple of 8"),
        (["--promote", "sometimes"], "--promote 'sometimes': choose auto, never or force"),
        (["--device", "tpu"], "--device 'tpu': use auto, cpu or cuda"),
        (["--rule-choice", "best"], "--rule-choice 'best': choose clear, validation, parent"),
    ],
)
def test_bad_options_are_one_line_and_exit_1(record, args, message):
    db, models = record
    result = runner.invoke(app, ["retrain", "--db", db, "--models-dir", str(models), *args])
    assert result.exit_code == 1 and message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert versions(db) == [("blind-1", True, None)]
