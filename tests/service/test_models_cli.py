"""`defectwatch models ...` and `reprocess` with tiny real model versions (2 members, 4
filters) and small simulated .sxm scans, on real SQLite files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from defectwatch.db import open_database, read_transaction, write_transaction
from defectwatch.db.models import DetectionRun
from defectwatch.db.registry import activate_version, register_version
from defectwatch.service.cli import app
from tests.service.test_labels_cli import write_png

runner = CliRunner()
JSON_KEYS = {"version", "active", "created_at", "parent", "members", "metrics", "retrain"}


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, Path]:
    """Two loadable tiny versions and a broken one (a member file missing)."""
    from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member, save_version
    from defectwatch.pipeline.preprocess import PreprocessParams

    root = tmp_path_factory.mktemp("models")
    spec = UnetSpec(nb_filters=4)
    out = {}
    for name in ("tiny-a", "tiny-b"):
        out[name] = save_version(
            root / name, ModelConfig(version=name, pixel_size_nm=0.1, architecture=spec,
                                     preprocess=PreprocessParams().to_dict()),
            [build_member(spec).state_dict() for _ in range(2)])
    broken = root / "broken"
    shutil.copytree(out["tiny-a"], broken)
    (broken / "member_01.safetensors").unlink()
    out["broken"] = broken
    return out


def register(db: str, name: str, directory: Path, *, activate: bool = False,
             metrics: dict | None = None) -> None:
    engine = open_database(db)
    with write_transaction(engine) as s:
        register_version(name, session=s, directory=str(directory), members=2,
                         metrics=metrics, parent="tiny-a" if name != "tiny-a" else None)
        if activate:
            activate_version(name, session=s)
    engine.dispose()


def listed(db: str) -> list[dict]:
    result = invoke("models", "list", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_fresh_database_lists_the_shipped_default_as_the_active_first_version(tmp_path):
    db = f"sqlite:///{tmp_path / 'new' / 'record.db'}"
    rows = listed(db)  # the database is created, the default registered
    assert len(rows) == 1 and set(rows[0]) == JSON_KEYS
    assert rows[0]["active"] is True and rows[0]["parent"] is None
    assert rows[0]["version"].startswith("default")
    table = invoke("models", "list", "--db", db)
    assert table.exit_code == 0 and rows[0]["version"] in table.stdout
    nothing = invoke("models", "rollback", "--db", db)
    assert nothing.exit_code == 1 and "no earlier model version" in nothing.stderr


def test_activate_and_rollback_refuse_versions_that_no_longer_load(tmp_path, versions):
    db = f"sqlite:///{tmp_path / 'record.db'}"
    listed(db)
    register(db, "tiny-a", versions["tiny-a"])
    register(db, "tiny-b", versions["tiny-b"], metrics={"f1": {"trough": 0.8, "peak": 0.6}})
    register(db, "broken", versions["broken"])
    gone = tmp_path / "gone"
    shutil.copytree(versions["tiny-a"], gone)
    register(db, "gone", gone)

    result = invoke("models", "activate", "tiny-a", "--db", db)
    assert result.exit_code == 0 and "activated tiny-a (was default" in result.stdout
    assert invoke("models", "activate", "tiny-b", "--db", db).exit_code == 0
    again = invoke("models", "activate", "tiny-b", "--db", db)
    assert again.exit_code == 0 and "already the active version" in again.stdout
    rows = {r["version"]: r for r in listed(db)}
    assert [n for n, r in rows.items() if r["active"]] == ["tiny-b"]
    assert rows["tiny-b"]["metrics"] == {"f1": {"trough": 0.8, "peak": 0.6}}
    assert rows["tiny-b"]["members"] == 2 and rows["tiny-b"]["parent"] == "tiny-a"
    assert "f1.peak=0.6" in invoke("models", "list", "--db", db).stdout

    refused = invoke("models", "activate", "broken", "--db", db)
    assert refused.exit_code == 1 and "member file member_01.safetensors is missing" in \
        refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.output
    unknown = invoke("models", "activate", "nope", "--db", db)
    assert unknown.exit_code == 1 and "known: default" in unknown.stderr

    back = invoke("models", "rollback", "--db", db)
    assert back.exit_code == 0 and "rolled back to tiny-a (was tiny-b)" in back.stdout
    # a rollback target whose directory vanished is refused, nothing changes
    assert invoke("models", "activate", "gone", "--db", db).exit_code == 0
    assert invoke("models", "activate", "tiny-b", "--db", db).exit_code == 0
    shutil.rmtree(gone)
    refused = invoke("models", "rollback", "--db", db)
    assert refused.exit_code == 1 and "gone" in refused.stderr
    assert [r["version"] for r in listed(db) if r["active"]] == ["tiny-b"]


def test_reprocess_rescores_outdated_scans_and_keeps_their_history(tmp_path, versions):
    from defectwatch.service.detection import detect_file, load_ensemble
    from defectwatch.service.ingest import record_file
    from defectwatch.service.simulation import write_simulated_scans

    db = f"sqlite:///{tmp_path / 'record.db'}"
    engine = open_database(db)
    register(db, "tiny-a", versions["tiny-a"], activate=True)
    written = write_simulated_scans(tmp_path / "S1", n=3, size_nm=6.4, pixels=64, seed=5,
                                    prefix="STM_S1")
    old = load_ensemble(versions["tiny-a"])
    for w in written:
        scan, det = detect_file(w.sxm, ensemble=old)
        record_file(w.sxm, scan, det, engine=engine)
    render = write_png(tmp_path / "S1" / "render.png")
    assert invoke("import-image", render, "--size-nm", "6.4", "--db", db).exit_code == 0
    written[2].sxm.unlink()  # a scan whose file is gone
    register(db, "tiny-b", versions["tiny-b"], activate=True)

    result = invoke("reprocess", "--outdated", "--db", db)
    assert result.exit_code == 0, result.output
    assert "re-scored 2 of 3 scan(s) with tiny-b; 1 skipped" in result.stdout
    assert "no longer there" in result.stderr
    scans = {s["file"]: s for s in json.loads(invoke("scans", "--json", "--db", db).stdout)}
    assert scans[written[0].sxm.name]["model_version"] == "tiny-b"
    assert scans[written[2].sxm.name]["model_version"] == "tiny-a"
    assert scans["render.png"]["model_version"] is None  # images are not re-scored

    again = invoke("reprocess", "--outdated", "--db", db)
    assert "re-scored 0 of 1 scan(s)" in again.stdout
    everything = invoke("reprocess", "--sample", "S1", "--db", db)
    assert "re-scored 2 of 3 scan(s)" in everything.stdout
    with read_transaction(engine) as s:  # history kept: runs are added, never replaced
        runs = dict(s.execute(select(DetectionRun.scan_id, func.count())
                              .group_by(DetectionRun.scan_id)).all())
    assert sorted(runs.values()) == [1, 3, 3]
    missing = invoke("reprocess", "--sample", "nope", "--db", db)
    assert missing.exit_code == 1 and "no sample called 'nope'" in missing.stderr
    engine.dispose()
