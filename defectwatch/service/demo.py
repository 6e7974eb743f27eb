"""Use case: ``defectwatch demo``: the product at work on a simulated STM session.

A demo folder holds a watch folder (one sub-folder per sample, as most labs keep them), a fresh
SQLite database and the daemon's log. The daemon (`defectwatch.service.watching.watch`) runs in
a background thread, loads the active model once (the shipped default on a fresh database),
while simulated scans are written into the watch folder as an instrument writes them: in chunks
over about a second, the ground truth CSV beside each. The database is polled (through
`defectwatch.service.queries`) and every recorded scan is reported; at the end the daemon is
stopped cleanly and the densities per sample are returned with the simulated truth.
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine

from defectwatch.db import open_database, write_transaction
from defectwatch.db.registry import register_version
from defectwatch.errors import ConfigError, DefectwatchError, ModelLoadError
from defectwatch.service.ingest import model_version_name
from defectwatch.service.queries import SampleDensity, density_report, scans_report, status_report
from defectwatch.service.simulation import write_simulated_scans
from defectwatch.service.watching import LOG_FORMAT, WatchOptions, watch

log = logging.getLogger(__name__)

DB_NAME = "defectwatch.db"
LOG_NAME = "watch.log"
WATCH_NAME = "scans"
STAGING_NAME = ".simulator"  # scans are simulated here, then written into the watch folder


@dataclass(frozen=True)
class DemoSample:
    """One sample of the simulated session: what it is made of and how it is scanned."""

    name: str
    material: str  # wse2 | mose2
    density_per_cm2: float
    pixels: int
    size_nm: float


# About 0.1 nm per pixel, the shipped model's pixel size; three frame sizes as in a real session.
DEMO_SAMPLES: tuple[DemoSample, ...] = (
    DemoSample("WSe2-SL445", "wse2", 2.0e12, 512, 50.0),
    DemoSample("WSe2-SL447", "wse2", 6.0e11, 384, 40.0),
    DemoSample("MoSe2-M12", "mose2", 1.2e12, 256, 25.0),
)


@dataclass(frozen=True)
class DemoOptions:
    """How the simulated session goes; times in seconds."""

    scans: int = 9  # taken in turn from ``samples``
    samples: tuple[DemoSample, ...] = DEMO_SAMPLES
    seed: int = 0  # scan k is simulated with seed + k
    write_s: float = 1.0  # how long writing one file takes
    chunks: int = 8  # ... in this many pieces
    gap_s: float = 0.3  # pause between two scans
    stable_for_s: float = 0.5  # the daemon's readiness: complete and unchanged this long
    startup_timeout_s: float = 300.0  # for the daemon to load its model and start watching
    timeout_s: float = 600.0  # for every scan to be recorded once all are written
    poll_s: float = 0.2  # how often the database is asked for news


@dataclass(frozen=True)
class DemoPaths:
    """Where a demo keeps its things."""

    root: Path
    kept: bool  # False: a temporary folder, removed when the demo ends

    @property
    def watch_dir(self) -> Path:
        return self.root / WATCH_NAME

    @property
    def db_file(self) -> Path:
        return self.root / DB_NAME

    @property
    def log_file(self) -> Path:
        return self.root / LOG_NAME

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_file}"


@dataclass(frozen=True)
class DemoEvent:
    """Something that happened: the daemon started, a scan was written, a scan was recorded
    (``scan`` is its ``scans_report`` row), or the daemon stopped."""

    kind: Literal["started", "written", "recorded", "stopped"]
    elapsed_s: float
    index: int = 0  # 1-based: the n-th scan written / recorded
    total: int = 0
    sample: str | None = None
    path: Path | None = None
    scan: dict[str, Any] | None = None
    model: str | None = None


@dataclass(frozen=True)
class DemoResult:
    """How the session went: the recorded scans, densities per sample, the simulated truth."""

    paths: DemoPaths
    model: str
    written: list[Path]
    scans: list[dict[str, Any]]  # scans_report rows, oldest first
    density: list[SampleDensity]
    truth_per_cm2: dict[str, float]  # visible simulated defects over the acquired area
    seconds: float
    missing: list[Path] = field(default_factory=list)  # written but not recorded in time
    truth_all_per_cm2: dict[str, float] = field(default_factory=dict)  # every simulated defect
    # the visible ones the model reports by its contrast rule (what its densities estimate)
    truth_reported_per_cm2: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.scans if s["status"] == "failed"]


OnEvent = Callable[[DemoEvent], None]


@contextmanager
def demo_folder(outdir: str | Path | None = None, *, keep: bool = False) -> Iterator[DemoPaths]:
    """The demo's folder: ``outdir`` (created; it must be empty) and kept, or a temporary one,
    removed at the end unless ``keep``."""
    if outdir is None:
        root = Path(tempfile.mkdtemp(prefix="defectwatch-demo-"))
        paths = DemoPaths(root.resolve(), kept=keep)
    else:
        root = Path(outdir).expanduser()
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise ConfigError(
                f"{outdir}: not an empty folder; give a new or empty one (the "
                f"demo starts a fresh database there)"
            )
        root.mkdir(parents=True, exist_ok=True)
        paths = DemoPaths(root.resolve(), kept=True)
    try:
        yield paths
    finally:
        if not paths.kept:
            shutil.rmtree(paths.root, ignore_errors=True)


def plan(options: DemoOptions) -> list[tuple[DemoSample, int]]:
    """(sample, seed) of each scan, the samples taken in turn."""
    if options.scans < 1:
        raise ConfigError(f"--scans {options.scans}: need at least 1")
    if not options.samples:
        raise ConfigError("the demo needs at least one sample")
    return [
        (options.samples[k % len(options.samples)], options.seed + k) for k in range(options.scans)
    ]


def run_demo(
    paths: DemoPaths,
    *,
    options: DemoOptions = DemoOptions(),
    model_dir: str | Path | None = None,
    on_event: OnEvent | None = None,
) -> DemoResult:
    """Run the simulated session in ``paths`` (a fresh folder, see `demo_folder`).

    ``model_dir``: a model version directory to register and activate in the demo's database
    (default: whatever ``watch`` uses on a fresh database, the shipped default). Raises
    ModelLoadError / ConfigError when the daemon cannot start.
    """
    started = time.monotonic()
    emit = on_event or (lambda event: None)
    scans = plan(options)
    for sample in {s.name for s, _ in scans}:
        (paths.watch_dir / sample).mkdir(parents=True, exist_ok=True)
    engine = open_database(paths.db_url)
    try:
        if model_dir is not None:
            _activate(engine, Path(model_dir))
        else:
            _check_shipped_model()
        with _daemon_log(paths.log_file):
            daemon = _Daemon(paths, options)
            daemon.start()
            try:
                model = _wait_until_watching(engine, daemon, options)
                emit(DemoEvent("started", time.monotonic() - started, model=model))
                tracker = _Tracker(engine, total=len(scans), started=started, emit=emit)
                written = _acquire(paths, scans, options, tracker, daemon, started, emit)
                missing = tracker.wait(
                    written, timeout_s=options.timeout_s, poll_s=options.poll_s, daemon=daemon
                )
            finally:
                daemon.stop()
            emit(DemoEvent("stopped", time.monotonic() - started))
        rows = list(reversed(scans_report(engine)))
        density = density_report(engine)
    finally:
        engine.dispose()
    marked, every, reported = _truth(rows, _report_rule(model_dir))
    return DemoResult(
        paths=paths,
        model=model,
        written=written,
        scans=rows,
        density=density,
        truth_per_cm2=marked,
        seconds=time.monotonic() - started,
        missing=missing,
        truth_all_per_cm2=every,
        truth_reported_per_cm2=reported,
    )


def _report_rule(model_dir: str | Path | None) -> dict[str, float]:
    """The contrast rule the demo's model reports by (`ModelConfig.report_contrast`; the
    ensemble the daemon loaded, kept resident by `load_ensemble`)."""
    from defectwatch.service.detection import load_ensemble

    return load_ensemble(model_dir).config.report_contrast


def _activate(engine: Engine, directory: Path) -> None:
    """Register ``directory`` in the (fresh) demo database as the active model version."""
    if not (directory / "config.json").is_file():
        raise ConfigError(f"{directory}: not a model version directory (no config.json)")
    with write_transaction(engine) as session:
        register_version(
            model_version_name(directory),
            session=session,
            directory=str(directory.resolve()),
            activate=True,
        )


def _check_shipped_model() -> None:
    """ModelLoadError saying how to get the shipped model when the package lacks it."""
    from defectwatch.models import default_model_dir

    directory = default_model_dir()
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"{directory}: the shipped model is not there; build it with "
            f"`make default-model` (about 1 h on 2 cores) or pass --model DIR"
        )


class _Daemon:
    """``watch`` in a background thread, stopped through its stop event (no signal handlers:
    they belong to the main thread)."""

    def __init__(self, paths: DemoPaths, options: DemoOptions) -> None:
        self.paths = paths
        self.options = WatchOptions(
            recursive=True,
            stable_for_s=options.stable_for_s,
            incomplete_after_s=max(30.0, options.stable_for_s),
            retry_delay_s=1.0,
            max_attempts=3,
            heartbeat_s=1.0,
        )
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, name="defectwatch-demo-daemon", daemon=True
        )

    def _run(self) -> None:
        try:
            watch(
                [self.paths.watch_dir],
                db_url=self.paths.db_url,
                options=self.options,
                stop_event=self.stop_event,
                handle_signals=False,
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def check(self) -> None:
        """Raise what stopped the daemon thread early, if anything did."""
        if self.error is not None:
            raise self.error
        if not self.thread.is_alive() and not self.stop_event.is_set():
            raise DefectwatchError(
                f"the demo's daemon stopped unexpectedly; see {self.paths.log_file}"
            )

    def stop(self, timeout_s: float = 120.0) -> None:
        """Warm stop: the scan under way is finished first."""
        self.stop_event.set()
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            log.warning("the demo's daemon did not stop within %.0f s", timeout_s)


def _wait_until_watching(engine: Engine, daemon: _Daemon, options: DemoOptions) -> str:
    """Wait for the daemon's first heartbeat (model loaded, folders watched); its model."""
    deadline = time.monotonic() + options.startup_timeout_s
    while time.monotonic() < deadline:
        daemon.check()
        s = status_report(engine)
        if s["daemon_alive"]:
            return s["active_model"]["name"] if s["active_model"] else "?"
        time.sleep(options.poll_s)
    raise DefectwatchError(
        f"the demo's daemon did not start within "
        f"{options.startup_timeout_s:.0f} s; see {daemon.paths.log_file}"
    )


class _Tracker:
    """Polls the database and reports each scan the first time it is done or failed."""

    def __init__(self, engine: Engine, *, total: int, started: float, emit: OnEvent) -> None:
        self.engine = engine
        self.total = total
        self.started = started
        self.emit = emit
        self.finished: dict[str, dict[str, Any]] = {}  # path -> row
        self.next_poll = 0.0

    def poll(self, *, force: bool = False, every_s: float = 0.2) -> None:
        now = time.monotonic()
        if not force and now < self.next_poll:
            return
        self.next_poll = now + every_s
        rows = scans_report(self.engine)
        for row in sorted(rows, key=lambda r: r["id"]):
            if row["status"] in ("done", "failed") and row["path"] not in self.finished:
                self.finished[row["path"]] = row
                self.emit(
                    DemoEvent(
                        "recorded",
                        now - self.started,
                        index=len(self.finished),
                        total=self.total,
                        sample=row["sample"],
                        path=Path(row["path"]),
                        scan=row,
                    )
                )

    def wait(
        self, written: Sequence[Path], *, timeout_s: float, poll_s: float, daemon: _Daemon
    ) -> list[Path]:
        """Until every written file is recorded (or ``timeout_s``); those that are not."""
        deadline = time.monotonic() + timeout_s
        wanted = {str(p) for p in written}
        while True:
            self.poll(force=True)
            missing = sorted(wanted - set(self.finished))
            if not missing or time.monotonic() >= deadline:
                return [Path(p) for p in missing]
            daemon.check()
            time.sleep(poll_s)


def _acquire(
    paths: DemoPaths,
    scans: Sequence[tuple[DemoSample, int]],
    options: DemoOptions,
    tracker: _Tracker,
    daemon: _Daemon,
    started: float,
    emit: OnEvent,
) -> list[Path]:
    """Simulate each scan and write it into its sample's folder as the instrument would."""
    staging = paths.root / STAGING_NAME
    written: list[Path] = []
    for k, (sample, seed) in enumerate(scans):
        daemon.check()
        sim = write_simulated_scans(
            staging,
            n=1,
            material=sample.material,
            size_nm=sample.size_nm,
            pixels=sample.pixels,
            density_per_cm2=sample.density_per_cm2,
            seed=seed,
            prefix=f"STM_{sample.name}",
        )[0]
        folder = paths.watch_dir / sample.name
        sim.truth_csv.replace(folder / sim.truth_csv.name)
        target = folder / sim.sxm.name
        _write_in_chunks(
            sim.sxm,
            target,
            seconds=options.write_s,
            chunks=options.chunks,
            between=lambda: tracker.poll(every_s=options.poll_s),
        )
        sim.sxm.unlink()
        written.append(target.resolve())
        emit(
            DemoEvent(
                "written",
                time.monotonic() - started,
                index=k + 1,
                total=len(scans),
                sample=sample.name,
                path=target,
            )
        )
        _sleep_polling(options.gap_s, tracker, options.poll_s)
    shutil.rmtree(staging, ignore_errors=True)
    return written


def _write_in_chunks(
    source: Path, target: Path, *, seconds: float, chunks: int, between: Callable[[], None]
) -> None:
    """Copy ``source`` to ``target`` in ``chunks`` pieces spread over ``seconds``."""
    data = source.read_bytes()
    step = max(1, math.ceil(len(data) / max(1, chunks)))
    pause = seconds / max(1, chunks)
    with open(target, "wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start : start + step])
            fh.flush()
            between()
            time.sleep(pause)


def _sleep_polling(seconds: float, tracker: _Tracker, poll_s: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        tracker.poll(every_s=poll_s)
        time.sleep(min(poll_s, left))


def _truth(
    rows: Sequence[dict[str, Any]], rule: dict[str, float]
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per sample, simulated defects per cm^2 over the recorded scans' acquired area (the truth
    CSV beside each scan, read once): (those a labeller would mark, every one, those a labeller
    would mark that pass the model's report ``rule``)."""
    from defectwatch.pipeline.contrast import marked as passes
    from defectwatch.service.simulation import read_truth_csv

    marked: dict[str, int] = {}
    every: dict[str, int] = {}
    reported: dict[str, int] = {}
    areas: dict[str, float] = {}
    for row in rows:
        csv_path = Path(row["path"]).with_suffix(".csv")
        area = row["acquired_area_nm2"]
        if row["status"] != "done" or not area or not csv_path.is_file():
            continue
        truth = read_truth_csv(csv_path)
        sample = row["sample"] or ""
        marked[sample] = marked.get(sample, 0) + sum(d.visible for d in truth)
        every[sample] = every.get(sample, 0) + len(truth)
        reported[sample] = reported.get(sample, 0) + sum(
            d.visible and passes(d.kind, d.contrast, rule) for d in truth
        )
        areas[sample] = areas.get(sample, 0.0) + area

    def per_cm2(counts: dict[str, int]) -> dict[str, float]:
        return {s: counts[s] / areas[s] * 1e14 for s in counts if areas[s] > 0}

    return per_cm2(marked), per_cm2(every), per_cm2(reported)


@contextmanager
def _daemon_log(log_file: Path) -> Iterator[None]:
    """The daemon's INFO lines go to ``log_file`` only; the handlers already there (the CLI's
    stderr) keep showing warnings and errors."""
    root = logging.getLogger("defectwatch")
    before = root.level
    shown = before or logging.WARNING
    levels = [(h, h.level) for h in root.handlers]
    for handler, level in levels:
        handler.setLevel(max(level, shown))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.handlers.RotatingFileHandler(
        log_file, maxBytes=10 * 1024 * 1024, backupCount=1, encoding="utf-8"
    )
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    to_file.setLevel(min(shown, logging.INFO))
    root.addHandler(to_file)
    root.setLevel(min(shown, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(to_file)
        to_file.close()
        root.setLevel(before)
        for handler, level in levels:
            handler.setLevel(level)
