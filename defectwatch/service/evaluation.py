"""Evaluation use case: run an ensemble (and the classical baseline) on labelled scans and
score them at object level (Hungarian matching within 1 nm) and at the paper's pixel level.

Cases come from a folder written by ``defectwatch simulate`` (each .sxm beside its truth CSV),
from rendered images with box labels (the paper's VIA CSV and JPEG renders), or are simulated
in memory from seeds.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from defectwatch.domain import KINDS, Scan
from defectwatch.errors import ConfigError
from defectwatch.pipeline.baseline import BaselineCase, detect_baseline_scan, tune_baseline
from defectwatch.pipeline.contrast import marked
from defectwatch.pipeline.inference import Ensemble, Prediction
from defectwatch.pipeline.labels import DEFAULT_RADIUS_NM, IGNORE, circle_mask
from defectwatch.pipeline.metrics import ObjectEvaluation, TruthPoint, truth_points
from defectwatch.pipeline.pixel_metrics import PixelAccumulator, jsonable
from defectwatch.pipeline.simulate import SimulatedScan, simulate

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
#: Thresholds `choose_threshold` tries by default: 0.10, 0.15, ... 0.80.
THRESHOLD_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(15))


@dataclass(frozen=True)
class Case:
    """One labelled scan: ``labels`` in nm from the frame's top-left corner."""

    name: str
    scan: Scan
    labels: Sequence[TruthPoint]


@dataclass
class Report:
    """Object-level summary, pixel-level metrics, baseline summary (optional), settings."""

    objects: dict[str, Any]
    pixels: dict[str, Any]
    baseline: dict[str, Any] | None
    settings: dict[str, Any]
    _curves: Any = field(default=None, repr=False)
    _pixel_metrics: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "settings": self.settings,
                "objects": self.objects,
                "pixels": self.pixels,
                "baseline": self.baseline,
            }
        )


# -- cases --------------------------------------------------------------------------------------


def scan_from_simulation(sim: SimulatedScan, *, name: str = "") -> Scan:
    """The simulated analysis channel as a Scan, without writing a file."""
    r = sim.recipe
    z = sim.images[(sim.analysis_channel, "forward")]
    return Scan(
        path=name or f"sim-{r.seed}",
        channel=sim.analysis_channel,
        direction="forward",
        unit="A" if r.mode == "cafm" else "m",
        data=z,
        acquired_rows=np.isfinite(z).all(axis=1),
        width_nm=r.width_nm,
        height_nm=r.height_nm,
        scan_dir=r.scan_dir,
        angle_deg=r.angle_deg,
        offset_x_nm=0.0,
        offset_y_nm=0.0,
        recorded_at=None,
        bias_v=r.bias_v,
        setpoint_a=r.setpoint_a,
        constant_height=False,
        temperature_k=None,
        comment="simulated",
        channels=(),
    )


def simulated_cases(seeds: Iterable[int], **kwargs: Any) -> Iterator[Case]:
    """In-memory simulated cases (``kwargs`` go to `simulate`: material, mode, size_nm...)."""
    for seed in seeds:
        sim = simulate(int(seed), **kwargs)
        labels = [TruthPoint(d.x_nm, d.y_nm, d.kind, d.visible, d.contrast) for d in sim.truth]
        yield Case(f"sim-{seed}", scan_from_simulation(sim), labels)


def cases_from_folder(folder: Path, *, channel: str = "Z") -> list[Case]:
    """Every .sxm with a truth CSV beside it (as ``defectwatch simulate`` writes them)."""
    from defectwatch.pipeline.scan import read_scan
    from defectwatch.service.simulation import read_truth_csv

    cases = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".sxm"):
        truth = path.with_suffix(".csv")
        if not truth.is_file():
            log.warning("%s: no truth CSV beside it; skipped", path)
            continue
        scan = read_scan(path, channel=channel)
        if scan.channel == "Z" and "Current" in scan.channel_names and "cafm" in path.stem:
            scan = read_scan(path, channel="Current")
        labels = [
            TruthPoint(d.x_nm, d.y_nm, d.kind, d.visible, d.contrast) for d in read_truth_csv(truth)
        ]
        cases.append(Case(path.name, scan, labels))
    return cases


def cases_from_images(images: Sequence[Path], labels_file: Path) -> list[Case]:
    """Rendered images labelled with boxes (VIA, VOC, COCO): each image becomes a scan of the
    size its name gives (``..._30x30_...`` nm)."""
    from defectwatch.pipeline.images import read_image_as_scan
    from defectwatch.pipeline.label_formats import boxes_to_points, read_labels

    parsed = read_labels(labels_file)
    by_image: dict[str, list] = {}
    for b in parsed.boxes:
        by_image.setdefault(Path(b.image).name, []).append(b)
    cases = []
    for path in images:
        boxes = by_image.get(Path(path).name)
        if boxes is None:
            continue  # unlabelled frame
        scan = read_image_as_scan(path, width_nm=None)
        points = boxes_to_points(
            boxes, nx=scan.nx, ny=scan.ny, width_nm=scan.width_nm, height_nm=scan.height_nm
        )
        labels = truth_points(points, pixel_size_nm=(scan.pixel_size_x_nm, scan.pixel_size_y_nm))
        cases.append(Case(Path(path).name, scan, labels))
    if not cases:
        raise ConfigError(f"{labels_file}: none of its labels belong to the images given")
    return cases


# -- scoring ------------------------------------------------------------------------------------


def truth_mask(prediction: Prediction, labels: Sequence[TruthPoint]) -> np.ndarray:
    """(H, W) class mask at the model's pixels: a disc per label, IGNORE for labels that are
    not visible and where nothing was acquired."""
    px, py = prediction.pixel_nm
    sx, sy = prediction.scan_pixel_nm
    rows = np.array([lab.y_nm / sy - 0.5 for lab in labels], float)
    cols = np.array([lab.x_nm / sx - 0.5 for lab in labels], float)
    r, c = prediction.mapping.to_resampled(rows, cols)
    base = np.where(prediction.valid, 0, IGNORE).astype(np.uint8)
    radii = [DEFAULT_RADIUS_NM[lab.kind] / px for lab in labels]
    return circle_mask(
        prediction.valid.shape,
        r,
        c,
        [lab.kind for lab in labels],
        radius_px=radii,
        ignore=[not lab.visible for lab in labels],
        base=base,
    )


def reported_truth(case: Case, limits: Mapping[str, float]) -> Case:
    """``case`` with the simulated defects fainter than a version reports (``limits``, see
    `ModelConfig.report_contrast`) made "don't care": the detector neither has to find them
    nor is faulted for finding them. Labels without a measured contrast (a person's) all
    count."""
    labels = [
        replace(lab, visible=bool(lab.visible and marked(lab.kind, float(lab.contrast), limits)))
        for lab in case.labels
    ]
    return replace(case, labels=labels)


def evaluate(
    ensemble: Ensemble,
    cases: Iterable[Case],
    *,
    threshold: float | None = None,
    radius_nm: float = 1.0,
    baseline: bool = False,
    truth: str = "reported",
    on_progress: Progress | None = None,
    n_cases: int | None = None,
    predictions: Iterable[Prediction] | None = None,
) -> Report:
    """Score ``ensemble`` on ``cases`` at ``threshold`` (None: the version's own threshold for
    each scan's channel, `ModelConfig.threshold_for`); with ``baseline`` also tune the LoG
    baseline on the same cases and score it. ``truth``: "reported" scores against the defects
    the version claims to report (`reported_truth`), "marked" against every simulated defect a
    labeller would mark. ``predictions``: the ensemble's `Prediction` of each case, in order
    (a generator keeps it streaming), instead of predicting here."""
    if truth not in ("reported", "marked"):
        raise ValueError(f"truth must be 'reported' or 'marked', not {truth!r}")
    objects = ObjectEvaluation()
    pixels = PixelAccumulator(classes=tuple(ensemble.classes))
    kept: list[Case] = []
    used: set[float] = set()
    given = iter(predictions) if predictions is not None else None
    for i, case in enumerate(cases):
        if truth == "reported":
            case = reported_truth(case, ensemble.config.report_contrast)
        pred = next(given) if given is not None else ensemble.predict_scan(case.scan)
        case_thr = (
            threshold if threshold is not None else ensemble.config.threshold_for(case.scan.channel)
        )
        used.add(case_thr)
        defects = pred.defects(threshold=case_thr)
        objects.add(
            defects,
            case.labels,
            area_nm2=case.scan.acquired_area_nm2,
            radius_nm=radius_nm,
            name=case.name,
        )
        mask = truth_mask(pred, case.labels)
        pixels.update(np.where(mask == IGNORE, 0, mask), pred.mean, ignore=mask == IGNORE)
        if baseline:
            kept.append(case)
        if on_progress:
            on_progress(i + 1, n_cases or 0)
    # the pixel level needs one threshold: the one used, or the topography one when they differ
    thr = (
        used.pop()
        if len(used) == 1
        else (threshold if threshold is not None else ensemble.config.threshold_for("Z"))
    )
    pm = pixels.result(threshold=thr)
    base_summary = _baseline(kept, radius_nm) if baseline else None
    settings = {
        "model": ensemble.version,
        "threshold": thr,
        "radius_nm": radius_nm,
        "model_pixel_nm": ensemble.pixel_size_nm,
        "truth": truth,
        "report_contrast": ensemble.config.report_contrast,
    }
    return Report(
        objects.summary(),
        pm.to_dict(curves=False),
        base_summary,
        settings,
        objects.threshold_curves(),
        pm,
    )


def choose_threshold(
    ensemble: Ensemble,
    cases: Iterable[Case],
    *,
    grid: Sequence[float] = THRESHOLD_GRID,
    radius_nm: float = 1.0,
    kinds: Sequence[str] = KINDS,
    on_progress: Progress | None = None,
) -> tuple[float, dict[float, float]]:
    """The mean-probability threshold in ``grid`` with the best mean object F1 over ``kinds``
    on ``cases`` (validation scans, never the test ones); each scan is predicted once and its
    map thresholded at every grid value, scored against what the version reports
    (`reported_truth`). Returns (threshold, {threshold: mean F1})."""
    evaluations = {t: ObjectEvaluation() for t in grid}
    for i, case in enumerate(cases):
        case = reported_truth(case, ensemble.config.report_contrast)
        pred = ensemble.predict_scan(case.scan)
        for t, ev in evaluations.items():
            ev.add(
                pred.defects(threshold=t),
                case.labels,
                area_nm2=case.scan.acquired_area_nm2,
                radius_nm=radius_nm,
                name=case.name,
            )
        if on_progress:
            on_progress(i + 1, 0)
    table = {}
    for t, ev in evaluations.items():
        scores = ev.scores()
        table[t] = float(np.mean([scores[k].f1 for k in kinds if k in scores]))
    best = max(table, key=lambda t: (table[t], -abs(t - 0.5)))
    return best, table


def _baseline(cases: Sequence[Case], radius_nm: float) -> dict[str, Any]:
    bcases = [
        BaselineCase(
            c.scan.data, (c.scan.pixel_size_x_nm, c.scan.pixel_size_y_nm), c.labels, None, c.name
        )
        for c in cases
    ]
    tuned = tune_baseline(bcases, radius_nm=radius_nm)
    ev = ObjectEvaluation()
    for c in cases:
        ev.add(
            detect_baseline_scan(c.scan, params=tuned.params),
            c.labels,
            area_nm2=c.scan.acquired_area_nm2,
            radius_nm=radius_nm,
            name=c.name,
        )
    summary = ev.summary()
    summary["params"] = tuned.params.to_dict()
    return summary


def write_report(report: Report, out: Path) -> list[Path]:
    """summary.json, the paper's Fig. 3 (pixel level) and object-level threshold curves."""
    from defectwatch.pipeline.figures import plot_pixel_summary, plot_threshold_curves

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json"]
    paths[0].write_text(json.dumps(report.to_dict(), indent=2))
    paths.append(
        plot_pixel_summary(
            report._pixel_metrics, out / "pixel_level.png", title=str(report.settings["model"])
        )
    )
    paths.append(
        plot_threshold_curves(
            report._curves,
            out / "object_thresholds.png",
            mark_threshold=report.settings["threshold"],
            title=str(report.settings["model"]),
        )
    )
    return paths


def headline(summary: dict[str, Any], kinds: Sequence[str] = KINDS) -> dict[str, dict[str, float]]:
    """Per kind: precision, recall, F1, AP, localisation (nm), tp/fp/fn from an object summary."""
    out = {}
    for kind in kinds:
        s = summary["kinds"].get(kind, {})
        out[kind] = {
            k: (math.nan if s.get(k) is None else float(s[k]))
            for k in ("precision", "recall", "f1", "ap", "localisation_nm", "tp", "fp", "fn")
        }
    return out
