"""Shared test fixtures: bundled real .sxm files and the optional ../shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
SHARED = TESTS.parent.parent / "shared" / "fixtures"


@pytest.fixture
def bundled_sxm() -> dict[str, Path]:
    """The Apache/MIT real files copied into tests/data (see tests/data/SOURCES.md)."""
    return {p.stem: p for p in sorted(DATA.glob("*.sxm"))}


@pytest.fixture
def shared_sxm() -> dict[str, Path]:
    """All five real files in ../shared/fixtures/real-sxm (skips when that folder is absent)."""
    folder = SHARED / "real-sxm"
    if not folder.is_dir():
        pytest.skip("../shared/fixtures/real-sxm is not present")
    return {p.stem: p for p in sorted(folder.glob("*.sxm"))}


@pytest.fixture(scope="session")
def shared_formats() -> dict[str, Path]:
    """Every real file in ../shared/fixtures/real-formats (RHK, MATRIX, Createc, Gwyddion,
    more Nanonis; see its SOURCES.md), by file name (skips when that folder is absent)."""
    folder = SHARED / "real-formats"
    if not folder.is_dir():
        pytest.skip("../shared/fixtures/real-formats is not present")
    return {p.name: p for p in sorted(folder.glob("*/*")) if p.name != "SOURCES.md"}


# A real PostgreSQL server (a throwaway cluster, or DEFECTWATCH_TEST_POSTGRES); see postgres.py
from tests.postgres import any_db_url, pg_cluster, pg_server, pg_url  # noqa: E402,F401
