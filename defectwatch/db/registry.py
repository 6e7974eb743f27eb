"""The model registry: version directories, which one is active, and rollback.

Activations form a stack (``model_activation``): ``activate`` pushes, ``rollback`` pops, so
rolling back twice walks back two activations. Exactly one version is active once any has been
activated (a partial unique index enforces "at most one"). Session keyword, never commits.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from defectwatch.db.models import ModelActivation, ModelVersion, utcnow
from defectwatch.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)


def register_version(
    name: str,
    *,
    session: Session,
    directory: str,
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
    members: int = 0,
    activate: bool = False,
) -> ModelVersion:
    """Add a version directory to the registry (ConfigError if the name is taken)."""
    if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None:
        raise ConfigError(f"model version {name!r} is already registered; pick another name")
    version = ModelVersion(
        name=name,
        directory=str(directory),
        parent=parent,
        metrics=dict(metrics or {}),
        members=int(members),
        active=False,
    )
    session.add(version)
    session.flush()
    if activate:
        activate_version(name, session=session)
    return version


def list_versions(*, session: Session) -> list[ModelVersion]:
    """All registered versions, oldest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def get_version(name: str, *, session: Session) -> ModelVersion:
    """The version called ``name`` (NotFoundError naming the known ones otherwise)."""
    version = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if version is None:
        known = ", ".join(v.name for v in list_versions(session=session)) or "none"
        raise NotFoundError(f"no model version {name!r} in the registry (known: {known})")
    return version


def active_version(*, session: Session) -> ModelVersion | None:
    """The active version; None while the registry is empty."""
    return session.scalar(select(ModelVersion).where(ModelVersion.active.is_(True)))


def activate_version(name: str, *, session: Session) -> ModelVersion:
    """Make ``name`` the one active version (pushed on the activation history)."""
    version = get_version(name, session=session)
    _set_active(version, session=session)
    session.add(ModelActivation(model_version_id=version.id, activated_at=utcnow()))
    session.flush()
    log.info("model version %s activated", name)
    return version


def rollback_version(*, session: Session) -> ModelVersion:
    """Undo the latest activation: the previously active version becomes active again."""
    stack = list(
        session.scalars(
            select(ModelActivation)
            .where(ModelActivation.rolled_back_at.is_(None))
            .order_by(ModelActivation.id.desc())
            .limit(2)
        )
    )
    if len(stack) < 2:
        raise NotFoundError("no earlier model version to roll back to")
    stack[0].rolled_back_at = utcnow()
    previous = session.get(ModelVersion, stack[1].model_version_id)
    assert previous is not None  # foreign key
    _set_active(previous, session=session)
    session.flush()
    log.info("model version rolled back to %s", previous.name)
    return previous


def _set_active(version: ModelVersion, *, session: Session) -> None:
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.active.is_(True), ModelVersion.id != version.id)
        .values(active=False)
    )
    session.flush()  # the unique partial index allows one active row at a time
    version.active = True
    session.flush()
