"""The classical LoG baseline: planted blobs found with the right kind, blob_log agreement,
acquired rows respected, tuning finds a working threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from defectwatch.pipeline.baseline import (
    BaselineCase,
    BaselineParams,
    blobs_from_cube,
    detect_baseline,
    normalise,
    scale_space,
    tune_baseline,
)

PX = 0.1  # nm per pixel


@dataclass
class _L:
    x_nm: float
    y_nm: float
    kind: str
    visible: bool = True


def _planted(
    seed: int, n: int = 128, noise: float = 1.0, amp: float = 8.0
) -> tuple[np.ndarray, list[_L]]:
    """Noise + a tilt + a few Gaussian troughs and peaks (sigma 0.5 nm) at known places."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    img = rng.normal(0, noise, (n, n)) + 0.05 * xx + 0.03 * yy
    labels = []
    spots = [(25, 30), (95, 35), (60, 75), (28, 100), (100, 100)]
    for i, (r, c) in enumerate(spots):
        r, c = r + rng.integers(-3, 4), c + rng.integers(-3, 4)
        kind = "trough" if i % 2 == 0 else "peak"
        sign = -1.0 if kind == "trough" else 1.0
        s = 0.5 / PX
        img += sign * amp * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * s * s))
        labels.append(_L((c + 0.5) * PX, (r + 0.5) * PX, kind))
    return img.astype(np.float32), labels


def test_planted_troughs_and_peaks_are_found_where_they_are():
    img, labels = _planted(0)
    found = detect_baseline(
        img, pixel_size_nm=(PX, PX), params=BaselineParams(trough_threshold=2.0, peak_threshold=2.0)
    )
    assert sorted(d.kind for d in found) == sorted(lab.kind for lab in labels)
    for lab in labels:
        near = [d for d in found if math.hypot(d.x_nm - lab.x_nm, d.y_nm - lab.y_nm) < 0.25]
        assert len(near) == 1 and near[0].kind == lab.kind
        d = near[0]
        assert 0.5 < d.confidence < 1.0 and math.isnan(d.uncertainty)
        assert d.area_nm2 == pytest.approx(math.pi * 2 * 0.5**2, rel=0.5)
    assert [d.confidence for d in found] == sorted((d.confidence for d in found), reverse=True)


def test_blob_search_agrees_with_skimage_blob_log():
    feature = pytest.importorskip("skimage.feature")
    img, _ = _planted(1)
    z = normalise(img)
    sigmas = np.linspace(0.4, 1.6, 5) / PX
    ours = blobs_from_cube(-scale_space(z, sigmas), sigmas, threshold=2.0)
    theirs = feature.blob_log(
        -z,
        min_sigma=sigmas[0],
        max_sigma=sigmas[-1],
        num_sigma=5,
        threshold=2.0,
        overlap=0.5,
        exclude_border=False,
    )
    assert sorted(map(tuple, ours[:, :3])) == sorted(map(tuple, theirs[:, :3]))
    assert (ours[:, 3] > 2.0).all()


def test_rows_not_acquired_report_nothing():
    img, labels = _planted(2)
    img[:64] = np.nan
    found = detect_baseline(
        img, pixel_size_nm=(PX, PX), params=BaselineParams(trough_threshold=2.0, peak_threshold=2.0)
    )
    assert found and all(d.row >= 64 for d in found)
    valid = np.ones(128, dtype=bool)
    valid[60:] = False
    img2, _ = _planted(2)
    found = detect_baseline(
        img2,
        pixel_size_nm=(PX, PX),
        valid=valid,
        params=BaselineParams(trough_threshold=2.0, peak_threshold=2.0),
    )
    assert found and all(d.row < 60 for d in found)


def test_tuning_finds_thresholds_that_separate_blobs_from_noise():
    cases = []
    for seed in (3, 4):
        img, labels = _planted(seed)
        cases.append(BaselineCase(img, (PX, PX), labels, name=str(seed)))
    steps: list[tuple[int, int]] = []
    result = tune_baseline(
        cases,
        thresholds=(0.3, 2.0, 50.0),
        sigma_ranges_nm=((0.4, 1.6), (3.0, 4.0)),
        on_progress=lambda done, total: steps.append((done, total)),
    )
    assert result.score == 1.0 and result.f1 == {"trough": 1.0, "peak": 1.0}
    assert result.params.trough_threshold == 2.0 and result.params.peak_threshold == 2.0
    assert (result.params.min_sigma_nm, result.params.max_sigma_nm) == (0.4, 1.6)
    assert steps[-1] == (4, 4) and len(result.table) == 2 * 2 * 3
    with pytest.raises(ValueError, match="at least one"):
        tune_baseline([])


def test_params_round_trip_through_a_dict():
    p = BaselineParams(trough_threshold=0.7)
    assert BaselineParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown"):
        BaselineParams.from_dict({"nonsense": 1})
