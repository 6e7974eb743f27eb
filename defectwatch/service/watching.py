"""Use case: ``defectwatch watch``: the daemon wired to the database, the pipeline and logging.

The daemon (`defectwatch.daemon`) gets the SQL job queue, ``ingest.make_process`` (which
reloads the model when the registry's active version changes) and ``scan_expected_size`` (each
format's completeness rule, `defectwatch.pipeline.readers.expected_size`); this
module opens the database, checks the active model loads before anything is claimed, keeps the
heartbeat row fresh and sets up the log (stderr and a rotating file).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, make_url

from defectwatch.daemon.runner import DaemonReport, DaemonStatus, check_dirs, run_daemon
from defectwatch.daemon.signals import StopSignals
from defectwatch.daemon.worker import RetryPolicy
from defectwatch.db import open_database
from defectwatch.errors import ScanIncompleteError
from defectwatch.pipeline.scan_names import DEFAULT_PATTERN
from defectwatch.pipeline.sxm import read_layout
from defectwatch.service.config import (
    check_instrument,
    check_sample_rule,
    data_dir,
    default_instrument,
)
from defectwatch.service.ingest import Heartbeat, active_model, make_process, make_queue

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5


def scan_expected_size(path: str) -> int | None:
    """Bytes a scan file of any supported format will have once complete, by its format's
    rule (`defectwatch.pipeline.readers.expected_size`)."""
    from defectwatch.pipeline.readers import expected_size

    return expected_size(path)


def sxm_expected_size(path: str) -> int | None:
    """Bytes a `.sxm` file will have once complete (from its header); None while it is still
    shorter than its header promises. Raises ScanReadError for a file that is no scan."""
    try:
        return read_layout(path).expected_size
    except ScanIncompleteError:
        return None


@dataclass(frozen=True)
class WatchOptions:
    """Everything ``defectwatch watch`` can be told; times in seconds."""

    recursive: bool = False
    poll_s: float | None = None
    pattern: str = DEFAULT_PATTERN  # every supported format; comma-separated globs
    once: bool = False
    stable_for_s: float = 2.0
    incomplete_after_s: float = 60.0
    sample_rule: str = "folder"
    channel: str = "Z"
    max_attempts: int = 5
    retry_delay_s: float = 10.0
    lease_s: float = 900.0
    heartbeat_s: float = 5.0
    instrument: str | None = None  # recorded on every scan (None: DEFECTWATCH_INSTRUMENT/host)


def default_log_file(db_url: str) -> Path:
    """``watch.log`` next to a SQLite database file, else in the user's data directory."""
    try:
        url = make_url(db_url if "://" in db_url else f"sqlite:///{db_url}")
    except Exception:  # noqa: BLE001 - the database open reports a bad URL properly
        url = None
    database = url.database if url is not None and url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not database.startswith("file:"):
        return Path(database).expanduser().resolve().parent / "watch.log"
    return data_dir() / "watch.log"


def configure_watch_logging(log_file: Path | None, *, level: int = logging.INFO) -> None:
    """Plain timestamped lines on stderr (replacing the CLI's rich handler: a daemon's log is
    read in files and terminals alike) and, when ``log_file`` is given, in that file rotated at
    10 MB (5 kept)."""
    root = logging.getLogger("defectwatch")
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_defectwatch_watch", False) or type(handler).__name__ == "RichHandler":
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter(LOG_FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [stderr]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
            )
        )
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._defectwatch_watch = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def check_model(engine: Engine) -> str:
    """Load the active model version once (the shipped default on a fresh database) so that a
    missing or broken model stops ``watch`` at start-up, not every scan. Returns its name."""
    from defectwatch.service.detection import load_ensemble

    name, directory = active_model(engine)
    load_ensemble(directory)  # cached: the first scan does not load it again
    return name


def watch(
    dirs: Sequence[str | os.PathLike[str]],
    *,
    db_url: str,
    options: WatchOptions = WatchOptions(),
    stop_event: threading.Event | None = None,
    handle_signals: bool = True,
) -> DaemonReport:
    """Watch ``dirs`` and record every scan in the database at ``db_url`` until stopped
    (SIGINT/SIGTERM: warm, then cold) or, with ``options.once``, until what is there is done.
    Raises ConfigError / ModelLoadError before anything starts when the set-up cannot work.
    The signal handlers are in place from the start: a SIGTERM while the model loads (seconds)
    stops the daemon as cleanly as one later."""
    stop = stop_event or threading.Event()
    with StopSignals(stop) if handle_signals else contextlib.nullcontext():
        return _watch(dirs, db_url=db_url, options=options, stop=stop)


def _watch(
    dirs: Sequence[str | os.PathLike[str]],
    *,
    db_url: str,
    options: WatchOptions,
    stop: threading.Event,
) -> DaemonReport:
    roots = check_dirs([os.fspath(d) for d in dirs])
    rule = check_sample_rule(options.sample_rule)
    instrument = (
        check_instrument(options.instrument) if options.instrument else default_instrument()
    )
    engine = open_database(db_url)
    model = check_model(engine)
    queue = make_queue(engine, roots=roots, rule=rule, instrument=instrument)
    queue.release_dead_workers(host=socket.gethostname(), is_alive=_pid_alive)
    process = make_process(engine, channel=options.channel)
    heartbeat = Heartbeat(engine, instrument=instrument)

    def beat(status: DaemonStatus) -> None:
        heartbeat()

    log.info(
        "defectwatch watch: %s into %s for instrument %s, model %s, samples by %s",
        ", ".join(roots),
        engine.url.render_as_string(),
        instrument,
        model,
        rule,
    )
    try:
        return run_daemon(
            roots,
            queue=queue,
            process=process,
            expected_size=scan_expected_size,
            recursive=options.recursive,
            poll_s=options.poll_s,
            pattern=options.pattern,
            stable_for_s=options.stable_for_s,
            incomplete_after_s=max(options.incomplete_after_s, options.stable_for_s),
            once=options.once,
            stop_event=stop,
            heartbeat=beat,
            heartbeat_s=options.heartbeat_s,
            lease_s=options.lease_s,
            retry=RetryPolicy(
                max_attempts=options.max_attempts,
                base_delay_s=options.retry_delay_s,
                max_delay_s=max(600.0, options.retry_delay_s),
            ),
        )
    finally:
        try:
            heartbeat.stop()
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            log.warning("could not record the clean stop: %s", exc)
        engine.dispose()


def _pid_alive(pid: int) -> bool:
    """Whether a local process exists (POSIX signal 0; elsewhere assume alive and let the
    lease expire: on Windows os.kill would terminate the process)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
