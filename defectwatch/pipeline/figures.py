"""Evaluation figures as PNG, like the paper's Fig. 3: the normalised confusion matrix, precision-
recall curves with AP, ROC curves with AUROC; plus object-level precision / recall / F1 against
the confidence threshold; and `draw_overlay`, a scan with its defects on a notebook's axis.

matplotlib is imported inside the functions (the object-oriented API on a bare `Figure`, Agg
canvas, no pyplot and no global state), so importing this module costs nothing. Output is
deterministic (no timestamps or version strings in the PNG metadata) and small (120 dpi).
Each ``plot_*`` function takes the result dataclasses and a path, creates the folder, and
returns the path. `draw_overlay` draws on the caller's axis (pyplot only when it is given none).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from defectwatch.domain import Defect
    from defectwatch.pipeline.metrics import ThresholdCurve
    from defectwatch.pipeline.pixel_metrics import ConfusionMatrix, PixelMetrics

DPI = 120
COLOURS = {"background": "#7f7f7f", "trough": "#0a9bc4", "peak": "#c4139b", "total": "#333333"}
_FALLBACK = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")

PathLike = str | os.PathLike[str]


def _colour(name: str, i: int) -> str:
    return COLOURS.get(name, _FALLBACK[i % len(_FALLBACK)])


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def _save(fig: Any, path: PathLike) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return path


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _draw_confusion(ax: Any, cm: ConfusionMatrix) -> None:
    import numpy as np

    data = np.array(cm.normalised, dtype=float).reshape(len(cm.rows), len(cm.columns))
    im = ax.imshow(np.nan_to_num(data, nan=0.0), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cm.columns)), labels=list(cm.columns))
    ax.set_yticks(range(len(cm.rows)), labels=list(cm.rows))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            ax.text(
                j,
                i,
                _fmt(v),
                ha="center",
                va="center",
                fontsize=11,
                color="white" if math.isfinite(v) and v > 0.55 else "black",
            )
    ax.set_title("confusion (row-normalised)")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _classes(metrics: PixelMetrics, include_background: bool) -> list[Any]:
    return [c for c in metrics.classes if include_background or c.index != 0]


def _draw_pr(ax: Any, metrics: PixelMetrics, include_background: bool) -> None:
    for i, c in enumerate(_classes(metrics, include_background)):
        if not c.pr.x:
            continue
        ax.step(
            c.pr.x,
            c.pr.y,
            where="post",
            color=_colour(c.name, i),
            lw=1.8,
            label=f"{c.name} (AP {_fmt(c.ap)})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"precision-recall (mAP {_fmt(metrics.map)})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="lower left", fontsize=9)


def _draw_roc(ax: Any, metrics: PixelMetrics, include_background: bool) -> None:
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, ls="--")
    for i, c in enumerate(_classes(metrics, include_background)):
        if not c.roc.x:
            continue
        ax.plot(
            c.roc.x,
            c.roc.y,
            color=_colour(c.name, i),
            lw=1.8,
            label=f"{c.name} (AUROC {_fmt(c.auroc, 3)})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC (mean AUROC {_fmt(metrics.mean_auroc, 3)})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="lower right", fontsize=9)


def plot_confusion(confusion: ConfusionMatrix, path: PathLike, *, title: str | None = None) -> Path:
    """Heat map of the row-normalised confusion matrix (truth rows without background)."""
    fig = _figure(4.6, 3.2)
    _draw_confusion(fig.add_subplot(), confusion)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_pr_curves(
    metrics: PixelMetrics,
    path: PathLike,
    *,
    include_background: bool = False,
    title: str | None = None,
) -> Path:
    """Precision-recall curve per class with its AP in the legend."""
    fig = _figure(4.4, 4.0)
    _draw_pr(fig.add_subplot(), metrics, include_background)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_roc_curves(
    metrics: PixelMetrics,
    path: PathLike,
    *,
    include_background: bool = False,
    title: str | None = None,
) -> Path:
    """ROC curve per class (one-vs-rest) with its AUROC in the legend."""
    fig = _figure(4.4, 4.0)
    _draw_roc(fig.add_subplot(), metrics, include_background)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_pixel_summary(
    metrics: PixelMetrics,
    path: PathLike,
    *,
    include_background: bool = False,
    title: str | None = None,
) -> Path:
    """The paper's Fig. 3 in one PNG: confusion matrix, PR curves, ROC curves side by side,
    with the argmax F1 per class in the title."""
    fig = _figure(13.5, 4.0)
    axes = fig.subplots(1, 3, width_ratios=[1.2, 1, 1])
    _draw_confusion(axes[0], metrics.confusion)
    _draw_pr(axes[1], metrics, include_background)
    _draw_roc(axes[2], metrics, include_background)
    f1 = ", ".join(f"{c.name} {_fmt(c.f1_argmax)}" for c in metrics.classes if c.index != 0)
    head = f"pixel level, {metrics.n_images} images: F1 {f1} (mean {_fmt(metrics.mean_f1_argmax)})"
    fig.suptitle(f"{title}: {head}" if title else head)
    return _save(fig, path)


def best_f1_index(curve: ThresholdCurve) -> int | None:
    """Index of the best F1 on ``curve`` (None if empty); ties go to the highest threshold,
    since below the threshold the detections were made at the curve is flat."""
    if not curve.f1:
        return None
    return max(
        range(len(curve.f1)),
        key=lambda k: (curve.f1[k] if math.isfinite(curve.f1[k]) else -1.0, curve.thresholds[k]),
    )


def plot_threshold_curves(
    curves: Mapping[str, ThresholdCurve],
    path: PathLike,
    *,
    mark_threshold: float | None = None,
    title: str | None = None,
) -> Path:
    """Object-level precision (dashed), recall (dotted) and F1 (solid) per kind against the
    confidence threshold; ``mark_threshold`` draws a vertical line (e.g. the model's default)."""
    fig = _figure(7.0, 3.8)
    ax = fig.add_subplot()
    for i, (kind, c) in enumerate(curves.items()):
        colour = _colour(kind, i)
        best = best_f1_index(c)
        label = (
            kind
            if best is None
            else (f"{kind} F1\n(best {_fmt(c.f1[best])} at {c.thresholds[best]:.2f})")
        )
        ax.plot(c.thresholds, c.f1, color=colour, lw=2.0, label=label)
        ax.plot(c.thresholds, c.precision, color=colour, lw=1.2, ls="--")
        ax.plot(c.thresholds, c.recall, color=colour, lw=1.2, ls=":")
    ax.plot([], [], color="#555555", ls="--", lw=1.2, label="precision")
    ax.plot([], [], color="#555555", ls=":", lw=1.2, label="recall")
    if mark_threshold is not None:
        ax.axvline(mark_threshold, color="#999999", lw=1)
        # the detections were made at the mark: a lower confidence cut cannot add any
        ax.axvspan(
            0,
            mark_threshold,
            color="#999999",
            alpha=0.12,
            lw=0,
            label="below the detection\nthreshold (no change)",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence threshold")
    ax.set_ylabel("score")
    ax.set_title(title or "object level")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


def draw_overlay(
    image: Any,
    defects: Sequence[Defect],
    *,
    width_nm: float,
    height_nm: float,
    ax: Any = None,
    marker_size: float = 60.0,
    title: str | None = None,
) -> Any:
    """A scan with its defects circled, on a matplotlib axis (for notebooks).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The (flattened) scan, any units; NaN where nothing was acquired. Row 0 = top.
    defects : sequence of Defect
        Drawn at ``(x_nm, y_nm)``: troughs cyan-blue, peaks magenta (`COLOURS`).
    width_nm, height_nm : float
        The frame's size, nm: the axes run from 0 to these, y downwards.
    ax : matplotlib.axes.Axes, optional
        Where to draw; default: a new pyplot figure (shown inline in Jupyter).
    marker_size : float, optional
        Circle size, points^2.
    title : str, optional
        Axis title; the counts per kind are appended.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import numpy as np

    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(
            figsize=(6.0, 6.0 * height_nm / max(width_nm, 1e-9)), layout="constrained"
        )
    data = np.asarray(image, dtype=float)
    finite = data[np.isfinite(data)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    ax.imshow(
        data,
        cmap="gray",
        vmin=lo,
        vmax=hi if hi > lo else lo + 1,
        extent=(0.0, width_nm, height_nm, 0.0),
        interpolation="nearest",
    )
    counts = []
    for i, kind in enumerate(sorted({d.kind for d in defects}, key=_kind_order)):
        mine = [d for d in defects if d.kind == kind]
        ax.scatter(
            [d.x_nm for d in mine],
            [d.y_nm for d in mine],
            s=marker_size,
            facecolors="none",
            edgecolors=_colour(kind, i),
            linewidths=1.2,
            label=f"{kind} ({len(mine)})",
        )
        counts.append(f"{len(mine)} {kind}")
    if counts:
        ax.legend(loc="upper right", fontsize="small", framealpha=0.7)
    ax.set_xlim(0.0, width_nm)
    ax.set_ylim(height_nm, 0.0)
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    ax.set_title(
        f"{title + ': ' if title else ''}{', '.join(counts) or 'no defects'}", fontsize="medium"
    )
    return ax


def _kind_order(kind: str) -> tuple[int, str]:
    order = list(COLOURS)
    return (order.index(kind) if kind in order else len(order), kind)
