"""Reading .sxm files: real files, orientation, and every kind of broken file."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nanonispy2.read import Scan as NanonisScan

from defectwatch.errors import DefectwatchError, ScanIncompleteError, ScanReadError
from defectwatch.pipeline.scan import read_scan
from defectwatch.pipeline.sxm import parse_number, read_layout, write_sxm


def _tiny_sxm(path: Path, *, scan_dir: str = "down", comment=("a comment",)) -> dict:
    """A small valid file with distinct, known content per channel and direction."""
    ny, nx = 6, 8
    z = np.arange(ny * nx, dtype=np.float32).reshape(ny, nx) * 1e-11
    images = {
        ("Z", "forward"): z,
        ("Z", "backward"): z + 1e-9,
        ("Current", "forward"): z * 0 + 5e-11,
    }
    write_sxm(
        path,
        images=images,
        units={"Z": "m", "Current": "A"},
        width_m=4e-9,
        height_m=3e-9,
        scan_dir=scan_dir,
        bias_v=-1.4,
        setpoint_a=6e-11,
        rec_date="18.11.2021",
        rec_time="12:34:56",
        comment=comment,
    )
    return images


def test_bundled_real_files(bundled_sxm):
    s = read_scan(bundled_sxm["FeBr2_Au111_4nm_gen45_down"])
    assert (s.nx, s.ny, s.width_nm, s.height_nm) == (256, 256, 4.0, 4.0)
    assert s.scan_dir == "down" and s.bias_v == pytest.approx(0.05)
    assert s.setpoint_a == pytest.approx(5e-10) and not s.constant_height
    assert s.recorded_at == datetime(2023, 3, 31, 14, 38, 44)
    assert s.data.dtype == np.float32 and s.data.dtype.isnative
    assert s.acquired_fraction == 1.0 and s.acquired_area_nm2 == pytest.approx(16.0)
    assert s.unit == "m" and 1e-12 < np.nanstd(s.data) < 1e-9

    au = read_scan(bundled_sxm["Au111_terraced_44nm_up_rot33"])
    assert au.scan_dir == "up" and au.angle_deg == pytest.approx(33.17)
    assert au.pixel_size_x_nm == pytest.approx(44 / 256)

    di = read_scan(bundled_sxm["diPAMY_Au111_4nm_gen5_constheight_rot135"], channel="Current")
    assert di.constant_height and di.temperature_k == pytest.approx(3.53993)
    assert di.unit == "A" and di.channel_names == ("Z", "Current")


def test_up_scan_is_flipped_and_backward_unmirrored(bundled_sxm):
    path = bundled_sxm["Au111_terraced_44nm_up_rot33"]
    raw = NanonisScan(str(path)).signals["Z"]
    fwd = read_scan(path)
    bwd = read_scan(path, direction="backward")
    np.testing.assert_array_equal(fwd.data, raw["forward"][::-1].astype(np.float32))
    np.testing.assert_array_equal(bwd.data, raw["backward"][::-1, ::-1].astype(np.float32))


@pytest.mark.parametrize("scan_dir", ["up", "down"])
def test_write_read_round_trip_keeps_orientation(tmp_path, scan_dir):
    images = _tiny_sxm(tmp_path / "t.sxm", scan_dir=scan_dir)
    f = read_scan(tmp_path / "t.sxm")
    b = read_scan(tmp_path / "t.sxm", direction="backward")
    c = read_scan(tmp_path / "t.sxm", channel="current")  # case-insensitive fallback
    np.testing.assert_array_equal(f.data, images[("Z", "forward")])
    np.testing.assert_array_equal(b.data, images[("Z", "backward")])
    np.testing.assert_array_equal(c.data, images[("Current", "forward")])
    assert f.scan_dir == scan_dir and f.comment == "a comment"
    assert [c.direction for c in f.channels] == ["both", "forward"]


def test_nanonispy2_reads_what_we_write(tmp_path):
    z = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    write_sxm(
        tmp_path / "t.sxm",
        images={("Z", "forward"): z, ("Z", "backward"): z},
        units={"Z": "m"},
        width_m=4e-9,
        height_m=3e-9,
        scan_dir="up",
    )
    raw = NanonisScan(str(tmp_path / "t.sxm"))
    assert list(raw.header["scan_pixels"]) == [8, 6]
    np.testing.assert_array_equal(raw.signals["Z"]["forward"][::-1], z)


def test_forward_only_channel_has_no_backward(tmp_path):
    _tiny_sxm(tmp_path / "t.sxm")
    with pytest.raises(ScanReadError, match="forward only"):
        read_scan(tmp_path / "t.sxm", channel="Current", direction="backward")


def test_shared_real_files(shared_sxm):
    assert len(shared_sxm) == 5
    for path in shared_sxm.values():
        s = read_scan(path)
        assert s.data.shape == (s.ny, s.nx)
    nan = read_scan(shared_sxm["aborted_allNaN_240x96_up_rot31"])
    assert (nan.nx, nan.ny) == (240, 96) and nan.acquired_fraction == 0.0
    assert nan.acquired_area_nm2 == 0.0 and len(nan.channels) == 10
    si = read_scan(shared_sxm["Si111_7x7_20nm_down_minimalheader"])
    assert si.width_nm == pytest.approx(20.0) and si.bias_v == pytest.approx(-2.0)
    assert si.temperature_k is None and si.comment == ""


def test_upper_case_suffix(tmp_path, bundled_sxm):
    dst = tmp_path / "SCAN_001.SXM"
    shutil.copy(bundled_sxm["FeBr2_Au111_4nm_gen45_down"], dst)
    assert read_scan(dst).nx == 256


def test_truncated_file_is_incomplete(tmp_path, bundled_sxm):
    data = bundled_sxm["FeBr2_Au111_4nm_gen45_down"].read_bytes()
    path = tmp_path / "t.sxm"
    path.write_bytes(data[:-1000])
    with pytest.raises(ScanIncompleteError, match="header promises"):
        read_scan(path)


def test_corrupted_marker_is_a_read_error(tmp_path, bundled_sxm):
    data = bytearray(bundled_sxm["FeBr2_Au111_4nm_gen45_down"].read_bytes())
    at = data.find(b"\x1a\x04")
    data[at] = ord("X")
    (tmp_path / "t.sxm").write_bytes(bytes(data))
    with pytest.raises(ScanReadError, match="marker") as info:
        read_scan(tmp_path / "t.sxm")
    assert not isinstance(info.value, ScanIncompleteError)


def test_trailing_bytes_accepted_and_logged(tmp_path, bundled_sxm, caplog):
    path = tmp_path / "t.sxm"
    path.write_bytes(bundled_sxm["FeBr2_Au111_4nm_gen45_down"].read_bytes() + b"\0" * 12)
    with caplog.at_level(logging.WARNING):
        assert read_scan(path).nx == 256
    assert "12 trailing bytes" in caplog.text


def test_blank_lines_in_tables_and_non_ascii_comment(tmp_path, bundled_sxm):
    data = bundled_sxm["FeBr2_Au111_4nm_gen45_down"].read_bytes()
    # a converter-made file: blank line inside the Z-CONTROLLER table; a cp1252 comment
    data = data.replace(b":Z-CONTROLLER:\n", b":Z-CONTROLLER:\n\n", 1)
    data = data.replace(b"LI: 10mVrms", b"Probe \xb5-tip \xe9t\xe9 \x81", 1)
    # keep the data offset consistent: the header grew, so the file is still complete
    (tmp_path / "t.sxm").write_bytes(data)
    s = read_scan(tmp_path / "t.sxm")
    assert s.comment.startswith("Probe µ-tip été")
    assert s.setpoint_a == pytest.approx(5e-10)


def test_missing_channel_names_the_ones_present(tmp_path):
    _tiny_sxm(tmp_path / "t.sxm")
    with pytest.raises(ScanReadError, match="has Z, Current"):
        read_scan(tmp_path / "t.sxm", channel="Frequency_Shift")


@pytest.mark.parametrize(
    "content,error",
    [
        (b"", ScanIncompleteError),
        (b":NANONIS", ScanIncompleteError),
        (b":NANONIS_VERSION:\n2\n:SCANIT_TYPE:\n", ScanIncompleteError),
        (b"hello, I am a text file\n", ScanReadError),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, ScanReadError),
    ],
)
def test_empty_partial_and_foreign_files(tmp_path, content, error):
    path = tmp_path / "x.sxm"
    path.write_bytes(content)
    with pytest.raises(error):
        read_scan(path)


def test_missing_file_is_a_read_error(tmp_path):
    with pytest.raises(ScanReadError, match="cannot read"):
        read_scan(tmp_path / "nope.sxm")


@pytest.mark.parametrize(
    "text,value",
    [
        ("4.000000E-9", 4e-9),
        ("1.351E+2", 135.1),
        ("1.55k", 1550.0),
        ("Inf", float("inf")),
        ("n/a", None),
        ("TRUE", None),
        ("  -2E-3 ", -2e-3),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


# -- property tests: nothing a file contains escapes as another exception ------------------


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("tiny") / "t.sxm"
    _tiny_sxm(path)
    return path.read_bytes()


def _read_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "h.sxm"
    path.write_bytes(data)
    try:
        read_scan(path)
        read_scan(path, channel="Current")
    except DefectwatchError:
        pass


_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_truncation_at_any_byte(tmp_path, tiny_bytes, cut):
    cut = cut % len(tiny_bytes)
    path = tmp_path / "h.sxm"
    path.write_bytes(tiny_bytes[:cut])
    with pytest.raises(DefectwatchError):
        read_scan(path)


@_SETTINGS
@given(pos=st.integers(min_value=0, max_value=10_000), byte=st.integers(0, 255))
def test_any_single_corrupted_byte(tmp_path, tiny_bytes, pos, byte):
    data = bytearray(tiny_bytes)
    data[pos % len(data)] = byte
    _read_bytes(tmp_path, bytes(data))


@_SETTINGS
@given(blob=st.binary(max_size=3000))
def test_random_files(tmp_path, blob):
    _read_bytes(tmp_path, blob)


_TAG = st.sampled_from(
    [
        "SCAN_PIXELS",
        "SCAN_RANGE",
        "SCAN_OFFSET",
        "SCAN_DIR",
        "BIAS",
        "DATA_INFO",
        "Z-CONTROLLER",
        "COMMENT",
        "REC_DATE",
        "SCAN_ANGLE",
    ]
)


@_SETTINGS
@given(
    tags=st.lists(st.tuples(_TAG, st.text(max_size=60)), max_size=12),
    payload=st.binary(max_size=2000),
)
def test_garbage_headers(tmp_path, tags, payload):
    header = ":NANONIS_VERSION:\n2\n" + "".join(f":{k}:\n{v}\n" for k, v in tags)
    data = header.encode("utf-8", "replace") + b":SCANIT_END:\n\n\n\x1a\x04" + payload
    _read_bytes(tmp_path, data)


@_SETTINGS
@given(
    nx=st.integers(-5, 70000),
    ny=st.integers(-5, 70000),
    direction=st.sampled_from(["both", "forward", "backward", "sideways", ""]),
)
def test_header_promises_checked_before_parsing(tmp_path, tiny_bytes, nx, ny, direction):
    data = tiny_bytes.replace(b"         8         6", f"{nx:10d}{ny:10d}".encode(), 1)
    data = data.replace(b"\tboth\t", f"\t{direction}\t".encode(), 1)
    _read_bytes(tmp_path, data)


def test_layout_expected_size_matches_real_files(bundled_sxm):
    for path in bundled_sxm.values():
        layout = read_layout(path)
        assert layout.expected_size == path.stat().st_size
