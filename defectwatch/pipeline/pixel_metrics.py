"""The paper's pixel-level evaluation (Smalley et al. 2024, Fig. 3), accumulated image by image.

`PixelAccumulator` takes per-pixel truth class maps and predicted mean class probabilities one
image at a time and keeps only constant-size counts: for every class a histogram (``bins`` equal
bins on [0, 1]) of the predicted probability of that class, split by whether the pixel truly is
that class, and the full confusion counts of the argmax prediction. From them `PixelAccumulator.
result` derives

- the normalised confusion matrix WITHOUT background as the paper reports it: rows = truth
  trough / peak, columns = predicted background / trough / peak, each row summing to 1;
- precision-recall curves and average precision per class (one-vs-rest), mAP = mean AP over the
  defect classes (background excluded);
- ROC curves and AUROC per class (one-vs-rest), mean AUROC over the defect classes;
- precision, recall and F1 per class at a probability threshold, and F1 of the argmax.

Thresholds are the bin edges ``k / bins``, so curves and AP are exact up to ties inside a bin
(with 1000 bins, AP and AUROC agree with scikit-learn's to about 1e-3).
These are the paper's numbers, for comparison; the product is judged at object level
(`defectwatch.pipeline.metrics`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from defectwatch.domain import CLASSES

log = logging.getLogger(__name__)

DEFAULT_CLASSES = CLASSES


def jsonable(value: Any) -> Any:
    """Tuples -> lists, NaN / infinity -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class Curve:
    """A curve of points ``(x[i], y[i])`` reached at probability ``thresholds[i]``.

    PR curves: x = recall, y = precision, ordered by decreasing threshold, starting at
    (0, 1) with threshold +inf (stored as None in JSON). ROC curves: x = false positive rate,
    y = true positive rate, from (0, 0) to (1, 1).
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    thresholds: tuple[float, ...]


@dataclass(frozen=True)
class PixelClassScores:
    """One class, one-vs-rest over all accumulated pixels."""

    name: str
    index: int
    n_true: int  # pixels of this class in the truth
    ap: float  # average precision (NaN without true pixels)
    auroc: float  # area under the ROC curve (NaN without true or without other pixels)
    precision: float  # at `PixelMetrics.threshold`
    recall: float
    f1: float
    f1_argmax: float  # F1 of the argmax prediction (the paper's F1)
    pr: Curve
    roc: Curve


@dataclass(frozen=True)
class ConfusionMatrix:
    """Argmax confusion. ``normalised[i][j]``: share of truth-``rows[i]`` pixels predicted
    ``columns[j]`` (rows without background, as the paper reports; NaN rows when a class has
    no pixels); ``counts``: the full C x C pixel counts, truth on rows, prediction on columns,
    in the order of ``classes``."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    normalised: tuple[tuple[float, ...], ...]
    classes: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class PixelMetrics:
    """Everything the paper's Fig. 3 shows, plus the counts behind it."""

    classes: tuple[PixelClassScores, ...]  # every class, background first
    confusion: ConfusionMatrix
    map: float  # mean AP over the defect classes (background excluded)
    mean_auroc: float  # mean AUROC over the defect classes
    mean_f1: float  # mean F1 at ``threshold`` over the defect classes
    mean_f1_argmax: float  # mean argmax F1 over the defect classes
    threshold: float
    n_images: int
    n_pixels: int  # pixels counted (ignored ones excluded)
    bins: int

    def by_name(self, name: str) -> PixelClassScores:
        """The scores of the class called ``name``."""
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"no class {name!r}; classes are {[c.name for c in self.classes]}")

    def to_dict(self, *, curves: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (NaN -> None); ``curves=False`` leaves the curves out."""
        out = asdict(self)
        if not curves:
            for c in out["classes"]:
                c.pop("pr")
                c.pop("roc")
        return jsonable(out)


def _div(a: float, b: float, empty: float = float("nan")) -> float:
    return float(a) / float(b) if b else empty


def _f1(p: float, r: float) -> float:
    if not (math.isfinite(p) and math.isfinite(r)):
        return float("nan")
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


class PixelAccumulator:
    """Constant-memory accumulator of the paper's pixel-level metrics over many images.

    Parameters
    ----------
    classes
        Class names in channel order; class 0 is background (``("background", "trough",
        "peak")`` by default).
    bins
        Probability histogram bins per class on [0, 1].
    """

    def __init__(self, *, classes: Sequence[str] = DEFAULT_CLASSES, bins: int = 1000) -> None:
        if len(classes) < 2:
            raise ValueError(f"need at least two classes (background and one more), got {classes}")
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        self.classes = tuple(classes)
        self.bins = int(bins)
        n = len(self.classes)
        # hist[c, 0] : probability of class c on pixels that are not c; hist[c, 1]: on pixels of c
        self._hist = np.zeros((n, 2, self.bins), dtype=np.int64)
        self._confusion = np.zeros((n, n), dtype=np.int64)
        self.n_images = 0

    @property
    def n_pixels(self) -> int:
        """Pixels accumulated so far."""
        return int(self._confusion.sum())

    def update(
        self, truth: np.ndarray, probs: np.ndarray, *, ignore: np.ndarray | None = None
    ) -> None:
        """Add one image.

        Parameters
        ----------
        truth
            (H, W) int class map: 0 background, 1 trough, 2 peak (indices into ``classes``).
        probs
            (C, H, W) predicted mean class probabilities in [0, 1] (values outside are clipped).
        ignore
            Optional (H, W) bool, True where a pixel must not count (not acquired, unlabelled).
            Pixels whose probabilities are not finite are ignored too.
        """
        truth = np.asarray(truth)
        probs = np.asarray(probs, dtype=np.float32)
        n = len(self.classes)
        if probs.ndim != 3 or probs.shape[0] != n:
            raise ValueError(f"probs must be (C={n}, H, W), got shape {probs.shape}")
        if truth.shape != probs.shape[1:]:
            raise ValueError(f"truth {truth.shape} and probs {probs.shape} differ in (H, W)")
        keep = np.isfinite(probs).all(axis=0)
        if ignore is not None:
            ignore = np.asarray(ignore, dtype=bool)
            if ignore.shape != truth.shape:
                raise ValueError(f"ignore {ignore.shape} and truth {truth.shape} differ in shape")
            keep &= ~ignore
        t = truth[keep].astype(np.int64, copy=False)
        if t.size and (t.min() < 0 or t.max() >= n):
            bad = sorted(set(np.unique(t[(t < 0) | (t >= n)]).tolist()))
            raise ValueError(
                f"truth holds class values {bad} outside 0..{n - 1}; mark such pixels in `ignore`"
            )
        p = probs[:, keep]  # (C, K)
        self.n_images += 1
        if t.size == 0:
            return
        pred = np.argmax(p, axis=0)
        self._confusion += np.bincount(t * n + pred, minlength=n * n).reshape(n, n)
        idx = np.clip((np.clip(p, 0.0, 1.0) * self.bins).astype(np.int64), 0, self.bins - 1)
        for c in range(n):
            key = idx[c] + self.bins * (t == c)
            self._hist[c] += np.bincount(key, minlength=2 * self.bins).reshape(2, self.bins)

    def merge(self, other: PixelAccumulator) -> None:
        """Add another accumulator's counts (same classes and bins) to this one."""
        if other.classes != self.classes or other.bins != self.bins:
            raise ValueError("can only merge accumulators with the same classes and bins")
        self._hist += other._hist
        self._confusion += other._confusion
        self.n_images += other.n_images

    # --- derived metrics ---------------------------------------------------------------------

    def _cumulative(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """TP and FP counts when predicting class ``c`` at probability >= k / bins,
        k = 0..bins-1."""
        neg, pos = self._hist[c]
        tp = np.cumsum(pos[::-1])[::-1]
        fp = np.cumsum(neg[::-1])[::-1]
        return tp, fp

    def _class_scores(self, c: int, threshold: float) -> PixelClassScores:
        tp, fp = self._cumulative(c)
        n_pos, n_neg = int(tp[0]), int(fp[0])
        edges = np.arange(self.bins) / self.bins
        # walk thresholds from high to low, keeping those where something changes
        order = np.arange(self.bins)[::-1]
        changed = (self._hist[c, 0] + self._hist[c, 1])[order] > 0
        order = order[changed]
        tps, fps = tp[order].astype(float), fp[order].astype(float)
        ths = edges[order]
        if n_pos:
            recall = tps / n_pos
            precision = np.where(tps + fps > 0, tps / np.maximum(tps + fps, 1), 1.0)
            prev = np.concatenate([[0.0], recall[:-1]])
            ap = float(np.sum((recall - prev) * precision))
            pr = Curve(
                tuple([0.0] + recall.tolist()),
                tuple([1.0] + precision.tolist()),
                tuple([float("inf")] + ths.tolist()),
            )
        else:
            ap = float("nan")
            pr = Curve((), (), ())
        if n_pos and n_neg:
            tpr = np.concatenate([[0.0], tps / n_pos])
            fpr = np.concatenate([[0.0], fps / n_neg])
            auroc = float(np.trapezoid(tpr, fpr))
            roc = Curve(
                tuple(fpr.tolist()), tuple(tpr.tolist()), tuple([float("inf")] + ths.tolist())
            )
        else:
            auroc = float("nan")
            roc = Curve((), (), ())
        k = int(min(max(math.ceil(threshold * self.bins - 1e-9), 0), self.bins - 1))
        prec = _div(tp[k], tp[k] + fp[k], 1.0 if n_pos == 0 else 0.0)
        rec = _div(tp[k], n_pos)
        cm = self._confusion
        prec_a = _div(cm[c, c], cm[:, c].sum(), 1.0 if n_pos == 0 else 0.0)
        rec_a = _div(cm[c, c], cm[c].sum())
        return PixelClassScores(
            self.classes[c],
            c,
            n_pos,
            ap,
            auroc,
            prec,
            rec,
            _f1(prec, rec),
            _f1(prec_a, rec_a),
            pr,
            roc,
        )

    def confusion(self) -> ConfusionMatrix:
        """The argmax confusion matrix, normalised per truth row, without the background row."""
        cm = self._confusion
        rows = []
        for c in range(1, len(self.classes)):
            total = cm[c].sum()
            rows.append(
                tuple((cm[c] / total).tolist())
                if total
                else tuple([float("nan")] * len(self.classes))
            )
        return ConfusionMatrix(
            self.classes[1:],
            self.classes,
            tuple(rows),
            self.classes,
            tuple(tuple(int(v) for v in r) for r in cm),
        )

    def result(self, *, threshold: float = 0.5) -> PixelMetrics:
        """All metrics over what was accumulated; F1 etc. at probability ``threshold``."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if self.n_pixels == 0:
            log.warning("pixel metrics over no pixels: every score is NaN")
        scores = tuple(self._class_scores(c, threshold) for c in range(len(self.classes)))
        defects = scores[1:]

        def mean(values: list[float]) -> float:
            finite = [v for v in values if math.isfinite(v)]
            return float(np.mean(finite)) if finite else float("nan")

        return PixelMetrics(
            scores,
            self.confusion(),
            mean([s.ap for s in defects]),
            mean([s.auroc for s in defects]),
            mean([s.f1 for s in defects]),
            mean([s.f1_argmax for s in defects]),
            float(threshold),
            self.n_images,
            self.n_pixels,
            self.bins,
        )
