"""Use cases: answering questions from the record (densities per sample, scans, defects, status).

Densities are area-weighted over a sample's done scans: all defects of each scan's latest run
over the sum of their acquired areas (= the area-weighted mean of the per-scan densities). The
count is corrected by the detector's calibration (precision / recall per kind, measured on
simulated validation scans or on the record's reviewed scans; `service.calibration`) with a 95%
interval that holds both the counting noise and the calibration's uncertainty
(`pipeline.calibration`); a version without a calibration reports the detected count with its
exact Poisson interval ("uncalibrated"). Plain dicts and dataclasses out; the CLI renders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePath
from typing import Any

from sqlalchemy import Engine

from defectwatch.db import heartbeat as hb
from defectwatch.db import queries as q
from defectwatch.db.engine import read_transaction, write_transaction
from defectwatch.db.models import DetectionRun, ScanRow
from defectwatch.db.records import rename_sample
from defectwatch.db.registry import active_version
from defectwatch.domain import DEFECT_TABLE_COLUMNS
from defectwatch.errors import ConfigError, NotFoundError
from defectwatch.pipeline.calibration import Calibration, corrected_interval
from defectwatch.pipeline.density import NM2_PER_CM2, density

KINDS = ("trough", "peak", "total")
UNCALIBRATED = "uncalibrated"


@dataclass(frozen=True)
class SampleDensity:
    """One sample's defect densities per kind (per cm^2) over its done scans.

    ``density_per_cm2`` / ``ci95_per_cm2``: the count corrected by the detector's calibration
    (`pipeline.calibration`) and its 95% interval (counting noise and calibration uncertainty);
    ``raw_density_per_cm2``: the detected count over the area; ``calibration``: which
    calibration corrected it ("uncalibrated": none, the raw count with its Poisson interval).
    """

    sample: str | None
    scans: int  # done scans counted
    area_nm2: float
    counts: dict[str, int]
    density_per_cm2: dict[str, float]
    ci95_per_cm2: dict[str, tuple[float, float]]
    raw_density_per_cm2: dict[str, float] = field(default_factory=dict)
    calibration: str = UNCALIBRATED

    @property
    def corrected(self) -> bool:
        return self.calibration != UNCALIBRATED

    def to_json(self) -> dict[str, Any]:
        """The ``density --json`` object (ci95 values as [low, high])."""
        return {
            "sample": self.sample,
            "scans": self.scans,
            "area_nm2": self.area_nm2,
            "counts": dict(self.counts),
            "density_per_cm2": dict(self.density_per_cm2),
            "ci95_per_cm2": {k: [lo, hi] for k, (lo, hi) in self.ci95_per_cm2.items()},
            "raw_density_per_cm2": dict(self.raw_density_per_cm2),
            "calibration": self.calibration,
        }


class _Calibrations:
    """Which calibration corrects the scans one version counted in one sample: the reviewed
    scans of the active version (leaving the sample's own out) when there are enough, else the
    version's own (config.json), else none."""

    def __init__(self, session: Any, versions: Sequence[str]) -> None:
        from defectwatch.service.calibration import (
            read_calibration,
            reviewed_scans,
            version_directories,
        )

        active = active_version(session=session)
        self.active = active.name if active else None
        dirs = version_directories(versions, session=session)
        self.own = {v: read_calibration(d) for v, d in dirs.items()}
        self.reviewed = (
            reviewed_scans(session=session, version=self.active)
            if self.active is not None and self.active in versions
            else []
        )

    def for_group(
        self, sample: str | None, version: str, channel: str | None = None
    ) -> Calibration | None:
        """The reviewed calibration (any channel) where there is one, else the version's own
        for the scans' ``channel`` (current maps have their own: `Calibration.for_channel`)."""
        from defectwatch.service.calibration import reviewed_calibration

        if version == self.active and self.reviewed:
            found = reviewed_calibration(self.reviewed, version=version, exclude_sample=sample)
            if found is not None:
                return found
        own = self.own.get(version)
        return own.for_channel(channel) if own is not None else None


def defect_row(d: Any) -> dict[str, Any]:
    """One recorded defect (``x_nm, y_nm, kind, ...`` attributes) as a table row: the
    columns of `domain.DEFECT_TABLE_COLUMNS`, in that order."""
    return {c: getattr(d, c) for c in DEFECT_TABLE_COLUMNS}


def _density(
    t: q.SampleTotals,
    groups: Sequence[q.VersionTotals] = (),
    calibrations: _Calibrations | None = None,
) -> SampleDensity:
    counts = {"trough": t.trough, "peak": t.peak, "total": t.total}
    per = {k: density(n, t.area_nm2, kind=k) for k, n in counts.items()}
    raw = {k: d.per_cm2 for k, d in per.items()}
    used = [
        (g, calibrations.for_group(t.sample, g.model_version, g.channel) if calibrations else None)
        for g in groups
    ]
    if t.area_nm2 <= 0 or not any(cal is not None for _, cal in used):
        return SampleDensity(
            sample=t.sample,
            scans=t.counted,
            area_nm2=t.area_nm2,
            counts=counts,
            density_per_cm2=raw,
            ci95_per_cm2={k: (d.ci95_low_per_cm2, d.ci95_high_per_cm2) for k, d in per.items()},
            raw_density_per_cm2=dict(raw),
            calibration=UNCALIBRATED,
        )
    estimates = corrected_interval(
        [
            (
                {"trough": g.trough, "peak": g.peak},
                {k: (cal.kinds.get(k) if cal is not None else None) for k in ("trough", "peak")},
            )
            for g, cal in used
        ]
    )
    scale = NM2_PER_CM2 / t.area_nm2
    names = []
    for g, cal in used:
        name = cal.description if cal is not None else f"uncalibrated ({g.model_version})"
        if name not in names:
            names.append(name)
    return SampleDensity(
        sample=t.sample,
        scans=t.counted,
        area_nm2=t.area_nm2,
        counts=counts,
        density_per_cm2={k: e.count * scale for k, e in estimates.items()},
        ci95_per_cm2={k: (e.low * scale, e.high * scale) for k, e in estimates.items()},
        raw_density_per_cm2=raw,
        calibration="; ".join(names),
    )


def _densities(
    session: Any,
    totals: Sequence[q.SampleTotals],
    samples: Sequence[str] | None = None,
    *,
    instrument: str | None = None,
) -> list[SampleDensity]:
    groups: dict[str | None, list[q.VersionTotals]] = {}
    for g in q.sample_version_totals(session=session, samples=samples, instrument=instrument):
        groups.setdefault(g.sample, []).append(g)
    versions = sorted({g.model_version for gs in groups.values() for g in gs})
    calibrations = _Calibrations(session, versions) if versions else None
    return [_density(t, groups.get(t.sample, ()), calibrations) for t in totals]


def _check_samples(names: Sequence[str], *, session: Any) -> None:
    known = set(q.sample_names(session=session))
    missing = [n for n in names if n not in known]
    if missing:
        shown = ", ".join(sorted(known)[:20]) or "none yet"
        raise NotFoundError(f"no sample called {', '.join(map(repr, missing))} (known: {shown})")


#: the columns of one density row (`density_rows`): ``density --csv`` and the Python API's
#: ``Record.density`` frame
DENSITY_COLUMNS = (
    "sample",
    "kind",
    "scans",
    "defects",
    "area_nm2",
    "density_per_cm2",
    "ci95_low_per_cm2",
    "ci95_high_per_cm2",
    "raw_density_per_cm2",
    "calibration",
)


def density_rows(report: Sequence[SampleDensity]) -> list[dict[str, Any]]:
    """``report`` as one row per sample and kind (``trough``, ``peak``, ``total``), keyed by
    `DENSITY_COLUMNS`: densities in defects per cm^2 (corrected, its 95% interval, detected),
    area in nm^2."""
    return [
        {
            "sample": r.sample,
            "kind": k,
            "scans": r.scans,
            "defects": r.counts[k],
            "area_nm2": r.area_nm2,
            "density_per_cm2": r.density_per_cm2[k],
            "ci95_low_per_cm2": r.ci95_per_cm2[k][0],
            "ci95_high_per_cm2": r.ci95_per_cm2[k][1],
            "raw_density_per_cm2": r.raw_density_per_cm2[k],
            "calibration": r.calibration,
        }
        for r in report
        for k in KINDS
    ]


def density_report(
    engine: Engine, samples: Sequence[str] | None = None, *, instrument: str | None = None
) -> list[SampleDensity]:
    """Densities of the named samples (NotFoundError for an unknown name), or of every sample
    with at least one done scan; with ``instrument``, over that instrument's scans only."""
    with read_transaction(engine) as session:
        if samples:
            _check_samples(samples, session=session)
        if instrument is not None:
            _check_instrument(instrument, session=session)
        totals = q.sample_totals(session=session, samples=samples or None, instrument=instrument)
        if samples:
            order = {name: i for i, name in enumerate(samples)}
            totals = sorted(totals, key=lambda t: order.get(t.sample or "", 0))
        else:
            totals = [t for t in totals if t.counted]
        return _densities(session, totals, samples or None, instrument=instrument)


def samples_overview(
    engine: Engine, samples: Sequence[str] | None = None, *, instrument: str | None = None
) -> list[dict[str, Any]]:
    """Every sample, or those named (with ``instrument``: every sample it scanned, over its
    scans only): scans by status, scanned area, latest scan, densities."""
    with read_transaction(engine) as session:
        if instrument is not None:
            _check_instrument(instrument, session=session)
        totals = q.sample_totals(session=session, samples=samples, instrument=instrument)
        dens = _densities(session, totals, samples, instrument=instrument)
    out = []
    for t, d in zip(totals, dens):
        out.append(
            {
                "sample": t.sample,
                "scans": t.scans,
                "done": t.done,
                "failed": t.failed,
                "pending": t.pending,
                "area_nm2": t.area_nm2,
                "latest_seen_at": _iso(t.latest_seen_at),
                "latest_path": t.latest_path,
                "counts": d.counts,
                "density_per_cm2": d.density_per_cm2,
                "ci95_per_cm2": {k: list(v) for k, v in d.ci95_per_cm2.items()},
                "raw_density_per_cm2": d.raw_density_per_cm2,
                "calibration": d.calibration,
            }
        )
    return out


def rename(engine: Engine, old: str, new: str) -> str:
    """Rename sample ``old`` to ``new`` (merging into ``new`` when it exists); what happened."""
    with write_transaction(engine) as session:
        return rename_sample(old, new, session=session)


def scans_report(
    engine: Engine,
    *,
    sample: str | None = None,
    status: str | None = None,
    limit: int | None = None,
    instrument: str | None = None,
) -> list[dict[str, Any]]:
    """Scans, newest first, with sample, status, metadata and their latest run's counts."""
    if status is not None and status not in ("queued", "processing", "done", "failed"):
        raise ConfigError(f"--status {status!r}: choose queued, processing, done or failed")
    with read_transaction(engine) as session:
        if sample is not None:
            _check_samples([sample], session=session)
        if instrument is not None:
            _check_instrument(instrument, session=session)
        rows = q.list_scans(
            session=session, sample=sample, status=status, limit=limit, instrument=instrument
        )
        return [_scan_json(s, sample_name, run) for s, sample_name, run in rows]


def _scan_json(s: ScanRow, sample_name: str | None, run: DetectionRun | None) -> dict[str, Any]:
    total = density(run.defect_count, run.area_nm2) if run else None
    return {
        "id": s.id,
        "path": s.path,
        "file": PurePath(s.path).name,
        "sample": sample_name,
        "instrument": s.instrument,
        "status": s.status,
        "attempts": s.attempts,
        "last_error": s.last_error,
        "recorded_at": _iso(s.recorded_at),
        "seen_at": _iso(s.created_at),
        "nx": s.nx,
        "ny": s.ny,
        "width_nm": s.width_nm,
        "height_nm": s.height_nm,
        "bias_v": s.bias_v,
        "setpoint_a": s.setpoint_a,
        "acquired_fraction": s.acquired_fraction,
        "acquired_area_nm2": s.acquired_area_nm2,
        "model_version": run.model_version if run else None,
        "counts": (
            {"trough": run.trough_count, "peak": run.peak_count, "total": run.defect_count}
            if run
            else None
        ),
        "density_per_cm2": total.per_cm2 if total else None,
        "seconds": run.seconds if run else None,
    }


def defects_report(engine: Engine, scan_ref: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(scan, its latest run's defects) for ``scan_ref``: an id, a path or a file name."""
    with read_transaction(engine) as session:
        matches = q.find_scans(scan_ref, session=session)
        if not matches:
            raise NotFoundError(
                f"no scan {scan_ref!r} in the database (an id, a path or a file "
                f"name; see `defectwatch scans`)"
            )
        if len(matches) > 1:
            ids = ", ".join(f"{m.id} ({m.path})" for m in matches[:10])
            raise ConfigError(
                f"{scan_ref!r} matches {len(matches)} scans: {ids}; pass an id or the full path"
            )
        s = matches[0]
        run = q.latest_run(s.id, session=session)
        defects = q.run_defects(run.id, session=session) if run else []
        info = {
            "id": s.id,
            "path": s.path,
            "status": s.status,
            "sample": s.sample.name if s.sample else None,
            "model_version": run.model_version if run else None,
            "run_id": run.id if run else None,
        }
        rows = [defect_row(d) for d in defects]
    return info, rows


def status_report(engine: Engine, *, alive_within_s: float = 60.0) -> dict[str, Any]:
    """Daemon liveness, queue depth, last scan processed, failures, active model."""
    with read_transaction(engine) as session:
        counts = q.status_counts(session=session)
        daemons = hb.alive(session=session, within_s=alive_within_s)
        instruments = _daemons_per_instrument(
            hb.latest_per_daemon(session=session), alive={d.id for d in daemons}
        )
        last_beat = hb.last_beat(session=session)
        last = q.last_processed(session=session)
        failures = q.recent_failures(session=session, limit=5)
        model = active_version(session=session)
        return {
            "daemon_alive": bool(daemons),
            "daemons": [
                {
                    "host": d.host,
                    "pid": d.pid,
                    "started_at": _iso(d.started_at),
                    "beat_at": _iso(d.beat_at),
                    "instrument": d.instrument,
                }
                for d in daemons
            ],
            "instruments": instruments,
            "last_beat_at": _iso(last_beat.beat_at) if last_beat else None,
            "queue_depth": counts["queued"] + counts["processing"],
            "status_counts": counts,
            "last_processed": (
                {
                    "id": last[0].id,
                    "path": last[0].path,
                    "finished_at": _iso(last[1].finished_at),
                    "defects": last[1].defect_count,
                    "model_version": last[1].model_version,
                }
                if last
                else None
            ),
            "failures": counts["failed"],
            "recent_failures": [
                {"id": f.id, "path": f.path, "error": f.last_error} for f in failures
            ],
            "active_model": ({"name": model.name, "directory": model.directory} if model else None),
            "last_retrain": _last_retrain(session),
        }


def _check_instrument(name: str, *, session: Any) -> None:
    known = q.instrument_names(session=session)
    if name not in known:
        shown = ", ".join(known[:20]) or "none yet"
        raise NotFoundError(f"no scan recorded for instrument {name!r} (known: {shown})")


def _daemons_per_instrument(rows: Sequence[Any], *, alive: set[int]) -> list[dict[str, Any]]:
    """Per instrument (sorted; None = daemons from before instruments were recorded): whether
    a daemon is alive, and each daemon's latest heartbeat that is alive or the newest one."""
    out: dict[str | None, dict[str, Any]] = {}
    for d in rows:  # newest first
        entry = out.setdefault(
            d.instrument,
            {
                "instrument": d.instrument,
                "alive": False,
                "last_beat_at": _iso(d.beat_at),
                "daemons": [],
            },
        )
        is_alive = d.id in alive
        if is_alive or not entry["daemons"]:
            entry["daemons"].append(
                {
                    "host": d.host,
                    "pid": d.pid,
                    "alive": is_alive,
                    "started_at": _iso(d.started_at),
                    "beat_at": _iso(d.beat_at),
                    "stopped_at": _iso(d.stopped_at),
                }
            )
        entry["alive"] |= is_alive
    return sorted(out.values(), key=lambda e: (e["instrument"] is None, e["instrument"] or ""))


def _last_retrain(session: Any) -> dict[str, Any] | None:
    """The latest `defectwatch retrain` run: when, outcome, version, reason (None: never)."""
    from defectwatch.db.retrain_runs import list_runs

    runs = list_runs(session=session, limit=1)
    if not runs:
        return None
    r = runs[0]
    return {
        "started_at": _iso(r.started_at),
        "outcome": r.outcome,
        "version": r.version,
        "parent": r.parent,
        "reason": r.reason,
        "seconds": r.seconds,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
