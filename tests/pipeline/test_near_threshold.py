"""The near-threshold area the review queue ranks by: planted probability maps."""

from __future__ import annotations

import numpy as np
import pytest

from defectwatch.pipeline.detect import near_threshold_area_nm2


def maps(trough: np.ndarray, peak: np.ndarray | None = None) -> np.ndarray:
    peak = np.zeros_like(trough) if peak is None else peak
    return np.stack([1 - trough - peak, trough, peak]).astype(np.float32)


def test_sure_answers_leave_no_area_and_doubtful_ones_count_by_their_pixels():
    sure = np.zeros((40, 40))
    sure[5:10, 5:10] = 1.0  # a sharp, certain defect
    assert near_threshold_area_nm2(maps(sure), pixel_size_nm=(0.1, 0.1)) == 0.0
    doubtful = sure.copy()
    doubtful[20:26, 20:30] = 0.42  # a candidate just under the threshold: 60 px
    peak = np.zeros((40, 40))
    peak[30:32, 0:5] = 0.6  # a weak peak just over it: 10 px
    area = near_threshold_area_nm2(maps(doubtful, peak), pixel_size_nm=(0.1, 0.2))
    assert area == pytest.approx(70 * 0.1 * 0.2)
    # the band and the threshold decide what is "near"; not-acquired rows never count
    assert near_threshold_area_nm2(maps(doubtful), pixel_size_nm=(1, 1), band=0.05) == 0.0
    assert near_threshold_area_nm2(
        maps(doubtful), pixel_size_nm=(1, 1), threshold=0.3
    ) == pytest.approx(60)
    valid = np.ones(40, bool)
    valid[20:23] = False
    assert near_threshold_area_nm2(
        maps(doubtful), pixel_size_nm=(1, 1), valid=valid
    ) == pytest.approx(30)


def test_background_alone_is_never_near():
    flat = np.zeros((8, 8))
    m = maps(flat)
    m[0] = 0.5  # a background class on the fence says nothing about defects
    assert near_threshold_area_nm2(m, pixel_size_nm=(1, 1)) == 0.0
