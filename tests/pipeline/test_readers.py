"""Every real file of every supported format reads as expected (or fails as it should), and
nothing a file holds lets another exception escape a reader.

The files are in ../shared/fixtures/real-formats (see its SOURCES.md); what is checked against
what is in docs/formats.md.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from defectwatch.errors import NotAnImageError, ScanIncompleteError, ScanReadError
from defectwatch.pipeline.readers import (
    DEFAULT_PATTERN,
    FORMATS,
    detect_format,
    expected_size,
    is_scan_name,
    read_scan,
)

SM4_TOPO = "topo_ABC_Graphite-Sample5_9K_2021_08_13_19_11_10_065.sm4"
SM4_HOPG = "hopg_300k_2020_08_11_16_04_06_999.sm4"
SM4_SPECTRA = "Iz_gold_9K_2019_12_18_13_49_32_752.sm4"
MTRX = "20201111--4_1.Z_mtrx"
MTRX_CHAIN = "20201111_0001.mtrx"


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the rows both images acquired (each row's mean removed)."""
    rows = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    a = a[rows] - a[rows].mean(axis=1, keepdims=True)
    b = b[rows] - b[rows].mean(axis=1, keepdims=True)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_every_fixture_file_reads_or_fails_as_described(shared_formats):
    images = {
        n: p
        for n, p in shared_formats.items()
        if n not in (SM4_SPECTRA, MTRX_CHAIN, "gwyfile_test.gwy")
    }
    assert len(images) == 11  # 2 sm4, 1 MATRIX, 4 Createc, 1 gwy, 3 sxm
    for name, path in images.items():
        s = read_scan(path)
        assert s.data.dtype == np.float32 and s.data.dtype.isnative, name
        assert s.data.shape == (s.ny, s.nx) and s.unit == "m", name
        assert 0 < s.acquired_fraction <= 1 and s.width_nm > 0, name
        assert s.file_format == detect_format(path).name, name
    with pytest.raises(NotAnImageError, match="no image in this file"):
        read_scan(shared_formats[SM4_SPECTRA])
    with pytest.raises(NotAnImageError, match="result chain"):
        read_scan(shared_formats[MTRX_CHAIN])
    with pytest.raises(ScanReadError, match="no lateral unit"):
        read_scan(shared_formats["gwyfile_test.gwy"])


# -- RHK .sm4 (spym's parser) -----------------------------------------------------------------


def test_rhk_sm4_pages_units_and_metadata(shared_formats):
    s = read_scan(shared_formats[SM4_TOPO])
    assert (s.nx, s.ny) == (128, 128) and s.width_nm == pytest.approx(75.0)
    assert s.pixel_size_x_nm == pytest.approx(0.5859375) and s.channel == "Topography"
    assert [(c.name, c.unit, c.direction) for c in s.channels] == [
        ("LIA Current", "A", "both"),
        ("Current", "A", "both"),
        ("Topography", "m", "both"),
    ]
    assert s.bias_v == pytest.approx(0.5) and s.setpoint_a == pytest.approx(1e-10)
    assert s.recorded_at == datetime(2021, 8, 13, 19, 8, 26) and s.scan_dir == "down"
    assert s.acquired_fraction == 1.0 and 1e-10 < np.nanstd(s.data) < 1e-8
    cur = read_scan(shared_formats[SM4_TOPO], channel="current", direction="backward")
    assert cur.unit == "A" and cur.channel == "Current" and cur.direction == "backward"
    hopg = read_scan(shared_formats[SM4_HOPG])  # six image pages, two line-spectra pages
    assert (hopg.nx, hopg.ny, hopg.width_nm) == (256, 256, pytest.approx(100.0))
    assert hopg.pixel_size_y_nm == pytest.approx(0.390625)


def test_rhk_backward_is_unmirrored_like_forward(shared_formats):
    for name in (SM4_TOPO, SM4_HOPG):
        f = read_scan(shared_formats[name]).data
        b = read_scan(shared_formats[name], direction="backward").data
        assert corr(f, b) > 0.9 and corr(f, b[:, ::-1]) < 0, name


def test_rhk_up_scan_is_flipped_as_gwyddion_does(shared_formats, tmp_path):
    """Gwyddion's rhk-sm4.c flips rows when Yscale > 0 (stored bottom line first): make the
    Topography pages' Yscale positive (it follows Xscale, same value) and the rows flip."""
    raw = bytearray(shared_formats[SM4_TOPO].read_bytes())
    neg = struct.pack("<f", -5.859375e-10)
    pos = struct.pack("<f", 5.859375e-10)
    at, patched = 0, 0
    while (at := raw.find(neg + neg, at)) >= 0:
        raw[at + 4 : at + 8] = pos  # (Xscale, Yscale) -> (Xscale, +Yscale)
        at += 8
        patched += 1
    assert patched == 6  # every image page
    up = tmp_path / "up.sm4"
    up.write_bytes(bytes(raw))
    down = read_scan(shared_formats[SM4_TOPO])
    flipped = read_scan(up)
    assert flipped.scan_dir == "up"
    np.testing.assert_array_equal(flipped.data, down.data[::-1])


def test_rhk_aborted_scan_has_nan_lines_after_its_completed_line_count(shared_formats, tmp_path):
    """CompletedLineCount (a UTF-16 string, "0128" in every page of the complete file) set to
    "0100": lines 100-127 were never scanned; a down scan (Yscale < 0) fills from the top."""
    raw = shared_formats[SM4_TOPO].read_bytes()
    count = b"\x04\x00" + "0128".encode("utf-16-le")
    assert raw.count(count) == 6
    cut = tmp_path / "aborted.sm4"
    cut.write_bytes(raw.replace(count, b"\x04\x00" + "0100".encode("utf-16-le")))
    s = read_scan(cut)
    full = read_scan(shared_formats[SM4_TOPO])
    assert s.acquired_fraction == pytest.approx(100 / 128) and s.ny == 128
    assert np.isnan(s.data[100:]).all()
    np.testing.assert_array_equal(s.data[:100], full.data[:100])


def test_rhk_spectra_only_file_says_no_image(shared_formats):
    with pytest.raises(NotAnImageError, match="Iz_gold.*no image in this file"):
        expected_size(str(shared_formats[SM4_SPECTRA]))
    assert expected_size(str(shared_formats[SM4_TOPO])) == 412_950


# -- Omicron MATRIX (access2theMatrix) --------------------------------------------------------


@pytest.fixture
def matrix_dir(shared_formats, tmp_path) -> Path:
    for name in (MTRX, MTRX_CHAIN):
        shutil.copy(shared_formats[name], tmp_path / name)
    return tmp_path


def test_matrix_scale_units_and_metadata(matrix_dir):
    s = read_scan(matrix_dir / MTRX)
    assert (s.nx, s.ny, s.width_nm, s.height_nm) == (400, 400, 100.0, 100.0)
    assert s.pixel_size_x_nm == pytest.approx(0.25) and s.unit == "m"
    assert s.bias_v == pytest.approx(0.6) and s.setpoint_a == pytest.approx(3e-10)
    assert s.scan_dir == "up" and s.angle_deg == 0.0 and s.acquired_fraction == 1.0
    assert s.recorded_at is not None and s.recorded_at.year == 2020
    b = read_scan(matrix_dir / MTRX, direction="backward")
    assert corr(s.data, b.data) > 0.9 and corr(s.data, b.data[:, ::-1]) < 0


def _atad(raw: bytes) -> tuple[int, np.ndarray]:
    at = raw.find(b"ATAD")
    (length,) = struct.unpack("<I", raw[at + 4 : at + 8])
    return at, np.frombuffer(raw, "<i4", count=length // 4, offset=at + 8)


def test_matrix_first_up_line_is_the_bottom_row_as_in_gwyddion(matrix_dir):
    """Decoded without the library: the first 400 raw values (the first forward line of an up
    scan) / the Z transfer factor (2.4e15 raw per m in its chain file) = the bottom row."""
    _, values = _atad((matrix_dir / MTRX).read_bytes())
    s = read_scan(matrix_dir / MTRX)
    np.testing.assert_allclose(s.data[-1], values[:400] / 2.4e15, rtol=1e-6)
    # the backward trace of the same line, stored right to left
    b = read_scan(matrix_dir / MTRX, direction="backward")
    np.testing.assert_allclose(b.data[-1], values[400:800][::-1] / 2.4e15, rtol=1e-6)


def test_matrix_aborted_scan_keeps_its_frame_with_nan_rows(matrix_dir):
    """A scan stopped after 150 of 400 lines: fewer values captured (CSED count, ATAD and
    TLKB lengths shrink); access2theMatrix crops it, we pad it back: NaN at the top."""
    raw = bytearray((matrix_dir / MTRX).read_bytes())
    kept = 150 * 800
    at, _ = _atad(bytes(raw))
    csed = raw.find(b"CSED")
    raw[csed + 8 + 24 : csed + 8 + 28] = struct.pack("<i", kept)  # captured values
    raw[at + 4 : at + 8] = struct.pack("<I", kept * 4)
    (tlkb,) = struct.unpack("<I", raw[16:20])
    raw[16:20] = struct.pack("<I", tlkb - (320_000 - kept) * 4)
    full = read_scan(matrix_dir / MTRX)
    # the chain file knows the data file by its name: the cut copy takes it
    (matrix_dir / MTRX).write_bytes(bytes(raw[: at + 8 + kept * 4]))
    s = read_scan(matrix_dir / MTRX)
    assert (s.ny, s.height_nm) == (400, 100.0)
    assert s.acquired_fraction == pytest.approx(150 / 400)
    assert np.isnan(s.data[:250]).all() and np.isfinite(s.data[250:]).all()
    np.testing.assert_array_equal(s.data[250:], full.data[250:])  # the lines it did scan


def test_matrix_waits_for_its_result_chain_file(shared_formats, tmp_path):
    alone = tmp_path / MTRX
    shutil.copy(shared_formats[MTRX], alone)
    for call in (read_scan, expected_size):
        with pytest.raises(ScanIncompleteError, match="20201111_0001.mtrx is not beside it"):
            call(str(alone))
    shutil.copy(shared_formats[MTRX_CHAIN], tmp_path / MTRX_CHAIN)
    assert expected_size(str(alone)) == alone.stat().st_size


def test_matrix_file_is_one_channel(matrix_dir):
    with pytest.raises(ScanReadError, match="no channel 'Current'; it has Z"):
        read_scan(matrix_dir / MTRX, channel="Current")


# -- Createc .dat (our reader) ----------------------------------------------------------------


def _createc_planes(path: Path) -> tuple[dict[str, str], np.ndarray]:
    """Decoded independently of the reader: header dict, (4, ny, nx) raw DAC planes."""
    raw = path.read_bytes()
    at = raw.find(b"\nDATA")
    header = dict(
        line.split("=", 1) for line in raw[:at].decode("latin-1").split("\r\n") if "=" in line
    )
    nx = int(header["Num.X / Num.X"])
    ny = int(header["Num.Y / Num.Y"])
    values = np.frombuffer(zlib.decompress(raw[at + 5 :]), "<f4")
    return header, values[1 : 1 + 4 * nx * ny].reshape(4, ny, nx)


@pytest.mark.parametrize(
    "name, px, nm, bias_v, rows",
    [
        ("createc_scan_molecular_30nm_pos.dat", 512, 30.0, 1.1552, 512),
        ("createc_scan_atomic_11nm.dat", 512, 11.25, -0.55, 512),
        ("createc_scan_step_20nm.dat", 512, 19.97, 0.02742, 330),
        ("A250407.141806.dat", 256, 99.85, 0.6538, 9),
    ],
)
def test_createc_files(shared_formats, name, px, nm, bias_v, rows):
    s = read_scan(shared_formats[name])
    assert (s.nx, s.ny) == (px, px) and s.width_nm == pytest.approx(nm, abs=0.01)
    assert s.bias_v == pytest.approx(bias_v) and s.unit == "m" and s.scan_dir == "down"
    assert s.acquired_rows.sum() == rows and s.acquired_fraction == pytest.approx(rows / px)
    assert np.isfinite(s.data[:rows]).all() and np.isnan(s.data[rows:]).all()
    assert [(c.name, c.unit, c.direction) for c in s.channels] == [
        ("Z", "m", "both"),
        ("Current", "A", "both"),
    ]
    b = read_scan(shared_formats[name], direction="backward")
    assert corr(s.data, b.data) > 0.5 and corr(s.data, b.data[:, ::-1]) < corr(s.data, b.data)


def test_createc_rows_as_stored_and_heights_from_the_dac_scale(shared_formats):
    """Rows kept in stored order (Gwyddion's createc.c), the 4 unused bytes skipped, Z =
    DAC x 20 V / 2^20 x GainZ x ZPiezoconst [Å/V]."""
    path = shared_formats["createc_scan_step_20nm.dat"]
    header, planes = _createc_planes(path)
    assert header["DAC-Type"] == "20bit" and header["GainZ / GainZ"] == "3"
    scale = 20 / 2**20 * 3 * float(header["ZPiezoconst"]) * 1e-10
    s = read_scan(path)
    np.testing.assert_allclose(s.data[:330], planes[0][:330] * scale, rtol=1e-6)
    current = read_scan(path, channel="Current")
    assert current.unit == "A" and np.isfinite(current.data[:330]).all()


def test_createc_step_height_is_one_atomic_step(shared_formats):
    """A physical check of the height scale: the step file's two terraces differ by one
    monatomic step of a close-packed metal (about 2 Å), not 0.6 Å (GainZ left out) or 7 Å."""
    s = read_scan(shared_formats["createc_scan_step_20nm.dat"])
    z = s.data[s.acquired_rows].astype(np.float64)
    z = z - np.median(z[:, :64], axis=1, keepdims=True)  # level each line on its left part
    counts, edges = np.histogram(z, bins=100)
    peaks = [
        i
        for i in range(1, 99)
        if counts[i] >= counts[i - 1]
        and counts[i] >= counts[i + 1]
        and counts[i] > 0.05 * counts.max()
    ]
    heights_a = [(edges[i] + edges[i + 1]) / 2 * 1e10 for i in peaks]
    step = max(heights_a) - min(heights_a)
    assert 1.5 < step < 3.0, heights_a


def test_createc_truncated_corrupt_and_other_files(shared_formats, tmp_path):
    data = shared_formats["A250407.141806.dat"].read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[:-5000])
    with pytest.raises(ScanIncompleteError, match="end early"):
        read_scan(cut)
    assert expected_size(str(cut)) is None
    assert expected_size(str(shared_formats["A250407.141806.dat"])) == len(data)
    bad = tmp_path / "bad.dat"
    at = data.find(b"\nDATA") + 5
    bad.write_bytes(data[:at] + b"\x00\xff" * 40 + data[at + 80 :])
    with pytest.raises(ScanReadError, match="corrupt"):
        read_scan(bad)
    spec = tmp_path / "A.VERT.dat"
    spec.write_bytes(b"[ParVERT32]\r\nVertSpecBack=0\r\n")
    with pytest.raises(NotAnImageError):
        read_scan(spec)
    nanonis_spec = tmp_path / "Bias-Spectroscopy001.dat"
    nanonis_spec.write_bytes(b"Experiment\tbias spectroscopy\nDate\t01.01.2024\n")
    with pytest.raises(NotAnImageError, match="Nanonis spectrum"):
        expected_size(str(nanonis_spec))


# -- Gwyddion .gwy (gwyfile) ------------------------------------------------------------------


def test_gwy_real_file(shared_formats):
    s = read_scan(shared_formats["mulfile_test_single_image.gwy"])
    assert (s.nx, s.ny, s.width_nm) == (512, 512, pytest.approx(30.0)) and s.unit == "m"
    assert s.bias_v == pytest.approx(1.25) and s.scan_dir == "unknown"
    assert s.recorded_at == datetime(2020, 12, 7, 19, 16, 23)
    assert s.channel == "test_single_image_1"
    assert expected_size(str(shared_formats["mulfile_test_single_image.gwy"])) == 2_097_718


def test_gwy_without_units_says_what_is_missing(shared_formats):
    with pytest.raises(
        ScanReadError,
        match=r"'Test' has no lateral unit \(si_unit_xy is "
        r"empty\).*128 x 128 pixels span 128 x 128",
    ):
        read_scan(shared_formats["gwyfile_test.gwy"])


def _write_gwy(path: Path, channels: list[tuple[str, str, str, np.ndarray]]) -> None:
    from gwyfile.objects import GwyContainer, GwyDataField, GwySIUnit

    obj = GwyContainer()
    for i, (title, xy, z, data) in enumerate(channels):
        obj[f"/{i}/data"] = GwyDataField(
            data,
            xreal=8e-9 if xy == "m" else 8.0,
            yreal=6e-9 if xy == "m" else 6.0,
            si_unit_xy=GwySIUnit(unitstr=xy),
            si_unit_z=GwySIUnit(unitstr=z),
        )
        obj[f"/{i}/data/title"] = title
    obj.tofile(str(path))


def test_gwy_several_channels_by_title(tmp_path):
    rng = np.random.default_rng(0)
    topo, cur = rng.normal(size=(6, 8)) * 1e-10, rng.normal(size=(6, 8)) * 1e-11
    path = tmp_path / "two.gwy"
    _write_gwy(path, [("Current", "m", "A", cur), ("Topography", "m", "m", topo)])
    s = read_scan(path)  # default Z: the Topography channel
    assert s.channel == "Topography" and (s.nx, s.ny) == (8, 6)
    assert (s.width_nm, s.height_nm) == (pytest.approx(8.0), pytest.approx(6.0))
    np.testing.assert_allclose(s.data, topo.astype(np.float32))
    c = read_scan(path, channel="current")
    assert c.unit == "A" and [ch.name for ch in c.channels] == ["Current", "Topography"]
    with pytest.raises(ScanReadError, match="no channel 'Phase'; it has Current, Topography"):
        read_scan(path, channel="Phase")
    assert expected_size(str(path)) == path.stat().st_size


# -- choosing the reader ----------------------------------------------------------------------


def test_reader_is_chosen_by_content_not_name(shared_formats, tmp_path):
    odd = tmp_path / "renamed.dat"
    shutil.copy(shared_formats[SM4_TOPO], odd)
    assert read_scan(odd).file_format == "rhk-sm4"
    named = tmp_path / "scan.sm4"
    named.write_bytes(b"hello, I am a text file that is long enough\n")
    with pytest.raises(ScanReadError, match="not an RHK .sm4 file"):
        read_scan(named)
    other = tmp_path / "notes.txt"
    other.write_bytes(b"hello")
    with pytest.raises(ScanReadError, match="not a scan file; supported: Nanonis .sxm, RHK"):
        read_scan(other)
    empty = tmp_path / "new.gwy"
    empty.write_bytes(b"")
    with pytest.raises(ScanIncompleteError):
        read_scan(empty)
    assert expected_size(str(empty)) is None


def test_names_and_the_default_pattern():
    from defectwatch.daemon.candidates import matches

    for name in ("a.sxm", "B.SM4", "x--1_1.Z_mtrx", "A250407.141806.dat", "c.GWY"):
        assert is_scan_name(name) and matches(name, DEFAULT_PATTERN), name
    assert not matches("x--1_1.I_mtrx", DEFAULT_PATTERN) and is_scan_name("x--1_1.I_mtrx")
    assert not is_scan_name("20201111_0001.mtrx") and not matches("a.png", DEFAULT_PATTERN)
    assert matches("a.sm4", "*.sm4") and not matches("a.sxm", "*.sm4")  # --pattern narrows
    assert {f.name for f in FORMATS} == {
        "nanonis-sxm",
        "rhk-sm4",
        "omicron-matrix",
        "createc-dat",
        "gwyddion-gwy",
    }


def test_more_nanonis_files(shared_formats):
    fese = read_scan(shared_formats["FeSe_topography.sxm"])
    assert (fese.nx, fese.ny, fese.width_nm) == (224, 224, pytest.approx(20.0))
    assert fese.bias_v == pytest.approx(0.045) and fese.setpoint_a == pytest.approx(4.5e-10)
    hbn = read_scan(shared_formats["hBN_defect_img_0070.sxm"])
    assert (hbn.nx, hbn.ny, hbn.width_nm, hbn.bias_v) == (
        96,
        100,
        pytest.approx(2.0),
        pytest.approx(-3.8),
    )
    aborted = read_scan(shared_formats["hBN_img_0045.sxm"])
    assert aborted.width_nm == pytest.approx(100.0)
    assert np.isnan(aborted.data).mean() == pytest.approx(0.85, abs=0.01)
    assert aborted.acquired_fraction == pytest.approx(1 - np.isnan(aborted.data).mean(), abs=0.01)
