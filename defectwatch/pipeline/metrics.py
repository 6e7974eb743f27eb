"""Object-level evaluation: one-to-one (Hungarian) matching of detections to labels.

A detection matches a label of the same kind within ``radius_nm``. Labels marked not visible
are "don't care": a detection on one is neither a true nor a false positive, and missing one is
no false negative. AP ranks detections by confidence (greedy matching, highest first, as COCO).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

from defectwatch.domain import Defect


class Label(Protocol):
    x_nm: float
    y_nm: float
    kind: str
    visible: bool


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


def match(pred_xy: np.ndarray, truth_xy: np.ndarray, *,
          radius_nm: float = 1.0) -> list[tuple[int, int, float]]:
    """Optimal one-to-one pairs ``(pred index, truth index, distance nm)`` within the radius.

    ``pred_xy``: (N, 2), ``truth_xy``: (M, 2), both in nm.
    """
    pred_xy = np.asarray(pred_xy, dtype=float).reshape(-1, 2)
    truth_xy = np.asarray(truth_xy, dtype=float).reshape(-1, 2)
    if len(pred_xy) == 0 or len(truth_xy) == 0:
        return []
    dist = np.hypot(pred_xy[:, None, 0] - truth_xy[None, :, 0],
                    pred_xy[:, None, 1] - truth_xy[None, :, 1])
    cost = np.where(dist <= radius_nm, dist, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j), float(dist[i, j])) for i, j in zip(rows, cols)
            if dist[i, j] <= radius_nm]


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


def object_scores(preds: Sequence[Defect], labels: Sequence[Label], *, radius_nm: float = 1.0,
                  kinds: Sequence[str] = ("trough", "peak")) -> dict[str, ObjectScores]:
    """Precision, recall, F1, AP and localisation error per kind for one or more scans' objects.

    For several scans, call per scan and pool the counts with `pool`.
    """
    out: dict[str, ObjectScores] = {}
    for kind in kinds:
        p = [d for d in preds if d.kind == kind]
        t = [lab for lab in labels if lab.kind == kind]
        pxy = np.array([(d.x_nm, d.y_nm) for d in p], dtype=float).reshape(-1, 2)
        txy = np.array([(lab.x_nm, lab.y_nm) for lab in t], dtype=float).reshape(-1, 2)
        visible = np.array([bool(lab.visible) for lab in t], dtype=bool)
        pairs = match(pxy, txy, radius_nm=radius_nm)
        on_visible = [(i, j, dd) for i, j, dd in pairs if visible[j]]
        on_hidden = {i for i, j, _ in pairs if not visible[j]}
        tp = len(on_visible)
        fp = len(p) - tp - len(on_hidden)
        fn = int(visible.sum()) - tp
        # AP: greedy by confidence over the detections that are not "don't care"
        keep = [i for i in range(len(p)) if i not in on_hidden]
        conf = np.array([p[i].confidence for i in keep], dtype=float)
        matched = {i for i, _, _ in on_visible}
        is_tp = np.array([i in matched for i in keep], dtype=bool)
        out[kind] = _scores(kind, tp, fp, fn, _ap(conf, is_tp, int(visible.sum())),
                            [dd for _, _, dd in on_visible])
    return out


def _scores(kind: str, tp: int, fp: int, fn: int, ap: float, dists: list[float]
            ) -> ObjectScores:
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    loc = float(np.mean(dists)) if dists else float("nan")
    return ObjectScores(kind, tp, fp, fn, precision, recall, f1, ap, loc)
