"""The paper's pixel-level metrics: planted answers, agreement with scikit-learn, accumulation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defectwatch.pipeline.pixel_metrics import PixelAccumulator


def _truth(rng: np.random.Generator, shape: tuple[int, int] = (48, 48)) -> np.ndarray:
    return rng.choice(3, size=shape, p=[0.8, 0.12, 0.08])


def _one_hot(truth: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[truth].transpose(2, 0, 1)


def _noisy(rng: np.random.Generator, truth: np.ndarray, signal: float = 2.0) -> np.ndarray:
    logits = rng.normal(size=(3, *truth.shape)) + signal * _one_hot(truth)
    p = np.exp(logits)
    return (p / p.sum(axis=0)).astype(np.float32)


def test_perfect_prediction_scores_one_with_a_diagonal_confusion():
    rng = np.random.default_rng(0)
    acc = PixelAccumulator()
    for _ in range(3):
        t = _truth(rng)
        acc.update(t, _one_hot(t))
    m = acc.result()
    for c in m.classes:
        assert c.ap == pytest.approx(1.0) and c.auroc == pytest.approx(1.0)
        assert c.f1 == pytest.approx(1.0) and c.f1_argmax == pytest.approx(1.0)
    assert m.map == pytest.approx(1.0) and m.mean_auroc == pytest.approx(1.0)
    assert m.confusion.rows == ("trough", "peak")
    assert m.confusion.columns == ("background", "trough", "peak")
    np.testing.assert_allclose(m.confusion.normalised, [[0, 1, 0], [0, 0, 1]])
    assert m.n_images == 3 and m.n_pixels == 3 * 48 * 48


def test_random_prediction_gives_auroc_one_half_and_ap_the_prevalence():
    rng = np.random.default_rng(1)
    acc = PixelAccumulator()
    truths = []
    for _ in range(4):
        t = _truth(rng, (64, 64))
        truths.append(t)
        p = rng.random((3, 64, 64)).astype(np.float32)
        acc.update(t, p / p.sum(axis=0))
    m = acc.result()
    allt = np.concatenate([t.ravel() for t in truths])
    for c in m.classes:
        assert c.auroc == pytest.approx(0.5, abs=0.03)
        assert c.ap == pytest.approx(np.mean(allt == c.index), abs=0.03)


def test_agrees_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    acc = PixelAccumulator(bins=1000)
    ts, ps = [], []
    for _ in range(3):
        t = _truth(rng)
        p = _noisy(rng, t)
        acc.update(t, p)
        ts.append(t.ravel())
        ps.append(p.reshape(3, -1))
    t, p = np.concatenate(ts), np.concatenate(ps, axis=1)
    m = acc.result(threshold=0.5)
    pred = p.argmax(axis=0)
    f1 = metrics.f1_score(t, pred, labels=[0, 1, 2], average=None)
    for c in m.classes:
        k = c.index
        assert c.ap == pytest.approx(metrics.average_precision_score(t == k, p[k]), abs=2e-3)
        assert c.auroc == pytest.approx(metrics.roc_auc_score(t == k, p[k]), abs=1e-3)
        assert c.f1_argmax == pytest.approx(f1[k])
        assert c.f1 == pytest.approx(metrics.f1_score(t == k, p[k] >= 0.5), abs=1e-9)
    cm = metrics.confusion_matrix(t, pred, labels=[0, 1, 2], normalize="true")
    np.testing.assert_allclose(m.confusion.normalised, cm[1:])


def test_accumulating_image_by_image_equals_one_update_and_merge():
    rng = np.random.default_rng(3)
    t = _truth(rng, (64, 64))
    p = _noisy(rng, t)
    whole = PixelAccumulator()
    whole.update(t, p)
    parts, other = PixelAccumulator(), PixelAccumulator()
    parts.update(t[:20], p[:, :20])
    other.update(t[20:], p[:, 20:])
    parts.merge(other)
    a, b = whole.result().to_dict(), parts.result().to_dict()
    a.pop("n_images")
    b.pop("n_images")
    assert a == b


def test_ignore_mask_and_non_finite_probabilities_leave_pixels_out():
    rng = np.random.default_rng(4)
    t = _truth(rng)
    p = _one_hot(t)
    wrong = p.copy()
    wrong[:, :10] = _one_hot(np.full((10, 48), 2))  # wrong in the top rows ...
    ignore = np.zeros(t.shape, dtype=bool)
    ignore[:10] = True  # ... which are ignored
    wrong[:, 10, :] = np.nan  # and one row not finite
    acc = PixelAccumulator()
    acc.update(t, wrong, ignore=ignore)
    m = acc.result()
    assert m.n_pixels == 37 * 48
    assert m.map == pytest.approx(1.0)


def test_bad_inputs_are_refused_with_clear_messages():
    acc = PixelAccumulator()
    t = np.zeros((4, 4), dtype=int)
    with pytest.raises(ValueError, match="C=3"):
        acc.update(t, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="differ"):
        acc.update(t, np.zeros((3, 4, 5)))
    t[0, 0] = 7
    with pytest.raises(ValueError, match=r"\[7\]"):
        acc.update(t, np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="threshold"):
        acc.result(threshold=1.5)


def test_result_is_json_ready_even_without_a_class():
    t = np.zeros((8, 8), dtype=int)
    t[2:4, 2:4] = 1  # no peak pixels anywhere
    acc = PixelAccumulator(bins=100)
    acc.update(t, _one_hot(t))
    m = acc.result()
    peak = m.by_name("peak")
    assert np.isnan(peak.ap) and np.isnan(peak.auroc)
    assert m.map == pytest.approx(1.0)  # the mean skips the undefined class
    text = json.dumps(m.to_dict(), allow_nan=False)
    assert '"ap": null' in text
    short = m.to_dict(curves=False)
    assert "pr" not in short["classes"][1] and short["confusion"]["rows"] == ["trough", "peak"]


def test_threshold_moves_precision_and_recall():
    t = np.array([[1, 1, 0, 0]])
    p = np.zeros((3, 1, 4), dtype=np.float32)
    p[1] = [[0.9, 0.4, 0.6, 0.1]]
    p[0] = 1 - p[1]
    acc = PixelAccumulator(bins=10)
    acc.update(t, p)
    lo, hi = (
        acc.result(threshold=0.3).by_name("trough"),
        acc.result(threshold=0.7).by_name("trough"),
    )
    assert (lo.precision, lo.recall) == (pytest.approx(2 / 3), pytest.approx(1.0))
    assert (hi.precision, hi.recall) == (pytest.approx(1.0), pytest.approx(0.5))
    assert hi.pr.x[0] == 0.0 and hi.pr.y[0] == 1.0 and hi.roc.x[-1] == pytest.approx(1.0)
