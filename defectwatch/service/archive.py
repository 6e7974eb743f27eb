"""Use case: re-score the archive with the active model version on Dask distributed.

``defectwatch reprocess --workers N`` (a LocalCluster of N worker processes on this machine) or
``--scheduler tcp://host:8786`` (an existing cluster: dask-jobqueue on SLURM, one worker per
GPU on a workstation). Each worker process loads the ensemble once (``_worker_ensemble``) and
keeps it resident; a task is one scan, keyed ``rescore-<sha256>-<version>``.

Exactly once, across workers and runs: a scan is recorded for a version only when its latest
run is not by that version already (``db.records.add_run_unless_scored``, in the same
transaction as the write, the scan row locked). A task that Dask runs twice (its worker was
killed after it finished, a resumed run) or a run interrupted with Ctrl-C and started again
therefore never records a scan twice; the interrupted run's remaining scans are simply still
outdated. With SQLite, only this (client) process writes (one writer; the workers send back
the detection); with PostgreSQL the workers write directly.

Which scans: ``outdated`` (the default): done scans whose latest run used another version;
``everything``: also scans that failed, or were never scored (e.g. while a broken model was
active). Only ``.sxm`` scans; ``path_map`` rewrites recorded path prefixes to where the
workers see the share (``/mnt/stm=/scratch/stm``); the file's sha256 must still match.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from sqlalchemy import Engine

from defectwatch.db import queries as q
from defectwatch.db.engine import make_engine, read_transaction, write_transaction
from defectwatch.db.records import add_run_unless_scored
from defectwatch.domain import Detection
from defectwatch.errors import ConfigError, DefectwatchError, NotFoundError
from defectwatch.service.ingest import active_model, file_sha256

log = logging.getLogger(__name__)

SCAN_SUFFIX = ".sxm"

# (done, failed, total): scans recorded or found already scored, scans that failed, all tasks
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class ArchiveTask:
    """One scan to re-score: ``path`` as the workers see it, ``recorded_path`` as recorded."""

    key: str
    scan_id: int
    sha256: str
    path: str
    recorded_path: str
    channel: str


@dataclass(frozen=True)
class TaskOutcome:
    """What a worker sends back for one task."""

    key: str
    ok: bool
    reason: str | None = None  # why it failed
    detection: Detection | None = None  # for the client to record (SQLite)
    recorded: bool | None = None  # the worker recorded it (True) or found it scored (False)
    worker_pid: int = 0
    loads: int = 0  # ensembles this worker process has loaded so far


@dataclass(frozen=True)
class ArchiveResult:
    """How a run ended. ``recorded``: new runs written; ``already``: scans found already scored
    by the version (a resumed or repeated task); ``failed``: (path, reason)."""

    model_version: str
    total: int
    recorded: int
    already: int
    failed: tuple[tuple[str, str], ...]
    interrupted: bool
    seconds: float
    loads_by_worker: dict[int, int] = field(default_factory=dict)  # worker pid -> loads

    @property
    def remaining(self) -> int:
        return self.total - self.recorded - self.already - len(self.failed)


def parse_path_map(items: Sequence[str]) -> list[tuple[str, str]]:
    """``["OLD=NEW", ...]`` -> prefix pairs; ConfigError for an item without ``=``."""
    pairs = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ConfigError(
                f"--path-map {item!r}: write OLD=NEW, e.g. /mnt/stm-share=/scratch/stm"
            )
        pairs.append((old, new))
    return pairs


def map_path(path: str, path_map: Sequence[tuple[str, str]]) -> str:
    """``path`` with the first matching recorded prefix replaced (longest prefix first)."""
    for old, new in sorted(path_map, key=lambda p: -len(p[0])):
        if (
            path == old
            or path.startswith(old.rstrip("/\\") + "/")
            or path.startswith(old.rstrip("/\\") + "\\")
        ):
            return new.rstrip("/\\") + path[len(old.rstrip("/\\")) :].replace("\\", "/")
    return path


def task_key(sha256: str, version: str) -> str:
    return f"rescore-{sha256}-{version}"


def archive_tasks(
    engine: Engine,
    *,
    version: str,
    everything: bool = False,
    sample: str | None = None,
    channel: str | None = None,
    path_map: Sequence[tuple[str, str]] = (),
) -> list[ArchiveTask]:
    """The scans to re-score with ``version``, oldest first (see the module docstring)."""
    with read_transaction(engine) as session:
        if sample is not None and sample not in q.sample_names(session=session):
            raise NotFoundError(f"no sample called {sample!r} (see `defectwatch samples`)")
        rows = q.list_scans(session=session, sample=sample)
    tasks = []
    for scan, _, run in reversed(rows):
        if PurePath(scan.path).suffix.lower() != SCAN_SUFFIX:
            continue
        if run is not None and run.model_version == version:
            continue  # already scored by this version
        wanted = (scan.status == "done" and run is not None) or (
            everything and scan.status in ("done", "failed")
        )
        if wanted:
            tasks.append(
                ArchiveTask(
                    task_key(scan.sha256, version),
                    scan.id,
                    scan.sha256,
                    map_path(scan.path, path_map),
                    scan.path,
                    channel or scan.channel or "Z",
                )
            )
    return tasks


# -- on the workers ------------------------------------------------------------------------

_ENSEMBLES: dict[tuple[str, int | None], Any] = {}
_LOADS = 0
_ENGINES: dict[str, Engine] = {}
_LOCK = threading.Lock()


def _worker_ensemble(directory: str, threads: int | None) -> Any:
    """The ensemble of ``directory``, loaded once per worker process and kept resident (one at
    a time). ``threads``: CPU cores this worker may use (members run side by side on them)."""
    global _LOADS
    key = (directory, threads)
    with _LOCK:
        if key not in _ENSEMBLES:
            import torch

            from defectwatch.pipeline.inference import Ensemble
            from defectwatch.service.config import cache_dir, get_settings

            cores = threads or os.cpu_count() or 1
            torch.set_num_threads(cores)
            _ENSEMBLES.clear()
            _ENSEMBLES[key] = Ensemble.load(
                directory,
                device="auto",
                side_by_side=max(1, min(cores, 4)),
                onnx_cache_dir=cache_dir() / "onnx",
                cpu_onnx=get_settings().cpu_onnx,
            )
            _LOADS += 1
            log.info("worker %d loaded model %s (%d core(s))", os.getpid(), directory, cores)
        return _ENSEMBLES[key]


def _worker_engine(url: str) -> Engine:
    with _LOCK:
        if url not in _ENGINES:
            _ENGINES[url] = make_engine(url)
        return _ENGINES[url]


def rescore_on_worker(
    task: ArchiveTask,
    *,
    version: str,
    model_dir: str,
    threads: int | None = None,
    db_url: str | None = None,
) -> TaskOutcome:
    """Run on a Dask worker: check the file, detect, and (with ``db_url``) record the run;
    without it the detection goes back to the client. A file's fault is an outcome with a
    reason, not an exception."""
    from defectwatch.service.detection import detect_file

    def failed(reason: str) -> TaskOutcome:
        return TaskOutcome(task.key, False, reason=reason, worker_pid=os.getpid(), loads=_LOADS)

    if not os.path.isfile(task.path):
        hint = (
            ""
            if task.path != task.recorded_path
            else " (a share mounted elsewhere on the workers? see --path-map)"
        )
        return failed(f"{task.path}: no such file on worker {os.getpid()}{hint}")
    try:
        if file_sha256(task.path) != task.sha256:
            return failed(
                f"{task.path}: its content changed since it was recorded (a new "
                f"scan: record it with `defectwatch process`)"
            )
    except OSError as exc:
        return failed(f"{task.path}: cannot read it ({exc.strerror or exc})")
    ensemble = _worker_ensemble(model_dir, threads)
    if ensemble.version != version:
        return failed(
            f"{model_dir} holds model version {ensemble.version!r}, the registry "
            f"calls it {version!r}"
        )
    try:
        _, detection = detect_file(task.path, ensemble=ensemble, channel=task.channel)
    except DefectwatchError as exc:
        return failed(str(exc))
    if db_url is None:
        return TaskOutcome(
            task.key, True, detection=detection, worker_pid=os.getpid(), loads=_LOADS
        )
    with write_transaction(_worker_engine(db_url)) as session:
        recorded = add_run_unless_scored(task.sha256, detection, version=version, session=session)
    return TaskOutcome(task.key, True, recorded=recorded, worker_pid=os.getpid(), loads=_LOADS)


# -- the client ----------------------------------------------------------------------------


def _connect(workers: int | None, scheduler: str | None) -> tuple[Any, Any, int | None]:
    """(client, cluster or None, CPU threads per worker or None)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None, None
        except OSError as exc:
            raise ConfigError(
                f"--scheduler {scheduler}: cannot reach it ({exc}); is the "
                f"Dask scheduler running there?"
            ) from None
    n = workers or 1
    if n < 1:
        raise ConfigError(f"--workers {n}: give 1 or more")
    threads = max(1, (os.cpu_count() or 1) // n)
    import dask

    # Dask starts workers with OMP/MKL/OpenBLAS at 1 thread; each of ours gets its share
    # of the cores (one task at a time per worker: the ensemble runs its members side by side)
    environ = {
        f"distributed.nanny.pre-spawn-environ.{k}": str(threads)
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    with dask.config.set(environ):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    return Client(cluster), cluster, threads


def rescore_archive(
    engine: Engine,
    *,
    everything: bool = False,
    sample: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    path_map: Sequence[tuple[str, str]] = (),
    channel: str | None = None,
    on_progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> ArchiveResult:
    """Re-score the archive with the active version on Dask (``workers`` local processes, or
    the cluster at ``scheduler``). Failures are collected with their reasons and do not stop
    the run; ``stop`` set (or Ctrl-C) cancels what is left and returns ``interrupted``: a
    later run picks up exactly the scans not recorded yet."""
    if workers is not None and scheduler is not None:
        raise ConfigError(
            "--workers and --scheduler: choose one (--workers starts a local "
            "cluster; --scheduler uses a running one)"
        )
    started = time.monotonic()
    version, directory = active_model(engine)
    tasks = archive_tasks(
        engine,
        version=version,
        everything=everything,
        sample=sample,
        channel=channel,
        path_map=path_map,
    )
    by_key = {t.key: t for t in tasks}
    total = len(by_key)
    recorded = already = 0
    failed: list[tuple[str, str]] = []
    loads: dict[int, int] = {}
    interrupted = False

    def progress() -> None:
        if on_progress is not None:
            on_progress(recorded + already, len(failed), total)

    progress()
    if not by_key:
        return ArchiveResult(version, 0, 0, 0, (), False, time.monotonic() - started)
    client, cluster, threads = _connect(workers, scheduler)
    writes_here = engine.dialect.name == "sqlite"
    db_url = None if writes_here else engine.url.render_as_string(hide_password=False)
    from distributed import as_completed

    futures = []
    try:
        futures = [
            client.submit(
                rescore_on_worker,
                t,
                version=version,
                model_dir=str(directory),
                threads=threads,
                db_url=db_url,
                key=t.key,
                pure=False,
            )
            for t in by_key.values()
        ]
        for future in as_completed(futures):
            if stop is not None and stop.is_set():
                interrupted = True
                break
            task = by_key[future.key]
            try:
                outcome: TaskOutcome = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: listed, run goes on
                failed.append((task.recorded_path, f"{type(exc).__name__}: {exc}"))
                log.warning(
                    "%s: not re-scored: %s: %s", task.recorded_path, type(exc).__name__, exc
                )
            else:
                loads[outcome.worker_pid] = max(loads.get(outcome.worker_pid, 0), outcome.loads)
                if not outcome.ok:
                    failed.append((task.recorded_path, outcome.reason or "?"))
                    log.warning("%s: not re-scored: %s", task.recorded_path, outcome.reason)
                else:
                    if writes_here:
                        assert outcome.detection is not None
                        with write_transaction(engine) as session:
                            new = add_run_unless_scored(
                                task.sha256, outcome.detection, version=version, session=session
                            )
                    else:
                        new = bool(outcome.recorded)
                    recorded += new
                    already += not new
            future.release()
            progress()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if interrupted:
            client.cancel(futures)
            log.warning(
                "interrupted: %d of %d scan(s) left; run the same command again to re-score them",
                total - recorded - already - len(failed),
                total,
            )
        client.close()
        if cluster is not None:
            cluster.close()
    return ArchiveResult(
        version,
        total,
        recorded,
        already,
        tuple(failed),
        interrupted,
        time.monotonic() - started,
        loads,
    )
