"""Preprocessing: exact fits, NaN-awareness, masked re-flattening, resampling maps."""

from __future__ import annotations

import numpy as np
import pytest

from defectwatch.pipeline.preprocess import (
    PreprocessParams,
    Resampling,
    clahe,
    enhance,
    flatten,
    flatten_lines,
    plane_correct,
    prepare,
    resample,
)

RNG = np.random.default_rng(7)


def _grid(ny=64, nx=80):
    return np.mgrid[0:ny, 0:nx].astype(np.float64)


def test_plane_correct_removes_a_plane():
    yy, xx = _grid()
    z = 3e-9 + 2e-11 * xx - 5e-11 * yy
    assert np.abs(plane_correct(z)).max() < 1e-15


def test_flatten_lines_removes_per_line_quadratics():
    yy, xx = _grid()
    rows = RNG.normal(size=(64, 3))
    z = rows[:, :1] + rows[:, 1:2] * xx / 80 + rows[:, 2:3] * (xx / 80) ** 2
    assert np.abs(flatten_lines(z, order=2)).max() < 1e-9


def test_nan_rows_take_no_part_in_the_fit():
    yy, xx = _grid()
    z = 1e-9 * (0.3 * xx + 0.1 * yy) / 80 + RNG.normal(0, 1e-12, xx.shape)
    z_nan = z.copy()
    z_nan[40:] = np.nan  # an aborted scan
    out = flatten(z_nan)
    assert np.isnan(out[40:]).all() and np.isfinite(out[:40]).all()
    np.testing.assert_allclose(out[:40], flatten(z[:40]), atol=1e-14)
    assert np.nanstd(out) < 2e-12


def _with_deep_trough():
    yy, xx = _grid(96, 128)
    lattice = 5e-12 * np.cos(xx * 1.3) * np.cos(yy * 1.1)
    trough = -300e-12 * np.exp(-((xx - 40) ** 2 + (yy - 48) ** 2) / (2 * 4.0**2))
    tilt = 1e-9 * xx / 128
    return lattice + trough + tilt + RNG.normal(0, 1e-12, xx.shape), trough


def test_masked_flattening_leaves_no_streak_beside_strong_defects():
    z, _ = _with_deep_trough()

    def streak(flat):
        """Largest offset of a line's median, left and right of the trough, from the rest."""
        worst = 0.0
        for cols in (slice(0, 25), slice(64, None)):
            med = np.median(flat[:, cols], axis=1)
            worst = max(worst, float(np.abs(med - np.median(med)).max()))
        return worst

    plain = streak(flatten(z, mask_sigma=0))
    masked = streak(flatten(z))
    assert plain > 10e-12  # an unmasked quadratic fit drags the lines through the trough
    assert masked < 0.1 * plain and masked < 2e-12


def test_resampling_maps_coordinates_exactly():
    m = Resampling((600, 400), (300, 256))
    rows, cols = np.array([0.0, 12.3, 599.0]), np.array([0.0, 100.5, 399.0])
    back = m.to_original(*m.to_resampled(rows, cols))
    np.testing.assert_allclose(back, (rows, cols), atol=1e-12)


@pytest.mark.parametrize(
    "shape,px,target", [((200, 300), (0.05, 0.08), 0.1), ((120, 90), (0.2, 0.2), 0.1)]
)
def test_resampled_feature_maps_back_to_its_pixel(shape, px, target):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    r0, c0 = shape[0] * 0.37, shape[1] * 0.61
    # a blob of 0.6 nm radius, in physical units
    z = np.exp(-(((yy - r0) * px[1]) ** 2 + ((xx - c0) * px[0]) ** 2) / (2 * 0.6**2))
    out, m = resample(z, pixel_size_nm=px, target_nm=target)
    assert out.shape == (round(shape[0] * px[1] / target), round(shape[1] * px[0] / target))
    w = np.clip(out - 0.5, 0, None)
    oy, ox = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
    rr, cc = m.to_original((w * oy).sum() / w.sum(), (w * ox).sum() / w.sum())
    assert abs(rr - r0) < 0.3 and abs(cc - c0) < 0.3


def test_resampling_keeps_unacquired_lines_nan():
    z = RNG.normal(size=(100, 100)).astype(np.float32)
    z[70:] = np.nan
    out, _ = resample(z, pixel_size_nm=(0.1, 0.1), target_nm=0.2)
    assert np.isnan(out[36:]).all() and np.isfinite(out[:34]).all()


def test_enhance_gives_unit_range_float32_without_nan():
    z, _ = _with_deep_trough()
    z = flatten(z)
    z[80:] = np.nan
    out = enhance(z)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.ptp(out[80:]) == 0.0  # rows not acquired carry no structure


def test_clahe_8_and_16_bit_agree_roughly():
    img = np.clip(RNG.normal(0.5, 0.1, (64, 64)), 0, 1).astype(np.float32)
    a = clahe(img, bits=8)
    b = clahe(img, bits=16)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_clahe_tiles_never_grow_wider_than_the_limit():
    """Up to 8 x 96 px the paper's 8 x 8 tiles; beyond, as many tiles as keep them <= 96 px,
    so a few deep features in a large frame cannot flatten the contrast of all the others."""
    small = np.clip(RNG.normal(0.5, 0.1, (200, 768)), 0, 1).astype(np.float32)
    np.testing.assert_array_equal(clahe(small, max_tile_px=96), clahe(small, tiles=8))
    big = np.clip(RNG.normal(0.5, 0.02, (1536, 1536)), 0, 1).astype(np.float32)
    rows, cols = np.mgrid[:1536, :1536]
    dips = ((rows % 64 - 32) ** 2 + (cols % 64 - 32) ** 2) < 9  # small faint defects
    big[dips] -= 0.05
    big[700:760, 700:760] = 0.0  # one deep hole
    for limit, expected_tiles in ((96, 16), (0, 8)):
        out = clahe(big, max_tile_px=limit)
        np.testing.assert_array_equal(out, clahe(big, tiles=expected_tiles))
    far = np.abs(rows - 730) + np.abs(cols - 730) > 300
    contrast = {
        limit: float(np.median(out[~dips & far]) - np.median(out[dips & far]))
        for limit, out in ((96, clahe(big, max_tile_px=96)), (0, clahe(big)))
    }
    assert contrast[96] > 1.5 * contrast[0]  # measured 0.26 against 0.12


def test_a_version_without_the_tile_limit_keeps_the_fixed_tiles_it_was_trained_with():
    assert PreprocessParams().clahe_max_tile_px == 96
    legacy = PreprocessParams().to_dict()
    del legacy["clahe_max_tile_px"]
    assert PreprocessParams.from_dict(legacy).clahe_max_tile_px == 0


def test_prepare_returns_model_input_and_mapping():
    z, _ = _with_deep_trough()
    image, valid, m = prepare(z, pixel_size_nm=(0.1, 0.1), target_nm=0.2)
    assert image.shape == valid.shape == (48, 64) and m.shape_out == (48, 64)
    assert valid.all() and 0 <= image.min() and image.max() <= 1


def test_params_round_trip_and_reject_unknown_keys():
    p = PreprocessParams(clahe_bits=8, clip_percentiles=(1.0, 99.0))
    assert PreprocessParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown"):
        PreprocessParams.from_dict({"sharpen": 1})
