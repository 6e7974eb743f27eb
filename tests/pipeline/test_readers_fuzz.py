"""Property tests for every reader: a truncated, corrupted or random file raises the project's
errors (DefectwatchError and its subclasses) and nothing else, from `read_scan` and from the
daemon's `expected_size` alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defectwatch.errors import DefectwatchError, ScanReadError
from defectwatch.pipeline.readers import expected_size, read_scan

_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

SOURCES = {  # format -> (fixture file, name to write it under); small files keep this fast
    "sm4": ("Iz_gold_9K_2019_12_18_13_49_32_752.sm4", "f.sm4"),
    "sm4-image": ("topo_ABC_Graphite-Sample5_9K_2021_08_13_19_11_10_065.sm4", "f.sm4"),
    "createc": ("A250407.141806.dat", "A250407.141806.dat"),
    "matrix": ("20201111--4_1.Z_mtrx", "20201111--4_1.Z_mtrx"),
}


def _tiny_gwy(path: Path) -> None:
    from gwyfile.objects import GwyContainer, GwyDataField, GwySIUnit

    obj = GwyContainer()
    obj["/0/data"] = GwyDataField(
        np.arange(48, dtype=float).reshape(6, 8) * 1e-11,
        xreal=8e-9,
        yreal=6e-9,
        si_unit_xy=GwySIUnit(unitstr="m"),
        si_unit_z=GwySIUnit(unitstr="m"),
    )
    obj["/0/data/title"] = "Topography"
    obj.tofile(str(path))


@pytest.fixture(scope="module")
def originals(shared_formats, tmp_path_factory) -> dict[str, tuple[bytes, str]]:
    out = {k: (shared_formats[src].read_bytes(), name) for k, (src, name) in SOURCES.items()}
    gwy = tmp_path_factory.mktemp("gwy") / "t.gwy"
    _tiny_gwy(gwy)
    out["gwy"] = (gwy.read_bytes(), "t.gwy")
    return out


@pytest.fixture(scope="module")
def folder(shared_formats, tmp_path_factory) -> Path:
    """A folder holding the MATRIX result chain file, so MATRIX data files get parsed."""
    path = tmp_path_factory.mktemp("fuzz")
    shutil.copy(shared_formats["20201111_0001.mtrx"], path / "20201111_0001.mtrx")
    return path


def _only_our_errors(path: Path) -> None:
    for call in (
        lambda: read_scan(path),
        lambda: read_scan(path, direction="backward"),
        lambda: expected_size(str(path)),
    ):
        try:
            call()
        except DefectwatchError:
            pass


FORMATS = st.sampled_from(["sm4", "sm4-image", "createc", "matrix", "gwy"])


@_SETTINGS
@given(fmt=FORMATS, cut=st.floats(0.0, 1.0))
def test_truncation_at_any_byte(originals, folder, fmt, cut):
    data, name = originals[fmt]
    path = folder / name
    path.write_bytes(data[: int(len(data) * cut)])
    _only_our_errors(path)


@_SETTINGS
@given(
    fmt=FORMATS,
    where=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_bytes(originals, folder, fmt, where):
    data, name = originals[fmt]
    raw = bytearray(data)
    for at, byte in where:
        raw[min(int(at * len(raw)), len(raw) - 1)] = byte
    path = folder / name
    path.write_bytes(bytes(raw))
    _only_our_errors(path)


@_SETTINGS
@given(fmt=FORMATS, head=st.booleans(), blob=st.binary(max_size=3000))
def test_random_files(originals, folder, fmt, head, blob):
    """Random bytes under each format's name, with or without its real first 64 bytes."""
    data, name = originals[fmt]
    path = folder / name
    path.write_bytes((data[:64] if head else b"") + blob)
    _only_our_errors(path)


@pytest.mark.timeout(60)
def test_gwy_component_without_its_end_does_not_hang_gwyfile(tmp_path):
    """gwyfile 0.3.0 alone loops for ever here: the last string (the channel title) loses its
    NUL, so the component it parses has size 0."""
    path = tmp_path / "t.gwy"
    _tiny_gwy(path)
    data = path.read_bytes()
    assert data.endswith(b"Topography\0")
    path.write_bytes(data[:-1] + b"X")
    with pytest.raises(ScanReadError, match="gwyfile cannot parse it.*past the end"):
        read_scan(path)
