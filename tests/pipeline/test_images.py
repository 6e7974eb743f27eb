"""Rendered images as scans: the paper's JPEG renders, 8/16-bit grey and colour, sizes in names."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from defectwatch.errors import ConfigError, ScanReadError
from defectwatch.pipeline.images import read_image, read_image_as_scan, size_from_name
from defectwatch.pipeline.preprocess import prepare
from tests.conftest import SHARED

REAL = SHARED / "real-wse2"


@pytest.mark.parametrize(
    "name, size",
    [
        ("WSe2-SL445_211118_-1.4V_100x100_Z_030.jpg", (100.0, 100.0)),
        ("WSe2-SL445_211118_-1.4V_30x30_Z_010.jpg", (30.0, 30.0)),
        ("/data/200x200_runs/scan_2.5x2.5nm.png", (2.5, 2.5)),
        ("frame_512x512px_50x40.tif", (50.0, 40.0)),
        ("frame_512x512px.tif", None),
        ("plain.png", None),
    ],
)
def test_size_from_name(name: str, size):
    assert size_from_name(name) == size


def test_the_papers_renders_become_scans_of_their_size():
    if not REAL.is_dir():
        pytest.skip("../shared/fixtures/real-wse2 is not present")
    paths = sorted(REAL.glob("*.jpg"))
    assert paths
    for path in paths[:4]:
        w, h = size_from_name(path.name)
        scan = read_image_as_scan(path, width_nm=None)
        assert (scan.width_nm, scan.height_nm) == (w, h)
        assert scan.data.dtype == np.float32 and scan.data.ndim == 2
        assert scan.nx in (512, 1024, 2048) and scan.unit == "a.u."
        assert scan.acquired_rows.all() and scan.bias_v is None
        assert scan.header["source"] == "image" and 0 <= scan.data.min() < scan.data.max() <= 255


def test_grey_colour_and_sixteen_bit_files(tmp_path: Path):
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65535, size=(24, 32), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    cv2.imwrite(str(tmp_path / "g16.tif"), grey16)
    for name in ("g16.png", "g16.tif"):
        np.testing.assert_array_equal(read_image(tmp_path / name), grey16.astype(np.float32))
    bgr = np.zeros((8, 8, 3), dtype=np.uint8)
    bgr[..., 2] = 200  # pure red
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    np.testing.assert_allclose(read_image(tmp_path / "red.png"), 0.299 * 200, rtol=1e-6)
    bgra = np.dstack([bgr, np.full((8, 8), 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "red_alpha.png"), bgra)
    np.testing.assert_allclose(read_image(tmp_path / "red_alpha.png"), 0.299 * 200, rtol=1e-6)
    scan = read_image_as_scan(tmp_path / "g16.png", width_nm=32.0)
    assert (scan.nx, scan.ny, scan.height_nm) == (32, 24, 24.0)  # square pixels by default
    assert scan.header["image_dtype"] == "uint16"
    scan = read_image_as_scan(tmp_path / "g16.tif", width_nm=10.0, height_nm=5.0, channel="Current")
    assert scan.channel == "Current" and scan.pixel_size_y_nm == pytest.approx(5.0 / 24)


def test_a_wrapped_image_goes_through_preprocessing(tmp_path: Path):
    rng = np.random.default_rng(1)
    img = (rng.random((64, 64)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "x_20x20_.png"), img)
    scan = read_image_as_scan(tmp_path / "x_20x20_.png", width_nm=None)
    image01, valid, _ = prepare(
        scan.data, pixel_size_nm=(scan.pixel_size_x_nm, scan.pixel_size_y_nm), target_nm=None
    )
    assert image01.shape == (64, 64) and valid.all()


def test_errors_name_the_file_and_the_fix(tmp_path: Path):
    bad = tmp_path / "notes_10x10.png"
    bad.write_text("not an image")
    with pytest.raises(ScanReadError, match="not an image"):
        read_image_as_scan(bad, width_nm=10.0)
    with pytest.raises(ScanReadError, match="cannot read"):
        read_image_as_scan(tmp_path / "missing.png", width_nm=10.0)
    cv2.imwrite(str(tmp_path / "nosize.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ConfigError, match="--size-nm"):
        read_image_as_scan(tmp_path / "nosize.png", width_nm=None)
    with pytest.raises(ConfigError, match="width_nm"):
        read_image_as_scan(tmp_path / "nosize.png", width_nm=-1.0)
