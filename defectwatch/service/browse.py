"""Use cases behind the web app's pages and /api: the overview, a sample's series, pages of
scans, one scan with its defects. Plain dicts (JSON-ready) out; the web layer renders them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from scipy import stats
from sqlalchemy import Engine

from defectwatch.db import browse
from defectwatch.db.engine import read_transaction
from defectwatch.db.labels import file_name
from defectwatch.db.models import STATUSES, utcnow
from defectwatch.errors import ConfigError, NotFoundError
from defectwatch.pipeline.density import NM2_PER_CM2
from defectwatch.service.queries import defect_row, samples_overview, status_report

KINDS = ("trough", "peak", "total")
MAX_PAGE = 500
PLOT_POINTS = 400  # a sample's series is binned to at most this many points


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _page(limit: int, offset: int) -> tuple[int, int]:
    if not 1 <= limit <= MAX_PAGE:
        raise ConfigError(f"limit {limit}: use 1 to {MAX_PAGE}")
    if offset < 0:
        raise ConfigError(f"offset {offset}: use 0 or more")
    return limit, offset


def _status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise ConfigError(f"status {status!r}: choose {', '.join(STATUSES)}")
    return status


def scan_summary(found: browse.ScanWithRun) -> dict[str, Any]:
    """One scan as the /api/scans list shows it."""
    s, run = found.scan, found.run
    counts = (
        {"trough": run.trough_count, "peak": run.peak_count, "total": run.defect_count}
        if run is not None
        else None
    )
    per = (
        run.defect_count * NM2_PER_CM2 / run.area_nm2
        if run is not None and run.area_nm2 > 0
        else None
    )
    return {
        "id": s.id,
        "file": file_name(s.path),
        "sample": found.sample,
        "status": s.status,
        "counts": counts,
        "density_per_cm2": per,
        "model_version": run.model_version if run is not None else None,
        "run_id": run.id if run is not None else None,
        "seen_at": _iso(s.created_at),
        "recorded_at": _iso(s.recorded_at),
        "last_error": s.last_error,
    }


def status(engine: Engine) -> dict[str, Any]:
    """``status_report`` plus the files waiting (queued / processing, how long) and the newest
    scan and run ids (a page polls them to see that something new was recorded)."""
    report = status_report(engine)
    now = utcnow()
    with read_transaction(engine) as session:
        waiting = browse.waiting_scans(session=session)
        newest_scan, newest_run = browse.newest_ids(session=session)
    report["waiting"] = [
        {
            "id": w.id,
            "file": file_name(w.path),
            "status": w.status,
            "attempts": w.attempts,
            "note": w.last_error,
            "waiting_s": max(0.0, (now - w.created_at).total_seconds()),
        }
        for w in waiting
    ]
    report["newest_scan_id"] = newest_scan
    report["newest_run_id"] = newest_run
    return report


def samples(engine: Engine) -> list[dict[str, Any]]:
    """Every sample (``samples_overview``) with the id of its latest done scan (thumbnail)."""
    rows = samples_overview(engine)
    with read_transaction(engine) as session:
        latest = browse.latest_done_scan_per_sample(session=session)
    for r in rows:
        r["latest_scan_id"] = latest.get(r["sample"]) if r["sample"] is not None else None
    return rows


def scans(
    engine: Engine,
    *,
    sample: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    after_id: int | None = None,
) -> list[dict[str, Any]]:
    """A page of scans, newest first (``after_id``: only newer ones)."""
    limit, offset = _page(limit, offset)
    with read_transaction(engine) as session:
        sid = _sample_id(sample, session=session)
        rows = browse.scans_page(
            session=session,
            sample_id=sid,
            status=_status(status),
            limit=limit,
            offset=offset,
            after_id=after_id,
        )
        return [scan_summary(r) for r in rows]


def _sample_id(name: str | None, *, session: Any) -> int | None:
    if name is None:
        return None
    sid = browse.sample_id(name, session=session)
    if sid is None:
        raise NotFoundError(f"no sample called {name!r}")
    return sid


def scan_detail(engine: Engine, scan_id: int) -> dict[str, Any]:
    """A scan's metadata, its latest run's defects and its saved review (if any)."""
    with read_transaction(engine) as session:
        found = browse.scan_with_run(scan_id, session=session)
        if found is None:
            raise NotFoundError(f"no scan {scan_id} in the database")
        s, run = found.scan, found.run
        defects = browse.run_defects(run.id, session=session) if run is not None else []
        review = browse.review_of(scan_id, session=session)
        out = scan_summary(found)
        out.update(
            {
                "path": s.path,
                "instrument": s.instrument,
                "channel": s.channel,
                "nx": s.nx,
                "ny": s.ny,
                "width_nm": s.width_nm,
                "height_nm": s.height_nm,
                "pixel_size_nm": [s.pixel_size_x_nm, s.pixel_size_y_nm],
                "angle_deg": s.angle_deg,
                "bias_v": s.bias_v,
                "setpoint_a": s.setpoint_a,
                "constant_height": s.constant_height,
                "temperature_k": s.temperature_k,
                "acquired_fraction": s.acquired_fraction,
                "acquired_area_nm2": s.acquired_area_nm2,
                "scan_dir": s.scan_dir,
                "comment": s.comment,
                "attempts": s.attempts,
                "seconds": run.seconds if run is not None else None,
                "finished_at": _iso(run.finished_at) if run is not None else None,
                "uncertainty_sum": run.uncertainty_sum if run is not None else None,
                "near_threshold_nm2": run.near_threshold_nm2 if run is not None else None,
                "defects": [{"id": d.id, **defect_row(d)} for d in defects],
                "review": None
                if review is None
                else {
                    "exhaustive": bool(review[0].exhaustive),
                    "saved_at": _iso(review[0].updated_at),
                    "labels": [
                        {"row": lab.row, "col": lab.col, "kind": lab.kind} for lab in review[1]
                    ],
                },
            }
        )
        return out


def _ci95(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Poisson 95% intervals of an array of counts (vectorised ``poisson_ci95``)."""
    counts = np.asarray(counts, float)
    low = np.where(counts > 0, stats.chi2.ppf(0.025, 2 * np.maximum(counts, 1)) / 2, 0.0)
    high = stats.chi2.ppf(0.975, 2 * counts + 2) / 2
    return low, high


def sample_detail(engine: Engine, name: str, *, limit: int = 60, offset: int = 0) -> dict[str, Any]:
    """A sample: its densities (as ``samples``), its series of per-scan densities with the
    running estimate and its 95% interval (binned to at most ``PLOT_POINTS`` points), and a
    page of its scans (newest first)."""
    limit, offset = _page(limit, offset)
    with read_transaction(engine) as session:
        sid = _sample_id(name, session=session)
        assert sid is not None
        series = browse.sample_series(sid, session=session)
        total = browse.count_scans(session=session, sample_id=sid)
        page = [
            scan_summary(r)
            for r in browse.scans_page(session=session, sample_id=sid, limit=limit, offset=offset)
        ]
    overview = next(iter(samples_overview(engine, [name])), None)
    return {
        "sample": name,
        "overview": overview,
        "scans_total": total,
        "scans": page,
        "limit": limit,
        "offset": offset,
        "series": _series(series),
    }


def _series(points: list[browse.SeriesPoint]) -> dict[str, Any]:
    """Per-scan (or per-bin) densities and the running estimate with its interval, per kind."""
    if not points:
        return {"n": 0, "binned": False, "x": [], "scan_ids": [], "kinds": {}}
    area = np.array([p.area_nm2 for p in points])
    counts = {
        "trough": np.array([p.trough for p in points], float),
        "peak": np.array([p.peak for p in points], float),
        "total": np.array([p.total for p in points], float),
    }
    n = len(points)
    edges = np.linspace(0, n, min(n, PLOT_POINTS) + 1).round().astype(int)
    ends = edges[1:] - 1  # the last scan of each bin
    bin_area = np.add.reduceat(area, edges[:-1])
    cum_area = np.cumsum(area)[ends]
    kinds: dict[str, Any] = {}
    for k, c in counts.items():
        per_bin = np.add.reduceat(c, edges[:-1])
        cum = np.cumsum(c)[ends]
        low, high = _ci95(cum)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale_bin = np.where(bin_area > 0, NM2_PER_CM2 / bin_area, np.nan)
            scale_cum = np.where(cum_area > 0, NM2_PER_CM2 / cum_area, np.nan)
        kinds[k] = {
            "density_per_cm2": _floats(per_bin * scale_bin),
            "running_per_cm2": _floats(cum * scale_cum),
            "running_ci95_per_cm2": [_floats(low * scale_cum), _floats(high * scale_cum)],
        }
    return {
        "n": n,
        "binned": n > PLOT_POINTS,
        "x": [int(e) + 1 for e in ends],
        "scan_ids": [points[e].scan_id for e in ends],
        "kinds": kinds,
    }


def _floats(a: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in a]
