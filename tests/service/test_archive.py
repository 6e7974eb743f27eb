"""Re-scoring the archive on Dask distributed: a real LocalCluster of 2 worker processes, tiny
random models, real .sxm files; a worker killed with SIGKILL mid-run, the run interrupted and
resumed; every scan gets exactly one new run. SQLite (the client writes) and PostgreSQL (the
workers write)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from defectwatch.db import open_database, read_transaction, write_transaction
from defectwatch.db.models import DetectionRun, ScanRow
from defectwatch.db.records import add_detection_run, add_run_unless_scored, add_scan
from defectwatch.db.registry import register_version
from defectwatch.errors import ConfigError
from defectwatch.service.archive import map_path, parse_path_map, rescore_archive
from defectwatch.service.cli import app
from defectwatch.service.ingest import file_sha256
from tests.daemon.queue_double import write_scan
from tests.db.factories import detection
from tests.service.test_watch_process import tiny_models  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def archive(
    url: str, folder: Path, models: dict[str, Path], n: int, *, recorded_under: str | None = None
) -> None:
    """``n`` scans recorded with tiny-1 (paths under ``recorded_under`` when given: the share
    as the microscope PC saw it), then tiny-2 activated."""
    engine = open_database(url)
    with write_transaction(engine) as s:
        for name, directory in models.items():
            register_version(
                name, session=s, directory=str(directory), members=2, activate=name == "tiny-2"
            )
        for k in range(n):
            path = write_scan(folder / f"scan_{k:02d}.sxm", 500 + k, pixels=64)
            recorded = f"{recorded_under}/{path.name}" if recorded_under else str(path)
            row = add_scan(
                recorded,
                session=s,
                sha256=file_sha256(path),
                size_bytes=1,
                mtime_ns=1,
                sample="S",
                status="done",
                instrument="STM-1",
            )
            add_detection_run(row.id, detection(1, 0, 100.0, version="tiny-1"), session=s)
    engine.dispose()


def runs(url: str) -> dict[str, list[str]]:
    """file name -> model versions of its runs, oldest first."""
    engine = open_database(url)
    with read_transaction(engine) as s:
        rows = s.execute(
            select(ScanRow.path, DetectionRun.model_version)
            .join(DetectionRun, DetectionRun.scan_id == ScanRow.id)
            .order_by(DetectionRun.id)
        ).all()
    engine.dispose()
    out: dict[str, list[str]] = {}
    for path, version in rows:
        out.setdefault(Path(path).name, []).append(version)
    return out


def test_two_workers_a_killed_worker_an_interrupted_run_and_its_resumption(tmp_path, tiny_models):
    from distributed import Client, LocalCluster

    url = f"sqlite:///{tmp_path / 'record.db'}"
    folder = tmp_path / "share"
    n = 12
    archive(url, folder, tiny_models, n, recorded_under="/mnt/stm-pc/share")
    (folder / "scan_11.sxm").unlink()  # gone from the share: a failure with its reason
    path_map = parse_path_map([f"/mnt/stm-pc/share={folder}"])
    engine = open_database(url)

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    stop = threading.Event()
    seen: list[tuple[int, int, int]] = []
    try:
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]

        def on_progress(done: int, failed: int, total: int) -> None:
            seen.append((done, failed, total))
            if done + failed == 1:
                os.kill(victim, signal.SIGKILL)  # a worker killed mid-run
            if done >= 6:
                stop.set()  # Ctrl-C

        first = rescore_archive(
            engine,
            scheduler=cluster.scheduler_address,
            path_map=path_map,
            on_progress=on_progress,
            stop=stop,
        )
        assert first.interrupted and first.total == n
        assert 6 <= first.recorded < n - 1 and first.already == 0
        assert seen[0] == (0, 0, n) and seen[-1][2] == n
        assert [f for f in first.failed if "KilledWorker" in f[1]] == []
        # no worker process loaded the ensemble twice (one restarted after the kill may not
        # have been handed a scan before the interruption: 0 loads)
        assert max(first.loads_by_worker.values()) == 1
        assert set(first.loads_by_worker.values()) <= {0, 1}

        # the same command again (the same cluster: its workers keep their ensemble)
        second = rescore_archive(engine, scheduler=cluster.scheduler_address, path_map=path_map)
    finally:
        client.close()
        cluster.close()
    engine.dispose()
    assert not second.interrupted and second.total == n - first.recorded
    assert second.recorded == n - 1 - first.recorded and second.already == 0
    [(path, reason)] = second.failed
    assert path == "/mnt/stm-pc/share/scan_11.sxm" and "no such file" in reason
    # loaded at most once per worker process (the same cluster: a worker of the first run
    # keeps its ensemble and loads nothing)
    assert max(second.loads_by_worker.values()) == 1

    done = runs(url)
    assert done.pop("scan_11.sxm") == ["tiny-1"]
    assert done == {f"scan_{k:02d}.sxm": ["tiny-1", "tiny-2"] for k in range(n - 1)}


def test_on_postgresql_the_workers_write_and_a_repeat_finds_nothing_to_do(
    pg_url, tmp_path, tiny_models
):
    archive(pg_url, tmp_path / "share", tiny_models, 4)
    result = CliRunner().invoke(app, ["reprocess", "--all", "--workers", "2", "--db", pg_url])
    assert result.exit_code == 0, result.output
    assert "re-scored 4 of 4 scan(s) with tiny-2 on Dask" in result.stdout
    assert "done 4 · failed 0 · remaining 0" in result.stderr
    engine = open_database(pg_url)
    again = rescore_archive(engine, workers=2)
    assert again.total == 0 and again.recorded == 0
    # a task computed twice (a worker killed after its commit) records nothing the second time
    with write_transaction(engine) as s:
        sha = s.scalars(select(ScanRow.sha256)).first()
        assert not add_run_unless_scored(
            sha, detection(0, 0, 1.0, version="tiny-2"), version="tiny-2", session=s
        )
    engine.dispose()
    assert set(map(tuple, runs(pg_url).values())) == {("tiny-1", "tiny-2")}


def test_path_maps_and_bad_options():
    pairs = parse_path_map(["/mnt/a=/data/a", "/mnt/a/b=/fast/b", "Z:\\stm=/share/stm"])
    assert map_path("/mnt/a/x.sxm", pairs) == "/data/a/x.sxm"
    assert map_path("/mnt/a/b/y.sxm", pairs) == "/fast/b/y.sxm"  # the longest prefix wins
    assert map_path("/mnt/ab/z.sxm", pairs) == "/mnt/ab/z.sxm"  # not a folder prefix
    assert map_path("Z:\\stm\\2026\\s.sxm", pairs) == "/share/stm/2026/s.sxm"
    with pytest.raises(ConfigError, match="OLD=NEW"):
        parse_path_map(["/mnt/a"])
    both = CliRunner().invoke(app, ["reprocess", "--all", "--outdated", "--workers", "2"])
    assert both.exit_code == 1 and "choose one" in both.output
    bad = CliRunner().invoke(app, ["reprocess", "--workers", "1", "--path-map", "/x"])
    assert bad.exit_code == 1 and "OLD=NEW" in bad.output
