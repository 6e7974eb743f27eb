"""Evaluation figures: PNGs are written, small and deterministic; matplotlib stays lazy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from defectwatch.domain import Defect
from defectwatch.pipeline import figures
from defectwatch.pipeline.metrics import ObjectEvaluation
from defectwatch.pipeline.pixel_metrics import PixelAccumulator

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pixel_metrics():
    rng = np.random.default_rng(0)
    acc = PixelAccumulator(bins=200)
    t = rng.choice(3, size=(40, 40), p=[0.8, 0.12, 0.08])
    logits = rng.normal(size=(3, 40, 40)) + 2.0 * np.eye(3)[t].transpose(2, 0, 1)
    p = np.exp(logits)
    acc.update(t, (p / p.sum(axis=0)).astype(np.float32))
    return acc.result()


def test_every_figure_is_a_small_deterministic_png(tmp_path: Path, pixel_metrics):
    ev = ObjectEvaluation(thresholds=(0.0, 0.5, 0.9))
    ev.add([Defect(1, 1, 1, 1, "trough", 0.8, 0.0, 1.0)], [], area_nm2=100.0)
    calls = {
        "cm": lambda p: figures.plot_confusion(pixel_metrics.confusion, p, title="test"),
        "pr": lambda p: figures.plot_pr_curves(pixel_metrics, p),
        "roc": lambda p: figures.plot_roc_curves(pixel_metrics, p, include_background=True),
        "fig3": lambda p: figures.plot_pixel_summary(pixel_metrics, p, title="synthetic"),
        "obj": lambda p: figures.plot_threshold_curves(
            ev.threshold_curves(), p, mark_threshold=0.5
        ),
    }
    for name, call in calls.items():
        data = call(tmp_path / "a" / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and 5_000 < len(data) < 300_000, name
    again = calls["cm"](tmp_path / "b" / "cm.png").read_bytes()
    assert again == (tmp_path / "a" / "cm.png").read_bytes(), "figures are not deterministic"


def test_figures_survive_undefined_metrics(tmp_path: Path, pixel_metrics):
    import cv2

    empty = PixelAccumulator(bins=10).result()
    path = figures.plot_pixel_summary(empty, tmp_path / "empty.png")
    image = cv2.imread(str(path))
    assert image is not None, "not a readable PNG"
    assert image.shape == (480, 1620, 3)  # 13.5 x 4 in at 120 dpi: the three panels
    dark = (image < 128).all(axis=2).mean()
    assert 0.005 < dark < 0.2, dark  # axes, ticks and titles drawn, not a blank or black page
    # the same figure with numbers in it differs (the undefined one is not a stale copy)
    full = cv2.imread(str(figures.plot_pixel_summary(pixel_metrics, tmp_path / "full.png")))
    assert full.shape == image.shape and np.abs(full.astype(int) - image).mean() > 1.0


def test_importing_figures_does_not_import_matplotlib():
    code = (
        "import sys, defectwatch.pipeline.figures; "
        "assert not any(m.startswith('matplotlib') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_best_f1_of_a_curve_flat_below_the_detection_threshold_is_named_at_that_threshold():
    from defectwatch.pipeline.metrics import ThresholdCurve

    thresholds = (0.0, 0.25, 0.5, 0.75)
    flat_then_falling = ThresholdCurve(
        "peak", thresholds, (0.5,) * 4, (0.5,) * 4, (0.6, 0.6, 0.6, 0.3)
    )
    assert figures.best_f1_index(flat_then_falling) == 2
    rising = ThresholdCurve(
        "trough", thresholds, (0.5,) * 4, (0.5,) * 4, (0.2, 0.4, float("nan"), 0.7)
    )
    assert figures.best_f1_index(rising) == 3
    assert figures.best_f1_index(ThresholdCurve("peak", (), (), (), ())) is None
