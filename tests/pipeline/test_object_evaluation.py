"""Object-level evaluation over many scans: pooled counts and AP, density errors, thresholds."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from defectwatch.domain import Defect
from defectwatch.pipeline.metrics import (
    ObjectEvaluation,
    density_errors,
    object_scores,
    truth_points,
)


def _d(x: float, y: float, kind: str = "trough", conf: float = 0.9) -> Defect:
    return Defect(y, x, x, y, kind, conf, 0.0, 1.0)


@dataclass
class _L:
    x_nm: float
    y_nm: float
    kind: str = "trough"
    visible: bool = True


def test_pooled_counts_are_sums_and_ap_ranks_across_scans():
    ev = ObjectEvaluation()
    # scan A: one true positive at low confidence; scan B: one false positive at high confidence
    a = ev.add([_d(0, 0, conf=0.6)], [_L(0, 0)], area_nm2=100.0, name="A")
    b = ev.add([_d(5, 5, conf=0.9)], [_L(20, 20)], area_nm2=100.0, name="B")
    assert a.scores["trough"].ap == 1.0 and b.scores["trough"].ap == 0.0
    t = ev.scores()["trough"]
    assert (t.tp, t.fp, t.fn) == (1, 1, 1)
    # ranked together: FP first (precision 0), then TP at precision 1/2, recall 1/2
    assert t.ap == pytest.approx(0.25)
    assert t.localisation_nm == pytest.approx(0.0)
    assert ev.scores()["peak"].f1 == 1.0  # nothing to find, nothing found


def test_density_error_leaves_dont_care_out():
    preds = [_d(0, 0), _d(10, 10), _d(30, 30), _d(50, 50, "peak")]
    labels = [_L(0, 0.3), _L(10, 10.2, visible=False), _L(70, 70), _L(80, 80), _L(50, 50, "peak")]
    de = density_errors(preds, labels, area_nm2=1e4)
    t = de["trough"]
    assert (t.predicted_count, t.true_count) == (2, 3)  # the one on a hidden label is left out
    assert t.relative_error == pytest.approx(-1 / 3)
    assert t.true_per_cm2 == pytest.approx(3e10)  # 3 / 1e4 nm^2 = 3e-4 nm^-2 = 3e10 cm^-2
    assert de["peak"].relative_error == 0.0
    assert (de["total"].predicted_count, de["total"].true_count) == (3, 4)
    none = density_errors([_d(0, 0)], [], area_nm2=1e4)["trough"]
    assert none.relative_error != none.relative_error  # NaN: no truth to compare with


def test_threshold_curve_rematches_at_every_threshold():
    # the optimal matching over all detections gives the label to the closer, less confident
    # detection; above its confidence the confident one must take the label
    preds = [_d(0.0, 0.0, conf=0.3), _d(0.8, 0.0, conf=0.9)]
    ev = ObjectEvaluation(thresholds=(0.0, 0.5))
    ev.add(preds, [_L(0.1, 0.0)], area_nm2=100.0)
    c = ev.threshold_curves()["trough"]
    assert c.recall == (1.0, 1.0)
    assert c.precision == (0.5, 1.0)
    assert c.f1[1] == 1.0


def test_pooled_scores_equal_object_scores_for_one_scan():
    preds = [_d(0, 0, conf=0.9), _d(10, 10, conf=0.8), _d(20, 20, conf=0.3), _d(5, 5, "peak", 0.7)]
    labels = [_L(0.2, 0), _L(10, 10.5, visible=False), _L(30, 30), _L(5, 5.3, "peak")]
    ev = ObjectEvaluation()
    ev.add(preds, labels, area_nm2=2500.0)
    assert ev.scores() == object_scores(preds, labels)


def test_summary_is_json_ready():
    ev = ObjectEvaluation()
    ev.add([_d(0, 0)], [_L(0, 0), _L(9, 9, "peak")], area_nm2=2500.0, name="s1")
    ev.add([], [], area_nm2=2500.0, name="s2")
    s = ev.summary()
    text = json.dumps(s, allow_nan=False)
    assert s["n_scans"] == 2 and [x["name"] for x in s["scans"]] == ["s1", "s2"]
    assert s["kinds"]["trough"]["f1"] == 1.0 and s["kinds"]["peak"]["recall"] == 0.0
    # s1 misses its only peak (-1), s2 has none and finds none (0)
    assert s["kinds"]["peak"]["density"]["mean_relative_error"] == -0.5
    assert s["kinds"]["total"]["density"]["pooled"]["true_count"] == 2
    assert "threshold_curves" in s and "null" in text


def test_truth_points_use_the_detectors_pixel_convention():
    @dataclass
    class P:
        row: float
        col: float
        kind: str

    (t,) = truth_points([P(1.0, 2.0, "peak")], pixel_size_nm=(0.5, 0.25))
    assert (t.x_nm, t.y_nm, t.kind, t.visible) == (1.25, 0.375, "peak", True)
