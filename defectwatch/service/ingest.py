"""Use case: a ready scan file becomes a recorded detection (the daemon's ``process``).

Wires the pipeline (through ``defectwatch.service.detection``) to the db: read and detect
outside any transaction, then store the scan's metadata, one detection run, its defects and the
job's ``done`` in ONE write transaction. Also the active-model lookup (the shipped default is
registered and activated on a fresh database) and the daemon's heartbeat.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from defectwatch.db import heartbeat as hb
from defectwatch.db.engine import read_transaction, unreachable_as_error, write_transaction
from defectwatch.db.models import ScanRow, utcnow
from defectwatch.db.queue import SqlJobQueue, mark_done
from defectwatch.db.records import (
    add_detection_run,
    add_scan,
    get_or_create_sample,
    scan_by_sha256,
    set_scan_metadata,
)
from defectwatch.db.registry import (
    activate_version,
    active_version,
    list_versions,
    register_version,
)
from defectwatch.digest import sha256_file as file_sha256  # re-exported (reprocess, tests)
from defectwatch.domain import Detection, Job, Scan
from defectwatch.service.samples import make_sample_for, sample_for

log = logging.getLogger(__name__)

Detect = Callable[..., "tuple[Scan, Detection]"]  # detect_file(path, *, ensemble, channel)


def record_detection(
    scan: Scan,
    detection: Detection,
    *,
    session: Any,
    sha256: str,
    sample: str | None = None,
    path: str | None = None,
    size_bytes: int | None = None,
    mtime_ns: int | None = None,
    instrument: str | None = None,
) -> int:
    """Record one detection of a scan file (outside the queue, e.g. ``defectwatch process``).

    A file whose content is already recorded gets a new run (its latest counts); a new file
    becomes a ``done`` scan. ``size_bytes``/``mtime_ns`` default to the file's; ``instrument``
    is recorded on a new scan (and on a known one that has none). Returns the run id. Does not
    commit.
    """
    path = str(path or scan.path)
    row = scan_by_sha256(sha256, session=session)
    if row is None:
        if size_bytes is None or mtime_ns is None:
            st = os.stat(path)
            size_bytes, mtime_ns = st.st_size, st.st_mtime_ns
        row = add_scan(
            path,
            session=session,
            sha256=sha256,
            size_bytes=size_bytes,
            mtime_ns=mtime_ns,
            sample=sample,
            status="done",
            instrument=instrument,
        )
    else:
        if sample and row.sample is None:
            row.sample = get_or_create_sample(sample, session=session)
        if instrument and row.instrument is None:
            row.instrument = instrument
        row.status, row.lease_owner, row.lease_expires_at = "done", None, None
        row.last_error = None
    set_scan_metadata(row, scan)
    return add_detection_run(row.id, detection, session=session).id


def record_file(
    path: str | os.PathLike[str],
    scan: Scan,
    detection: Detection,
    *,
    engine: Engine,
    rule: str = "folder",
    watch_root: str | os.PathLike[str] | None = None,
    instrument: str | None = None,
) -> int:
    """Hash ``path``, name its sample by ``rule`` and record the detection in one transaction;
    returns the run id."""
    sha = file_sha256(path)
    sample = sample_for(path, watch_root=watch_root, rule=rule, comment=scan.comment)
    with write_transaction(engine) as session:
        return record_detection(
            scan,
            detection,
            session=session,
            sha256=sha,
            sample=sample,
            path=str(path),
            instrument=instrument,
        )


def model_version_name(directory: str | os.PathLike[str]) -> str:
    """A version directory's name as its config.json gives it (else the folder's name)."""
    try:
        return str(json.loads((Path(directory) / "config.json").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return Path(directory).name


def _shipped_default_dir() -> Path:
    from defectwatch.models import default_model_dir

    return Path(default_model_dir())


def active_model(
    engine: Engine, *, default_dir: Callable[[], Path] = _shipped_default_dir
) -> tuple[str, Path]:
    """(name, directory) of the active model version. On a registry with nothing active the
    shipped default (``default_dir()``) is registered if needed and activated; so is a newer
    shipped default when the active version is an older one that an upgrade removed."""
    directory = default_dir()
    with read_transaction(engine) as session:
        version = active_version(session=session)
        if version is not None and not _replaced_default(Path(version.directory), directory):
            return version.name, Path(version.directory)
    name = model_version_name(directory)
    with write_transaction(engine) as session:
        version = active_version(session=session)  # another process may have been quicker
        if version is not None and _replaced_default(Path(version.directory), directory):
            log.warning(
                "the active model %s was a shipped default this installation no longer "
                "has (%s); activating the shipped %s",
                version.name,
                version.directory,
                name,
            )
            version = None
        if version is None:
            known = {v.name for v in list_versions(session=session)}
            if name not in known:
                register_version(
                    name,
                    session=session,
                    directory=str(directory),
                    metrics=_config_field(directory, "metrics", {}),
                    members=len(_config_field(directory, "members", {})),
                    parent=_config_field(directory, "parent", None),
                )
            version = activate_version(name, session=session)
            log.info("registered the shipped model %s (%s) as active", name, directory)
        return version.name, Path(version.directory)


def _replaced_default(active_dir: Path, shipped_dir: Path) -> bool:
    """True when ``active_dir`` was a shipped default (beside ``shipped_dir`` in the package)
    that is gone, while the package now ships ``shipped_dir``."""
    return (
        active_dir != shipped_dir
        and active_dir.parent == shipped_dir.parent
        and not active_dir.exists()
        and shipped_dir.is_dir()
    )


def _config_field(directory: str | os.PathLike[str], key: str, default: Any) -> Any:
    try:
        return json.loads((Path(directory) / "config.json").read_text()).get(key, default)
    except (OSError, ValueError, AttributeError):
        return default


def _default_detect(path: str, *, ensemble: Any, channel: str) -> tuple[Scan, Detection]:
    from defectwatch.service.detection import detect_file

    return detect_file(path, ensemble=ensemble, channel=channel)


def _default_load(directory: Path) -> Any:
    from defectwatch.service.detection import load_ensemble

    return load_ensemble(directory)


def make_process(
    engine: Engine,
    *,
    channel: str = "Z",
    load_ensemble: Callable[[Path], Any] = _default_load,
    detect: Detect = _default_detect,
    default_dir: Callable[[], Path] = _shipped_default_dir,
) -> Callable[[Job], str]:
    """The daemon's ``process(job) -> summary``: the active model (reloaded when the registry's
    active version changes), detection, then one transaction recording everything and marking
    the job done. Errors propagate (ScanIncompleteError: retry; other DefectwatchError: fail)."""
    loaded: dict[str, Any] = {}

    def ensemble() -> tuple[str, Any]:
        name, directory = active_model(engine, default_dir=default_dir)
        key = f"{name}\0{directory}"
        if key not in loaded:
            log.info("loading model version %s from %s", name, directory)
            model = load_ensemble(directory)
            loaded.clear()  # keep one ensemble resident
            loaded[key] = model
        return name, loaded[key]

    def process(job: Job) -> str:
        with unreachable_as_error(engine):  # the worker waits out an outage, then retries
            return _process(job)

    def _process(job: Job) -> str:
        _, model = ensemble()
        scan, detection = detect(job.path, ensemble=model, channel=channel)
        with write_transaction(engine) as session:
            if not mark_done(job, session=session):
                log.warning("%s: lease lost while processing; not recorded here", job.path)
                return f"{Path(job.path).name}: lease lost, left to the worker that holds it"
            row = session.get(ScanRow, job.id)
            assert row is not None  # we hold its claim
            set_scan_metadata(row, scan)
            add_detection_run(row.id, detection, session=session)
        return summary(job, detection)

    return process


def summary(job: Job, detection: Detection) -> str:
    """One log line: sample, file, defects by kind, total density, seconds."""
    kinds = [d.kind for d in detection.defects]
    total = detection.densities.get("total")
    density = f"{total.per_cm2:.3g} cm^-2" if total is not None else "-"
    return (
        f"{job.sample or '-'} {Path(job.path).name}: {kinds.count('trough')} trough, "
        f"{kinds.count('peak')} peak, density {density}, "
        f"{detection.seconds:.1f} s ({detection.model_version})"
    )


def make_queue(
    engine: Engine,
    *,
    roots: Sequence[str | os.PathLike[str]],
    rule: str,
    instrument: str | None = None,
) -> SqlJobQueue:
    """The job queue for ``watch``, naming each new file's sample by ``rule`` under ``roots``
    and recording ``instrument`` on it."""
    return SqlJobQueue(
        engine, sample_for=make_sample_for(roots=roots, rule=rule), instrument=instrument
    )


class Heartbeat:
    """Callable the daemon calls every few seconds; ``stop()`` once at a clean exit."""

    def __init__(
        self,
        engine: Engine,
        *,
        pid: int | None = None,
        host: str | None = None,
        instrument: str | None = None,
    ) -> None:
        self.engine = engine
        self.pid = os.getpid() if pid is None else pid
        self.host = host or socket.gethostname()
        self.instrument = instrument
        self.started_at: datetime = utcnow()

    def __call__(self) -> None:
        with unreachable_as_error(self.engine), write_transaction(self.engine) as session:
            hb.beat(
                session=session,
                pid=self.pid,
                host=self.host,
                started_at=self.started_at,
                instrument=self.instrument,
            )

    def stop(self) -> None:
        with write_transaction(self.engine) as session:
            hb.stopped(session=session, pid=self.pid, host=self.host, started_at=self.started_at)
