"""Fixtures for the record: real SQLite files in tmp dirs; in the modules that set
``ON_POSTGRESQL = True``, every test runs once more on a real PostgreSQL server."""

from __future__ import annotations

import pytest

from defectwatch.db import open_database
from tests.db.factories import Clock


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and getattr(metafunc.module, "ON_POSTGRESQL", False):
        metafunc.parametrize("backend", ["sqlite", "postgresql"])


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def db_url(request, tmp_path, backend) -> str:
    if backend == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'record.db'}"


@pytest.fixture
def engine(db_url):
    e = open_database(db_url)
    yield e
    e.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()
