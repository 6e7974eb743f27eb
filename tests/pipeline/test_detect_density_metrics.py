"""Planted blobs -> defects; Poisson intervals; object matching on known layouts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from defectwatch.domain import Defect
from defectwatch.pipeline.density import densities, density, poisson_ci95
from defectwatch.pipeline.detect import find_defects
from defectwatch.pipeline.metrics import match, object_scores


def _maps(h=64, w=80, blobs=()):
    probs = np.zeros((3, h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for c, r, k, p in blobs:
        probs[c] = np.maximum(probs[c], p * np.exp(-((yy - r) ** 2 + (xx - k) ** 2) / 8.0))
    probs[0] = 1 - probs[1] - probs[2]
    return probs, np.full_like(probs, 0.05)


def test_planted_blobs_are_found_at_their_centres():
    probs, spread = _maps(blobs=[(1, 20.0, 30.0, 0.9), (2, 40.3, 60.7, 0.8)])
    found = find_defects(probs, spread, pixel_size_nm=(0.1, 0.2))
    assert [d.kind for d in found] == ["trough", "peak"]
    t, p = found
    assert (t.row, t.col) == pytest.approx((20.0, 30.0), abs=0.05)
    assert (p.row, p.col) == pytest.approx((40.3, 60.7), abs=0.3)
    assert t.x_nm == pytest.approx(30.5 * 0.1) and t.y_nm == pytest.approx(20.5 * 0.2)
    assert 0.5 < t.confidence <= 0.9 and t.uncertainty == pytest.approx(0.05)
    assert t.area_nm2 > 0


def test_nothing_reported_from_rows_not_acquired():
    probs, spread = _maps(blobs=[(1, 10.0, 10.0, 0.9), (1, 50.0, 50.0, 0.9)])
    valid = np.arange(64) < 30
    found = find_defects(probs, spread, pixel_size_nm=(0.1, 0.1), valid=valid)
    assert len(found) == 1 and found[0].row < 30


def test_empty_maps_give_an_empty_list():
    probs, spread = _maps()
    assert find_defects(probs, spread, pixel_size_nm=(0.1, 0.1)) == []


def test_poisson_interval_and_density():
    assert poisson_ci95(0) == pytest.approx((0.0, 3.689), abs=1e-3)
    assert poisson_ci95(10) == pytest.approx((4.795, 18.39), abs=1e-2)
    d = density(25, 2500.0)  # 25 defects on 50 x 50 nm
    assert d.per_cm2 == pytest.approx(1e12)
    assert d.ci95_low_per_cm2 < 1e12 < d.ci95_high_per_cm2
    assert density(3, 0.0).per_cm2 == 0.0


def _defect(x, y, kind="trough", conf=0.9):
    return Defect(0, 0, x, y, kind, conf, 0.0, 1.0)


@dataclass
class _Label:
    x_nm: float
    y_nm: float
    kind: str
    visible: bool = True


def test_densities_per_kind_and_total():
    ds = densities([_defect(1, 1), _defect(2, 2, "peak"), _defect(3, 3)], 1e4)
    assert (ds["trough"].count, ds["peak"].count, ds["total"].count) == (2, 1, 3)


def test_hungarian_matching_is_one_to_one_and_optimal():
    pred = np.array([[0.0, 0.0], [0.9, 0.0]])
    truth = np.array([[0.5, 0.0], [1.6, 0.0]])
    pairs = match(pred, truth, radius_nm=1.0)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 0), (1, 1)]  # greedy would pair 1-0


def test_object_scores_count_hidden_labels_as_dont_care():
    preds = [
        _defect(0, 0, conf=0.9),
        _defect(10, 10, conf=0.8),
        _defect(20, 20, conf=0.3),
        _defect(5, 5, "peak", 0.7),
    ]
    labels = [
        _Label(0.2, 0, "trough"),
        _Label(10, 10.5, "trough", visible=False),
        _Label(30, 30, "trough"),
        _Label(5, 5.3, "peak"),
    ]
    s = object_scores(preds, labels, radius_nm=1.0)
    t = s["trough"]
    assert (t.tp, t.fp, t.fn) == (1, 1, 1)
    assert t.precision == 0.5 and t.recall == 0.5 and t.f1 == 0.5
    assert t.ap == pytest.approx(0.5) and t.localisation_nm == pytest.approx(0.2)
    p = s["peak"]
    assert (p.tp, p.fp, p.fn, p.f1, p.ap) == (1, 0, 0, 1.0, 1.0)
