"""Alembic environment: migrates the connection ``defectwatch.db.migrate`` hands over.

Run programmatically (``open_database``), never with a global alembic.ini. Offline mode
(``--sql``) renders the DDL for a URL without connecting.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context

from defectwatch.db.engine import make_engine
from defectwatch.db.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: object, _autogen_context: Any) -> str | Literal[False]:
    # revisions stay self-contained: UTCDateTime is stored as a timezone-aware DateTime
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata, compare_type=True, render_item=_render_item, **kwargs
    )


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    _configure(url=url, literal_binds=True, render_as_batch=str(url).startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # e.g. the alembic command line with sqlalchemy.url set
        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.connect() as connection:
            _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
            with context.begin_transaction():
                context.run_migrations()
        engine.dispose()
        return
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
