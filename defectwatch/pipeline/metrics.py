"""Object-level evaluation: one-to-one (Hungarian) matching of detections to labels.

A detection matches a label of the same kind within ``radius_nm``. Labels marked not visible
are "don't care": a detection on one is neither a true nor a false positive, and missing one is
no false negative. AP ranks the matched and unmatched detections by confidence (the matching
itself is the optimal one over all detections).

Per scan: `object_scores` (precision, recall, F1, AP, localisation error per kind) and
`density_errors` (predicted vs true density per kind). Over many scans: `ObjectEvaluation`
pools the counts, ranks all detections together for AP, and records precision / recall / F1
against a confidence threshold (re-matched at every threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

from defectwatch.domain import KINDS, Defect
from defectwatch.pipeline.density import NM2_PER_CM2
from defectwatch.pipeline.pixel_metrics import jsonable


class Label(Protocol):
    """A true defect: position in nm from the top-left corner, kind, visible (read-only, so
    frozen dataclasses such as `TruthPoint` satisfy it)."""

    @property
    def x_nm(self) -> float: ...
    @property
    def y_nm(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def visible(self) -> bool: ...


@dataclass(frozen=True)
class ObjectScores:
    """Object-level scores of one kind."""

    kind: str
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float
    localisation_nm: float  # mean distance of matched pairs (NaN without matches)


def match(
    pred_xy: np.ndarray, truth_xy: np.ndarray, *, radius_nm: float = 1.0
) -> list[tuple[int, int, float]]:
    """Optimal one-to-one pairs of detections and true defects within a radius (Hungarian).

    Parameters
    ----------
    pred_xy : ndarray, shape (N, 2)
        Detections' ``(x, y)``, nm.
    truth_xy : ndarray, shape (M, 2)
        True defects' ``(x, y)``, nm.
    radius_nm : float, optional
        Pairs further apart are not matched.

    Returns
    -------
    list of tuple (int, int, float)
        ``(detection index, truth index, distance nm)``, at most min(N, M) pairs, the total
        distance minimal; empty when either side is.
    """
    pred_xy = np.asarray(pred_xy, dtype=float).reshape(-1, 2)
    truth_xy = np.asarray(truth_xy, dtype=float).reshape(-1, 2)
    if len(pred_xy) == 0 or len(truth_xy) == 0:
        return []
    dist = np.hypot(
        pred_xy[:, None, 0] - truth_xy[None, :, 0], pred_xy[:, None, 1] - truth_xy[None, :, 1]
    )
    cost = np.where(dist <= radius_nm, dist, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [
        (int(i), int(j), float(dist[i, j])) for i, j in zip(rows, cols) if dist[i, j] <= radius_nm
    ]


def _ap(confidences: np.ndarray, is_tp: np.ndarray, n_truth: int) -> float:
    """All-point interpolated average precision."""
    if n_truth == 0 or len(confidences) == 0:
        return float("nan") if n_truth == 0 else 0.0
    order = np.argsort(-confidences, kind="stable")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    recall = np.concatenate([[0.0], tp / n_truth])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


@dataclass(frozen=True)
class _KindMatch:
    """Matching of one kind's detections to its labels in one scan."""

    tp: int
    fp: int
    fn: int
    n_dont_care: int  # detections on labels that are not visible
    n_truth: int  # visible labels
    n_hidden: int  # labels that are not visible
    confidences: np.ndarray  # (K,) of the detections that count (not "don't care")
    is_tp: np.ndarray  # (K,) bool
    distances: list[float]  # of the true positives, nm


def _xy(items: Sequence[Defect] | Sequence[Label]) -> np.ndarray:
    return np.array([(d.x_nm, d.y_nm) for d in items], dtype=float).reshape(-1, 2)


def _match_kind(p: Sequence[Defect], t: Sequence[Label], radius_nm: float) -> _KindMatch:
    visible = np.array([bool(getattr(lab, "visible", True)) for lab in t], dtype=bool)
    pairs = match(_xy(p), _xy(t), radius_nm=radius_nm)
    on_visible = [(i, j, dd) for i, j, dd in pairs if visible[j]]
    on_hidden = {i for i, j, _ in pairs if not visible[j]}
    tp = len(on_visible)
    fp = len(p) - tp - len(on_hidden)
    n_truth = int(visible.sum())
    keep = [i for i in range(len(p)) if i not in on_hidden]
    matched = {i for i, _, _ in on_visible}
    return _KindMatch(
        tp,
        fp,
        n_truth - tp,
        len(on_hidden),
        n_truth,
        len(t) - n_truth,
        np.array([p[i].confidence for i in keep], dtype=float),
        np.array([i in matched for i in keep], dtype=bool),
        [dd for _, _, dd in on_visible],
    )


def _split(
    preds: Sequence[Defect], labels: Sequence[Label], kind: str
) -> tuple[list[Defect], list[Label]]:
    return [d for d in preds if d.kind == kind], [lab for lab in labels if lab.kind == kind]


def object_scores(
    preds: Sequence[Defect],
    labels: Sequence[Label],
    *,
    radius_nm: float = 1.0,
    kinds: Sequence[str] = KINDS,
) -> dict[str, ObjectScores]:
    """Precision, recall, F1, AP and localisation error per kind for one scan's objects.

    For several scans use `ObjectEvaluation`, which pools the counts and ranks all
    detections together for AP.

    Parameters
    ----------
    preds : sequence of Defect
        The detections (``x_nm, y_nm, kind, confidence``).
    labels : sequence of Label
        The truth; labels that are not ``visible`` are "don't care" (a detection on one is
        neither a true nor a false positive).
    radius_nm : float, optional
        Matching radius (same kind only).
    kinds : sequence of str, optional

    Returns
    -------
    dict of str to ObjectScores
        Per kind: TP, FP, FN, precision, recall, F1, AP (detections ranked by confidence)
        and the mean localisation error, nm.
    """
    out: dict[str, ObjectScores] = {}
    for kind in kinds:
        m = _match_kind(*_split(preds, labels, kind), radius_nm)
        out[kind] = _scores(
            kind, m.tp, m.fp, m.fn, _ap(m.confidences, m.is_tp, m.n_truth), m.distances
        )
    return out


@dataclass(frozen=True)
class DensityError:
    """Predicted against true density of one kind (or ``"total"``) in one scan.

    Detections on labels that are not visible are "don't care" and left out of the predicted
    count, as the invisible labels are left out of the true count (so predicted - true =
    false positives - false negatives). ``relative_error`` = (predicted - true) / true; 0.0
    when both are 0, NaN when only the truth is 0.
    """

    kind: str
    predicted_count: int
    true_count: int
    area_nm2: float
    predicted_per_cm2: float
    true_per_cm2: float
    relative_error: float


def _density_error(kind: str, n_pred: int, n_true: int, area_nm2: float) -> DensityError:
    per = NM2_PER_CM2 / area_nm2 if area_nm2 > 0 else float("nan")
    if n_true:
        rel = (n_pred - n_true) / n_true
    else:
        rel = 0.0 if n_pred == 0 else float("nan")
    return DensityError(
        kind, n_pred, n_true, float(area_nm2), n_pred * per, n_true * per, float(rel)
    )


def density_errors(
    preds: Sequence[Defect],
    labels: Sequence[Label],
    *,
    area_nm2: float,
    radius_nm: float = 1.0,
    kinds: Sequence[str] = KINDS,
) -> dict[str, DensityError]:
    """Predicted against true density of one scan, per kind and in total.

    Parameters
    ----------
    preds : sequence of Defect
    labels : sequence of Label
    area_nm2 : float
        The acquired area the densities are over, nm^2.
    radius_nm : float, optional
        Only decides which detections fall on invisible labels ("don't care").
    kinds : sequence of str, optional

    Returns
    -------
    dict of str to DensityError
        Keyed by kind and ``"total"``: counts, densities per cm^2 and the relative error.
    """
    out: dict[str, DensityError] = {}
    total_p = total_t = 0
    for kind in kinds:
        m = _match_kind(*_split(preds, labels, kind), radius_nm)
        out[kind] = _density_error(kind, m.tp + m.fp, m.n_truth, area_nm2)
        total_p += m.tp + m.fp
        total_t += m.n_truth
    out["total"] = _density_error("total", total_p, total_t, area_nm2)
    return out


@dataclass(frozen=True)
class ThresholdCurve:
    """Precision, recall and F1 of one kind against the confidence threshold, pooled over
    scans; detections below each threshold are dropped and the rest matched again."""

    kind: str
    thresholds: tuple[float, ...]
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]


@dataclass(frozen=True)
class ScanEvaluation:
    """One scan's object scores and density errors, as `ObjectEvaluation.add` returns them."""

    name: str
    area_nm2: float
    scores: dict[str, ObjectScores]
    densities: dict[str, DensityError]


DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))


class ObjectEvaluation:
    """Object-level evaluation pooled over many scans (constant work per scan, no images kept).

    Per kind it sums TP / FP / FN across scans, ranks all counted detections by confidence for
    one AP, averages the distances of all matched pairs, and keeps per-scan density errors.
    Invisible labels are "don't care", as in `object_scores`.

    Parameters
    ----------
    kinds
        Defect kinds to score.
    thresholds
        Confidence thresholds of the precision / recall / F1 curve (`threshold_curves`).
    """

    def __init__(
        self, *, kinds: Sequence[str] = KINDS, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
    ) -> None:
        self.kinds = tuple(kinds)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scans: list[ScanEvaluation] = []
        self._counts = {k: np.zeros(3, dtype=np.int64) for k in self.kinds}  # tp, fp, fn
        self._conf: dict[str, list[np.ndarray]] = {k: [] for k in self.kinds}
        self._is_tp: dict[str, list[np.ndarray]] = {k: [] for k in self.kinds}
        self._n_truth = dict.fromkeys(self.kinds, 0)
        self._dists: dict[str, list[float]] = {k: [] for k in self.kinds}
        # per threshold: tp, fp, fn
        self._curve = {k: np.zeros((len(self.thresholds), 3), dtype=np.int64) for k in self.kinds}
        self._radii: set[float] = set()

    def add(
        self,
        preds: Sequence[Defect],
        labels: Sequence[Label],
        *,
        area_nm2: float,
        radius_nm: float = 1.0,
        name: str = "",
    ) -> ScanEvaluation:
        """Score one scan's detections against its labels and pool the counts.

        ``area_nm2``: the scan's acquired area (for densities); ``name``: how the scan is
        called in `summary`. Returns the scan's own scores.
        """
        self._radii.add(float(radius_nm))
        scores: dict[str, ObjectScores] = {}
        for kind in self.kinds:
            p, t = _split(preds, labels, kind)
            m = _match_kind(p, t, radius_nm)
            scores[kind] = _scores(
                kind, m.tp, m.fp, m.fn, _ap(m.confidences, m.is_tp, m.n_truth), m.distances
            )
            self._counts[kind] += (m.tp, m.fp, m.fn)
            self._conf[kind].append(m.confidences)
            self._is_tp[kind].append(m.is_tp)
            self._n_truth[kind] += m.n_truth
            self._dists[kind].extend(m.distances)
            conf = np.array([d.confidence for d in p], dtype=float)
            for i, th in enumerate(self.thresholds):
                keep = np.flatnonzero(conf >= th)
                mt = _match_kind([p[j] for j in keep], t, radius_nm)
                self._curve[kind][i] += (mt.tp, mt.fp, mt.fn)
        dens = density_errors(
            preds, labels, area_nm2=area_nm2, radius_nm=radius_nm, kinds=self.kinds
        )
        result = ScanEvaluation(name or f"scan {len(self.scans)}", float(area_nm2), scores, dens)
        self.scans.append(result)
        return result

    def scores(self) -> dict[str, ObjectScores]:
        """Pooled scores per kind over every scan added."""
        out = {}
        for kind in self.kinds:
            tp, fp, fn = (int(v) for v in self._counts[kind])
            conf = np.concatenate(self._conf[kind]) if self._conf[kind] else np.zeros(0)
            is_tp = (
                np.concatenate(self._is_tp[kind]) if self._is_tp[kind] else np.zeros(0, dtype=bool)
            )
            out[kind] = _scores(
                kind, tp, fp, fn, _ap(conf, is_tp, self._n_truth[kind]), self._dists[kind]
            )
        return out

    def threshold_curves(self) -> dict[str, ThresholdCurve]:
        """Pooled precision / recall / F1 against the confidence threshold, per kind."""
        out = {}
        for kind in self.kinds:
            rows = [
                _scores(kind, int(tp), int(fp), int(fn), float("nan"), [])
                for tp, fp, fn in self._curve[kind]
            ]
            out[kind] = ThresholdCurve(
                kind,
                self.thresholds,
                tuple(r.precision for r in rows),
                tuple(r.recall for r in rows),
                tuple(r.f1 for r in rows),
            )
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (NaN -> None): pooled scores per kind with density errors over
        scans (mean signed and mean absolute relative error over scans where it is defined,
        and the pooled ratio of counts), their means over kinds, the threshold curves and each
        scan's figures."""
        pooled = self.scores()
        per_kind: dict[str, Any] = {}
        for kind in (*self.kinds, "total"):
            entry: dict[str, Any] = asdict(pooled[kind]) if kind in pooled else {"kind": kind}
            rel = np.array([s.densities[kind].relative_error for s in self.scans], dtype=float)
            finite = rel[np.isfinite(rel)]
            n_pred = sum(s.densities[kind].predicted_count for s in self.scans)
            n_true = sum(s.densities[kind].true_count for s in self.scans)
            area = sum(s.area_nm2 for s in self.scans)
            entry["density"] = {
                "mean_relative_error": float(finite.mean()) if finite.size else float("nan"),
                "mean_abs_relative_error": (
                    float(np.abs(finite).mean()) if finite.size else float("nan")
                ),
                "scans_defined": int(finite.size),
                "pooled": asdict(_density_error(kind, n_pred, n_true, area)),
            }
            per_kind[kind] = entry

        def mean(values: list[float]) -> float:
            finite = [v for v in values if math.isfinite(v)]
            return float(np.mean(finite)) if finite else float("nan")

        return jsonable(
            {
                "n_scans": len(self.scans),
                "radius_nm": sorted(self._radii),
                "kinds": per_kind,
                "mean": {
                    key: mean([getattr(pooled[k], key) for k in self.kinds])
                    for key in ("precision", "recall", "f1", "ap", "localisation_nm")
                },
                "threshold_curves": {k: asdict(c) for k, c in self.threshold_curves().items()},
                "scans": [
                    {
                        "name": s.name,
                        "area_nm2": s.area_nm2,
                        "scores": {k: asdict(v) for k, v in s.scores.items()},
                        "densities": {k: asdict(v) for k, v in s.densities.items()},
                    }
                    for s in self.scans
                ],
            }
        )


@dataclass(frozen=True)
class TruthPoint:
    """A true defect position in nm from the frame's top-left corner (satisfies `Label`);
    ``contrast``: how far it stands out (`contrast.defect_contrast`; NaN: not measured, as for
    a person's labels, which always count)."""

    x_nm: float
    y_nm: float
    kind: str
    visible: bool = True
    contrast: float = float("nan")


def truth_points(points: Sequence[Any], *, pixel_size_nm: tuple[float, float]) -> list[TruthPoint]:
    """Labels in pixels as true defects in nm, with the pixel-centre convention of
    `defectwatch.pipeline.detect` (``x_nm = (col + 0.5) * px``).

    Parameters
    ----------
    points : sequence
        Anything with ``row, col, kind`` and optionally ``visible`` (such as
        `defectwatch.pipeline.label_formats.PointLabel`); pixels, row 0 = top.
    pixel_size_nm : tuple of float
        ``(x, y)`` size of one pixel, nm.

    Returns
    -------
    list of TruthPoint
    """
    px, py = pixel_size_nm
    return [
        TruthPoint(
            float((p.col + 0.5) * px),
            float((p.row + 0.5) * py),
            str(p.kind),
            bool(getattr(p, "visible", True)),
        )
        for p in points
    ]


def _scores(kind: str, tp: int, fp: int, fn: int, ap: float, dists: list[float]) -> ObjectScores:
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    loc = float(np.mean(dists)) if dists else float("nan")
    return ObjectScores(kind, tp, fp, fn, precision, recall, f1, ap, loc)
