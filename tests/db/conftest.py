"""Fixtures for the record: real SQLite files in tmp dirs."""

from __future__ import annotations

import pytest

from defectwatch.db import open_database
from tests.db.factories import Clock


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'record.db'}"


@pytest.fixture
def engine(db_url):
    e = open_database(db_url)
    yield e
    e.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()
