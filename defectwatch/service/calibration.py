"""Use cases: measure a model version's calibration, and find the one that corrects a count.

Two sources, per model version (`pipeline.calibration` has the statistics):

- **simulated validation** (`simulated_calibration`): the version runs on simulated scans that
  are neither training (seeds >= 1e6) nor the threshold validation (seeds 200-253) nor the
  README's test seeds (0-19, 900-912): seeds 300-323 in the settings of `CALIBRATION_SETS`
  (44 scans; `CALIBRATION_SETS_BROAD` adds 12 widened ones, seeds 324-335). The
  truth is every simulated defect a labeller would mark (`TruthDefect.visible`), so recall
  includes what the version's report rule (`ModelConfig.report_contrast`) leaves out. Written
  into the version's config.json (``calibration``) by ``python -m
  defectwatch.service.calibration VERSION_DIR``. C-AFM current maps get their own
  (``by_channel``, `CALIBRATION_SETS_BY_CHANNEL`: 16 maps, seeds 300-315).
- **reviewed scans** (`reviewed_calibration`): scans in the record that a person labelled
  exhaustively (label sets with the exhaustive flag from a label file or a review; not the
  ``accepted`` sets, which are the detections themselves and cannot show a miss), whose latest
  run came from the version. Held out: a sample's density is never corrected with labels of
  its own scans (scans of one sample share tip and crystal, so the sample, not the scan, is the
  unit left out). Used once at least `MIN_REVIEWED_SCANS` such scans remain.

`calibrate` measures any version on any labelled cases (a retrain can call it on a candidate
with the record's reviewed scans before it activates it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectwatch.pipeline.calibration import (
    KINDS,
    Calibration,
    CalibrationCounter,
    KindCalibration,
    ScanCounts,
    pooled,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

MIN_REVIEWED_SCANS = 3
# labels a person did not draw: accepting a scan's detections copies them (no miss can show)
NOT_INDEPENDENT_SOURCES = ("accepted",)
# simulated calibration scans: (settings for `simulate`, seeds); disjoint from training
# (>= 1e6), threshold validation (200-235) and the test seeds (0-19, 900-912)
CALIBRATION_SETS: tuple[tuple[dict[str, Any], range], ...] = (
    ({"material": "wse2", "size_nm": 50.0, "pixels": 512}, range(300, 316)),
    ({"material": "wse2", "size_nm": 25.0, "pixels": 512}, range(300, 308)),
    ({"material": "mose2", "size_nm": 50.0, "pixels": 512}, range(300, 308)),
    ({"material": "wse2", "size_nm": 50.0, "pixels": 512, "clusters": True}, range(316, 324)),
    ({"material": "wse2", "size_nm": 100.0, "pixels": 1024}, range(300, 304)),
)
# the shipped default (default-sim-8 and -9) is also calibrated on WSe2 50 nm scans widened by
# every broadened family at once (56 scans)
CALIBRATION_SETS_BROAD = (
    *CALIBRATION_SETS,
    ({"material": "wse2", "size_nm": 50.0, "pixels": 512, "broad": True}, range(324, 336)),
)
# C-AFM current maps are calibrated apart (their own threshold; no contrast rule): seeds
# 300-315, disjoint from their threshold validation (200-215) and the test seeds
CALIBRATION_SETS_BY_CHANNEL: dict[str, tuple[tuple[dict[str, Any], range], ...]] = {
    "Current": (({"mode": "cafm", "size_nm": 100.0, "pixels": 512}, range(300, 316)),),
}


def describe_sets(sets: Sequence[tuple[Mapping[str, Any], range]]) -> list[str]:
    """One line per (kwargs for `simulate`, seeds) set: ``"k=v ...: seeds a-b"``."""
    out = []
    for kwargs, seeds in sets:
        what = " ".join(f"{k}={v}" for k, v in kwargs.items())
        out.append(f"{what}: seeds {seeds.start}-{seeds.stop - 1}")
    return out


def calibrate(
    ensemble: Any,
    cases: Iterable[Any],
    *,
    source: str,
    description: str,
    data: Mapping[str, Any] | None = None,
    threshold: float | None = None,
    radius_nm: float = 1.0,
    on_progress: Progress | None = None,
    n_cases: int | None = None,
) -> Calibration:
    """Measure ``ensemble``'s calibration on labelled ``cases`` (`evaluation.Case`: a scan and
    its labels in nm; labels marked not visible are "don't care").

    Each scan is detected as the daemon would (the version's threshold for its channel and its
    report rule) and matched one-to-one within ``radius_nm`` to its labels.
    """
    counter = CalibrationCounter(kinds=KINDS, radius_nm=radius_nm)
    for i, case in enumerate(cases):
        prediction = ensemble.predict_scan(case.scan)
        thr = (
            threshold if threshold is not None else ensemble.config.threshold_for(case.scan.channel)
        )
        counter.add(prediction.defects(threshold=thr), case.labels, name=case.name)
        if on_progress:
            on_progress(i + 1, n_cases or 0)
    return counter.result(source=source, description=description, data=dict(data or {}))


def _offset(
    on_progress: Callable[[int, int], None] | None, base: int, total: int
) -> Callable[[int, int], None] | None:
    """``on_progress`` of one set inside several: (done in the set, set size) -> (base + done,
    total)."""
    if on_progress is None:
        return None
    report = on_progress
    return lambda done, _n: report(base + done, total)


def simulated_calibration(
    directory: Path,
    *,
    sets=CALIBRATION_SETS,
    channel_sets: Mapping[str, Sequence[Any]] | None = None,
    on_progress: Progress | None = None,
) -> Calibration:
    """The version in ``directory`` calibrated on the simulated calibration scans (`sets`);
    ``data.by_set`` keeps each set's own recall and precision per kind. Each channel of
    ``channel_sets`` (default `CALIBRATION_SETS_BY_CHANNEL`: C-AFM current maps) gets its own
    calibration, measured on its own scans (``by_channel``)."""
    from defectwatch.pipeline.inference import Ensemble

    ensemble = Ensemble.load(directory, device="cpu")
    channel_sets = CALIBRATION_SETS_BY_CHANNEL if channel_sets is None else channel_sets
    n = sum(len(seeds) for _, seeds in sets)
    total = n + sum(len(seeds) for cs in channel_sets.values() for _, seeds in cs)
    topography = _pooled_calibration(
        ensemble,
        sets,
        description=f"simulated validation, {ensemble.version}, {n} scans",
        note="simulated STM topography; seeds disjoint from training, threshold validation "
        "and test",
        on_progress=_offset(on_progress, 0, total),
    )
    done = n
    for channel, csets in channel_sets.items():
        m = sum(len(seeds) for _, seeds in csets)
        topography.by_channel[channel] = _pooled_calibration(
            ensemble,
            csets,
            description=f"simulated validation, {ensemble.version}, {m} {channel} maps",
            note=f"simulated {channel} maps (C-AFM); seeds disjoint from training, threshold "
            "validation and test",
            on_progress=_offset(on_progress, done, total),
        )
        done += m
    return topography


def _pooled_calibration(
    ensemble: Any,
    sets: Sequence[Any],
    *,
    description: str,
    note: str,
    on_progress: Progress | None,
) -> Calibration:
    """One calibration pooled over the scans of ``sets``, each set's own figures kept."""
    from defectwatch.service.evaluation import simulated_cases

    n = sum(len(seeds) for _, seeds in sets)
    pooled_counter = CalibrationCounter(kinds=KINDS)
    by_set: dict[str, Any] = {}
    done = 0
    for (kwargs, seeds), name in zip(sets, describe_sets(sets)):
        part = calibrate(
            ensemble,
            simulated_cases(seeds, **kwargs),
            source="simulated",
            description=name,
            on_progress=_offset(on_progress, done, n),
        )
        done += len(seeds)
        by_set[name] = {
            k: {
                "recall": round(c.recall, 3),
                "precision": round(c.precision, 3),
                "true": c.true,
                "detected": c.detected,
            }
            for k, c in part.kinds.items()
        }
        for k in KINDS:
            pooled_counter.per_scan[k].extend(part.scan_counts[k])
        pooled_counter.names.extend(part.scan_names)
    return pooled_counter.result(
        source="simulated",
        description=description,
        data={"scans": n, "sets": describe_sets(sets), "by_set": by_set, "note": note},
    )


# -- which calibration corrects a count ----------------------------------------------------------


def read_calibration(directory: str | Path) -> Calibration | None:
    """The ``calibration`` in a version directory's config.json (None: none, or unreadable)."""
    path = Path(directory) / "config.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        return Calibration.from_json(stored.get("calibration"))
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s: unreadable calibration (%s); counts stay uncalibrated", path, exc)
        return None


def version_directories(names: Iterable[str], *, session: Any) -> dict[str, Path]:
    """Where each named version lives: the registry's directory, else a version shipped inside
    the package under that name; versions found nowhere are absent."""
    from defectwatch.db.registry import list_versions

    registered = {v.name: Path(v.directory) for v in list_versions(session=session)}
    shipped = Path(__file__).resolve().parent.parent / "models"
    out = {}
    for name in names:
        if name in registered:
            out[name] = registered[name]
        elif name and (shipped / name / "config.json").is_file():
            out[name] = shipped / name
    return out


@dataclass(frozen=True)
class ReviewedScan:
    """A reviewed scan's calibration counts for one version."""

    scan_id: int
    sample: str | None
    source: str
    counts: dict[str, ScanCounts]


def _pixel_nm(scan: Any) -> tuple[float, float] | None:
    px = scan.pixel_size_x_nm or (scan.width_nm / scan.nx if scan.width_nm and scan.nx else None)
    py = scan.pixel_size_y_nm or (scan.height_nm / scan.ny if scan.height_nm and scan.ny else None)
    return (float(px), float(py or px)) if px else None


def _chosen_source(sets: Sequence[Any]) -> str | None:
    """The exhaustive label set that measures a scan: a review before an imported file;
    never the ``accepted`` detections."""
    usable = [s.source for s in sets if s.exhaustive and s.source not in NOT_INDEPENDENT_SOURCES]
    if not usable:
        return None
    reviewed = [s for s in usable if s == "reviewed"]
    return reviewed[0] if reviewed else usable[-1]


def reviewed_scans(*, session: Any, version: str, radius_nm: float = 1.0) -> list[ReviewedScan]:
    """Scans labelled exhaustively by a person whose latest run came from ``version``, with
    their detections matched to the labels (per kind)."""
    from defectwatch.db import queries as q
    from defectwatch.db.labels import labelled_scans
    from defectwatch.pipeline.metrics import TruthPoint

    out = []
    for sl in labelled_scans(session=session, with_labels=True):
        source = _chosen_source(sl.sets)
        if source is None or sl.scan.status != "done":
            continue
        run = q.latest_run(sl.scan.id, session=session)
        pixel = _pixel_nm(sl.scan)
        if run is None or run.model_version != version or pixel is None:
            continue
        px, py = pixel

        def nm(row: float, col: float, kind: str, px: float = px, py: float = py) -> TruthPoint:
            return TruthPoint(float((col + 0.5) * px), float((row + 0.5) * py), kind)

        truth = [nm(lab.row, lab.col, lab.kind) for lab in sl.labels if lab.source == source]
        found = [
            _Found(*_xy(nm(d.row, d.col, d.kind)), d.kind, d.confidence)
            for d in q.run_defects(run.id, session=session)
        ]
        counter = CalibrationCounter(kinds=KINDS, radius_nm=radius_nm)
        out.append(
            ReviewedScan(
                sl.scan.id, sl.sample, source, counter.add(found, truth, name=sl.scan.path)
            )
        )
    return out


@dataclass(frozen=True)
class _Found:
    x_nm: float
    y_nm: float
    kind: str
    confidence: float


def _xy(p: Any) -> tuple[float, float]:
    return p.x_nm, p.y_nm


def reviewed_calibration(
    scans: Sequence[ReviewedScan],
    *,
    version: str,
    exclude_sample: str | None = None,
    exclude_scan_ids: Iterable[int] = (),
    min_scans: int = MIN_REVIEWED_SCANS,
) -> Calibration | None:
    """The calibration measured on reviewed ``scans`` of ``version``, leaving out the scans of
    ``exclude_sample`` and ``exclude_scan_ids`` (the ones whose count it will correct); None
    when fewer than ``min_scans`` remain."""
    skip = set(exclude_scan_ids)
    kept = [
        s
        for s in scans
        if s.scan_id not in skip and (exclude_sample is None or s.sample != exclude_sample)
    ]
    if len(kept) < min_scans:
        return None
    kinds: dict[str, KindCalibration] = {
        k: pooled([s.counts[k] for s in kept], kind=k) for k in KINDS
    }
    sources = sorted({s.source for s in kept})
    return Calibration(
        kinds,
        "reviewed",
        f"calibrated on {len(kept)} reviewed scans ({version})",
        {
            "scans": len(kept),
            "scan_ids": [s.scan_id for s in kept],
            "label_sources": sources,
            "held_out": "the corrected sample's own scans are left out",
        },
        "every defect in a person's exhaustive labels",
    )


def main() -> None:
    """``python -m defectwatch.service.calibration VERSION_DIR``: measure the version's
    simulated calibration and write it into its config.json."""
    import argparse

    from defectwatch.pipeline.model import write_calibration

    parser = argparse.ArgumentParser(description=(main.__doc__ or "").splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument(
        "--plain",
        action="store_true",
        help="the 44 plain topography scans only (default-sim-7's sets; default: with the 12 "
        "widened ones, as the shipped default)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    def progress(i: int, n: int) -> None:
        log.info("calibration scan %d/%d", i, n)

    sets = CALIBRATION_SETS if args.plain else CALIBRATION_SETS_BROAD
    cal = simulated_calibration(args.directory, sets=sets, on_progress=progress)
    write_calibration(args.directory, cal.to_json())
    log.info("%s: %s", args.directory, json.dumps(cal.to_json()["kinds"]))


if __name__ == "__main__":
    main()
