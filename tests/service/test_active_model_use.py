"""`process`, `evaluate` and `reprocess` detect with the record's active version unless
`--model` says otherwise, and say which one (`model_versions.resolve_model`): tiny real
models, a real SQLite record, real .sxm files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from defectwatch.db import open_database, read_transaction, write_transaction
from defectwatch.db.models import DetectionRun
from defectwatch.db.registry import register_version
from defectwatch.errors import ModelLoadError
from defectwatch.service.cli import app
from defectwatch.service.model_versions import activate, resolve_model
from defectwatch.service.simulation import write_simulated_scans

runner = CliRunner()


def tiny_version(folder: Path, name: str) -> Path:
    """A 4-filter, 1-member version called ``name``."""
    import torch

    from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member, save_version
    from defectwatch.pipeline.preprocess import PreprocessParams

    spec = UnetSpec(nb_filters=4)
    torch.manual_seed(0)
    return save_version(
        folder / name,
        ModelConfig(
            version=name,
            pixel_size_nm=0.1,
            architecture=spec,
            preprocess=PreprocessParams().to_dict(),
            metrics={"threshold": 0.5},
        ),
        [build_member(spec).state_dict()],
    )


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("scans")
    return [
        w.sxm
        for w in write_simulated_scans(
            folder, n=2, size_nm=8.0, pixels=64, density_per_cm2=3e12, seed=3
        )
    ]


@pytest.fixture
def record(tmp_path):
    """A record with two registered versions, ``shipped-x`` active and ``cand-y`` a
    candidate; returns (db path, {name: directory})."""
    dirs = {n: tiny_version(tmp_path / "models", n) for n in ("shipped-x", "cand-y")}
    db = tmp_path / "record.db"
    engine = open_database(db)
    with write_transaction(engine) as s:
        register_version("shipped-x", session=s, directory=str(dirs["shipped-x"]), activate=True)
        register_version("cand-y", session=s, directory=str(dirs["cand-y"]))
    engine.dispose()
    return db, dirs


def runs(db: Path) -> list[str]:
    engine = open_database(db)
    with read_transaction(engine) as s:
        out = [r.model_version for r in s.scalars(select(DetectionRun).order_by(DetectionRun.id))]
    engine.dispose()
    return out


def test_process_records_runs_under_the_activated_candidate(record, scans):
    db, dirs = record
    engine = open_database(db)
    activate(engine, "cand-y")
    engine.dispose()
    result = runner.invoke(app, ["process", str(scans[0]), "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["model"] == "cand-y"
    assert "cand-y (the record's active version)" in result.stderr
    assert runs(db) == ["cand-y"]
    # --model wins over the record, and says so
    result = runner.invoke(
        app, ["process", str(scans[1]), "--db", str(db), "--model", str(dirs["shipped-x"])]
    )
    assert result.exit_code == 0, result.output
    assert "shipped-x (--model" in result.stderr
    assert runs(db) == ["cand-y", "shipped-x"]


def test_reprocess_and_evaluate_use_the_active_version(record, scans):
    db, _ = record
    assert runner.invoke(app, ["process", str(scans[0]), "--db", str(db)]).exit_code == 0
    engine = open_database(db)
    activate(engine, "cand-y")
    engine.dispose()
    result = runner.invoke(app, ["reprocess", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "with cand-y" in result.stdout and runs(db) == ["shipped-x", "cand-y"]
    result = runner.invoke(app, ["evaluate", str(scans[0].parent), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "scoring model cand-y (the record's active version)" in result.stdout


def test_resolve_model_without_a_record_is_the_shipped_default(tmp_path):
    shipped = tiny_version(tmp_path, "ship-1")
    chosen = resolve_model(None, default_dir=lambda: shipped)
    assert (chosen.name, chosen.source) == ("ship-1", "shipped")
    assert "shipped default" in chosen.describe()
    with pytest.raises(ModelLoadError, match="no such model version directory"):
        resolve_model(None, tmp_path / "nope")
