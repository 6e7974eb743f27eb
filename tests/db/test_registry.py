"""The model registry: register, activate exactly one, roll back through the history."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from defectwatch.db import read_transaction, write_transaction
from defectwatch.db.models import ModelVersion
from defectwatch.db.registry import (
    activate_version,
    active_version,
    get_version,
    list_versions,
    register_version,
    rollback_version,
)
from defectwatch.errors import ConfigError, NotFoundError

ON_POSTGRESQL = True  # each test once more on a real PostgreSQL server (conftest.py)


def _active(engine) -> str | None:
    with read_transaction(engine) as s:
        v = active_version(session=s)
        return v.name if v else None


def test_register_list_and_get(engine):
    with write_transaction(engine) as s:
        register_version("v1", session=s, directory="/m/v1", members=10, metrics={"f1_trough": 0.9})
        register_version("v2", session=s, directory="/m/v2", parent="v1", members=10)
    with read_transaction(engine) as s:
        assert [v.name for v in list_versions(session=s)] == ["v1", "v2"]
        v2 = get_version("v2", session=s)
        assert (v2.parent, v2.directory, v2.active) == ("v1", "/m/v2", False)
        assert get_version("v1", session=s).metrics == {"f1_trough": 0.9}
        with pytest.raises(NotFoundError, match="v3.*known: v1, v2"):
            get_version("v3", session=s)
    assert _active(engine) is None
    with pytest.raises(ConfigError, match="already registered"):
        with write_transaction(engine) as s:
            register_version("v1", session=s, directory="/elsewhere")


def test_exactly_one_active_and_rollback_walks_back(engine):
    with write_transaction(engine) as s:
        for name in ("v1", "v2", "v3"):
            register_version(name, session=s, directory=f"/m/{name}")
        activate_version("v1", session=s)
    for name in ("v2", "v3"):
        with write_transaction(engine) as s:
            activate_version(name, session=s)
        assert _active(engine) == name
    with read_transaction(engine) as s:
        assert sum(v.active for v in list_versions(session=s)) == 1
    with write_transaction(engine) as s:
        assert rollback_version(session=s).name == "v2"
    with write_transaction(engine) as s:
        assert rollback_version(session=s).name == "v1"
    with pytest.raises(NotFoundError, match="roll back"):
        with write_transaction(engine) as s:
            rollback_version(session=s)
    assert _active(engine) == "v1"


def test_register_with_activate(engine):
    with write_transaction(engine) as s:
        register_version("v1", session=s, directory="/m/v1", activate=True)
    assert _active(engine) == "v1"


def test_the_database_itself_refuses_two_active_versions(engine):
    with write_transaction(engine) as s:
        register_version("v1", session=s, directory="/m/v1", activate=True)
        register_version("v2", session=s, directory="/m/v2")
    with pytest.raises(IntegrityError):
        with write_transaction(engine) as s:
            s.execute(update(ModelVersion).where(ModelVersion.name == "v2").values(active=True))
