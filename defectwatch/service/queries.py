"""Use cases: answering questions from the record (densities per sample, scans, defects, status).

Densities are area-weighted over a sample's done scans: all defects of each scan's latest run
over the sum of their acquired areas (= the area-weighted mean of the per-scan densities), with
an exact 95% Poisson interval on the summed count. Plain dicts and dataclasses out; the CLI
renders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
from defectwatch.errors import ConfigError, NotFoundError
from defectwatch.pipeline.density import density

KINDS = ("trough", "peak", "total")


@dataclass(frozen=True)
class SampleDensity:
    """One sample's defect densities per kind (per cm^2) over its done scans."""

    sample: str | None
    scans: int  # done scans counted
    area_nm2: float
    counts: dict[str, int]
    density_per_cm2: dict[str, float]
    ci95_per_cm2: dict[str, tuple[float, float]]

    def to_json(self) -> dict[str, Any]:
        """The ``density --json`` object (ci95 values as [low, high])."""
        return {"sample": self.sample, "scans": self.scans, "area_nm2": self.area_nm2,
                "counts": dict(self.counts), "density_per_cm2": dict(self.density_per_cm2),
                "ci95_per_cm2": {k: [lo, hi] for k, (lo, hi) in self.ci95_per_cm2.items()}}


def _density(t: q.SampleTotals) -> SampleDensity:
    counts = {"trough": t.trough, "peak": t.peak, "total": t.total}
    per = {k: density(n, t.area_nm2, kind=k) for k, n in counts.items()}
    return SampleDensity(
        sample=t.sample, scans=t.counted, area_nm2=t.area_nm2, counts=counts,
        density_per_cm2={k: d.per_cm2 for k, d in per.items()},
        ci95_per_cm2={k: (d.ci95_low_per_cm2, d.ci95_high_per_cm2) for k, d in per.items()})


def _check_samples(names: Sequence[str], *, session: Any) -> None:
    known = set(q.sample_names(session=session))
    missing = [n for n in names if n not in known]
    if missing:
        shown = ", ".join(sorted(known)[:20]) or "none yet"
        raise NotFoundError(f"no sample called {', '.join(map(repr, missing))} "
                            f"(known: {shown})")


def density_report(engine: Engine, samples: Sequence[str] | None = None
                   ) -> list[SampleDensity]:
    """Densities of the named samples (NotFoundError for an unknown name), or of every sample
    with at least one done scan."""
    with read_transaction(engine) as session:
        if samples:
            _check_samples(samples, session=session)
        totals = q.sample_totals(session=session, samples=samples or None)
    if samples:
        order = {name: i for i, name in enumerate(samples)}
        return [_density(t) for t in sorted(totals, key=lambda t: order.get(t.sample or "", 0))]
    return [_density(t) for t in totals if t.counted]


def samples_overview(engine: Engine) -> list[dict[str, Any]]:
    """Every sample: scans by status, scanned area, latest scan, densities."""
    with read_transaction(engine) as session:
        totals = q.sample_totals(session=session)
    out = []
    for t in totals:
        d = _density(t)
        out.append({"sample": t.sample, "scans": t.scans, "done": t.done, "failed": t.failed,
                    "pending": t.pending, "area_nm2": t.area_nm2,
                    "latest_seen_at": _iso(t.latest_seen_at), "latest_path": t.latest_path,
                    "counts": d.counts, "density_per_cm2": d.density_per_cm2,
                    "ci95_per_cm2": {k: list(v) for k, v in d.ci95_per_cm2.items()}})
    return out


def rename(engine: Engine, old: str, new: str) -> str:
    """Rename sample ``old`` to ``new`` (merging into ``new`` when it exists); what happened."""
    with write_transaction(engine) as session:
        return rename_sample(old, new, session=session)


def scans_report(engine: Engine, *, sample: str | None = None, status: str | None = None,
                 limit: int | None = None) -> list[dict[str, Any]]:
    """Scans, newest first, with sample, status, metadata and their latest run's counts."""
    if status is not None and status not in ("queued", "processing", "done", "failed"):
        raise ConfigError(f"--status {status!r}: choose queued, processing, done or failed")
    with read_transaction(engine) as session:
        if sample is not None:
            _check_samples([sample], session=session)
        rows = q.list_scans(session=session, sample=sample, status=status, limit=limit)
        return [_scan_json(s, sample_name, run) for s, sample_name, run in rows]


def _scan_json(s: ScanRow, sample_name: str | None, run: DetectionRun | None
               ) -> dict[str, Any]:
    total = density(run.defect_count, run.area_nm2) if run else None
    return {
        "id": s.id, "path": s.path, "file": PurePath(s.path).name, "sample": sample_name,
        "status": s.status, "attempts": s.attempts, "last_error": s.last_error,
        "recorded_at": _iso(s.recorded_at), "seen_at": _iso(s.created_at),
        "nx": s.nx, "ny": s.ny, "width_nm": s.width_nm, "height_nm": s.height_nm,
        "bias_v": s.bias_v, "setpoint_a": s.setpoint_a,
        "acquired_fraction": s.acquired_fraction, "acquired_area_nm2": s.acquired_area_nm2,
        "model_version": run.model_version if run else None,
        "counts": ({"trough": run.trough_count, "peak": run.peak_count,
                    "total": run.defect_count} if run else None),
        "density_per_cm2": total.per_cm2 if total else None,
        "seconds": run.seconds if run else None}


def defects_report(engine: Engine, scan_ref: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(scan, its latest run's defects) for ``scan_ref``: an id, a path or a file name."""
    with read_transaction(engine) as session:
        matches = q.find_scans(scan_ref, session=session)
        if not matches:
            raise NotFoundError(f"no scan {scan_ref!r} in the database (an id, a path or a file "
                                f"name; see `defectwatch scans`)")
        if len(matches) > 1:
            ids = ", ".join(f"{m.id} ({m.path})" for m in matches[:10])
            raise ConfigError(f"{scan_ref!r} matches {len(matches)} scans: {ids}; "
                              f"pass an id or the full path")
        s = matches[0]
        run = q.latest_run(s.id, session=session)
        defects = q.run_defects(run.id, session=session) if run else []
        info = {"id": s.id, "path": s.path, "status": s.status,
                "sample": s.sample.name if s.sample else None,
                "model_version": run.model_version if run else None,
                "run_id": run.id if run else None}
        rows = [{"row": d.row, "col": d.col, "x_nm": d.x_nm, "y_nm": d.y_nm, "kind": d.kind,
                 "confidence": d.confidence, "uncertainty": d.uncertainty,
                 "area_nm2": d.area_nm2, "contrast": d.contrast} for d in defects]
    return info, rows


def status_report(engine: Engine, *, alive_within_s: float = 60.0) -> dict[str, Any]:
    """Daemon liveness, queue depth, last scan processed, failures, active model."""
    with read_transaction(engine) as session:
        counts = q.status_counts(session=session)
        daemons = hb.alive(session=session, within_s=alive_within_s)
        last_beat = hb.last_beat(session=session)
        last = q.last_processed(session=session)
        failures = q.recent_failures(session=session, limit=5)
        model = active_version(session=session)
        return {
            "daemon_alive": bool(daemons),
            "daemons": [{"host": d.host, "pid": d.pid, "started_at": _iso(d.started_at),
                         "beat_at": _iso(d.beat_at)} for d in daemons],
            "last_beat_at": _iso(last_beat.beat_at) if last_beat else None,
            "queue_depth": counts["queued"] + counts["processing"],
            "status_counts": counts,
            "last_processed": ({"id": last[0].id, "path": last[0].path,
                                "finished_at": _iso(last[1].finished_at),
                                "defects": last[1].defect_count,
                                "model_version": last[1].model_version} if last else None),
            "failures": counts["failed"],
            "recent_failures": [{"id": f.id, "path": f.path, "error": f.last_error}
                                for f in failures],
            "active_model": ({"name": model.name, "directory": model.directory}
                             if model else None),
            "last_retrain": _last_retrain(session),
        }


def _last_retrain(session: Any) -> dict[str, Any] | None:
    """The latest `defectwatch retrain` run: when, outcome, version, reason (None: never)."""
    from defectwatch.db.retrain_runs import list_runs

    runs = list_runs(session=session, limit=1)
    if not runs:
        return None
    r = runs[0]
    return {"started_at": _iso(r.started_at), "outcome": r.outcome, "version": r.version,
            "parent": r.parent, "reason": r.reason, "seconds": r.seconds}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
