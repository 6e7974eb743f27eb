"""Opening the record: which database, refusing a missing SQLite file where only a question
is asked, migrating to the current schema. The CLI (``cli/common._database``) and the Python
API (`defectwatch.open_record`) both open it here."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError

from defectwatch.db.engine import normalize_url
from defectwatch.db.migrate import open_database
from defectwatch.errors import NotFoundError


def record_url(db: str | os.PathLike[str] | None) -> str:
    """The database URL: ``db`` (a URL or an SQLite file path), else ``DEFECTWATCH_DB``, else
    the SQLite file in the user's data folder."""
    from defectwatch.service.config import get_settings

    return normalize_url(str(db) if db is not None and str(db) else get_settings().db)


def safe_url(url: str) -> str:
    """The URL as it may be shown (password hidden)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def require_existing_file(url: str) -> None:
    """Queries never create a database: a missing SQLite file is an error, not an empty one.

    Raises
    ------
    NotFoundError
        ``url`` names an SQLite file that does not exist.
    """
    parsed = make_url(url)
    database = parsed.database or ""
    if (
        parsed.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not database.startswith("file:")
        and not Path(database).exists()
    ):
        raise NotFoundError(
            f"no database at {database}: nothing recorded yet (start "
            f"`defectwatch watch`, or pass --db / set DEFECTWATCH_DB)"
        )


def open_record_engine(url: str, *, create: bool) -> Engine:
    """An engine on the migrated record at ``url`` (normalised); ``create=False`` refuses a
    missing SQLite file (`NotFoundError`)."""
    if not create:
        require_existing_file(url)
    return open_database(url)
