"""Use cases: the model registry as ``defectwatch models`` shows and changes it.

The registry is never empty when asked: the shipped default is registered and activated first
(``ingest.active_model``). A version is activated (or rolled back to) only when its directory
still loads (``pipeline.model.load_version``: config, member files, sha256, architecture), so
the daemon never meets a broken active version; the check runs outside the write lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from defectwatch.db.engine import read_transaction, write_transaction
from defectwatch.db.registry import (
    activate_version,
    active_version,
    get_version,
    list_versions,
    rollback_version,
)
from defectwatch.errors import ConfigError, ModelLoadError
from defectwatch.service.ingest import _shipped_default_dir, active_model, model_version_name

log = logging.getLogger(__name__)

JSON_KEYS = ("version", "active", "created_at", "parent", "members", "metrics", "retrain")

Check = Callable[[Path], None]  # raises ModelLoadError when a version directory is unusable


def check_loads(directory: Path) -> None:
    """Raise ModelLoadError naming what is wrong when ``directory`` is not a loadable version."""
    from defectwatch.pipeline.model import load_version

    load_version(directory)


@dataclass(frozen=True)
class ResolvedModel:
    """The model version a command detects with, and why that one.

    ``source``: ``"--model"`` (the caller named a directory), ``"active"`` (the record's active
    version) or ``"shipped"`` (no record to ask: the shipped default)."""

    name: str
    directory: Path
    source: str

    def describe(self) -> str:
        """One line for the user, e.g. ``model retrain-x (the record's active version)``."""
        why = {
            "--model": f"--model {self.directory}",
            "active": "the record's active version",
            "shipped": "the shipped default; no record was asked",
        }[self.source]
        return f"model {self.name} ({why})"


def resolve_model(
    engine: Engine | None,
    model_dir: str | Path | None = None,
    *,
    default_dir: Callable[[], Path] = _shipped_default_dir,
) -> ResolvedModel:
    """Which version ``process``, ``evaluate``, ``reprocess``, the web app and the Python API
    detect with: ``model_dir`` when given (ModelLoadError when it is not a directory), else the
    record's active version (the shipped default is registered and activated on an empty
    registry, ``ingest.active_model``), else, with no record (``engine`` None), the shipped
    default. The one place this rule lives; callers say ``describe()`` to the user."""
    if model_dir is not None:
        path = Path(model_dir)
        if not path.is_dir():
            raise ModelLoadError(
                f"{path}: no such model version directory (give a folder "
                "holding config.json and member_*.safetensors)"
            )
        chosen = ResolvedModel(model_version_name(path), path, "--model")
    elif engine is not None:
        name, directory = active_model(engine, default_dir=default_dir)
        chosen = ResolvedModel(name, Path(directory), "active")
    else:
        path = default_dir()
        chosen = ResolvedModel(model_version_name(path), path, "shipped")
    log.info("detecting with %s", chosen.describe())
    return chosen


@dataclass(frozen=True)
class Switch:
    """The outcome of ``activate`` / ``rollback``."""

    version: str
    directory: str
    previous: str | None
    changed: bool  # False: it was already the active version


def versions_report(engine: Engine, *, register_default: bool = True) -> list[dict[str, Any]]:
    """Every registered version, oldest first, as the ``models list --json`` objects:
    ``version, active, created_at (ISO, UTC), parent, members, metrics, retrain`` (for a
    version a retrain made: ``{outcome: promoted | candidate, reason}``, else None);
    ``register_default=False``: only read (the web app), no shipped default registered."""
    from defectwatch.service.retrain_runs import outcome_by_version

    if register_default:
        active_model(engine)
    outcomes = outcome_by_version(engine)
    with read_transaction(engine) as session:
        return [
            {
                "version": v.name,
                "active": bool(v.active),
                "created_at": v.created_at.isoformat() if v.created_at else None,
                "parent": v.parent,
                "members": int(v.members or 0),
                "metrics": dict(v.metrics or {}),
                "retrain": outcomes.get(v.name),
            }
            for v in list_versions(session=session)
        ]


def activate(engine: Engine, name: str, *, check: Check = check_loads) -> Switch:
    """Make ``name`` the active version (NotFoundError for an unknown one; ModelLoadError when
    its directory no longer loads, nothing changed)."""
    active_model(engine)
    with read_transaction(engine) as session:
        target = get_version(name, session=session)
        current = active_version(session=session)
        directory = target.directory
        previous = current.name if current else None
    if previous == name:
        return Switch(name, directory, previous, changed=False)
    check(Path(directory))
    with write_transaction(engine) as session:
        current = active_version(session=session)
        version = activate_version(name, session=session)
        return Switch(
            version.name, version.directory, current.name if current else None, changed=True
        )


class _Undo(Exception):
    """Raised to roll back a trial transaction."""


def rollback(engine: Engine, *, check: Check = check_loads) -> Switch:
    """Undo the latest activation (NotFoundError when there is nothing to go back to;
    ModelLoadError when the previous version no longer loads, nothing changed)."""
    active_model(engine)
    found: dict[str, str] = {}
    try:  # find the target without keeping the change (the check may take seconds)
        with write_transaction(engine) as session:
            current = active_version(session=session)
            target = rollback_version(session=session)
            found = {
                "name": target.name,
                "directory": target.directory,
                "previous": current.name if current else "",
            }
            raise _Undo
    except _Undo:
        pass
    check(Path(found["directory"]))
    with write_transaction(engine) as session:
        current = active_version(session=session)
        target = rollback_version(session=session)
        if target.name != found["name"]:  # another process changed the registry meanwhile
            raise ConfigError(
                "the model registry changed while the rollback target was "
                "checked; nothing was changed, run the rollback again"
            )
        return Switch(
            target.name, target.directory, current.name if current else None, changed=True
        )
