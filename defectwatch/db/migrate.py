"""Schema migrations, run programmatically: ``open_database(url)`` upgrades to head.

A newer defectwatch opens an older database file without loss: the Alembic revisions shipped in
``defectwatch/db/migrations/versions`` run in one write transaction (SQLite has transactional
DDL; a second process starting at the same moment waits for the lock, then finds nothing to do).

New revision after changing ``models.py``::

    python -m defectwatch.db.migrate revision -m "what changed"   # autogenerate, then review
"""

from __future__ import annotations

import argparse
import logging
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from defectwatch.db.engine import make_engine, normalize_url, writer

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the shipped migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The newest revision shipped with this version of defectwatch."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, *, revision: str = "head") -> None:
    """Migrate the database to ``revision`` in one write transaction."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    cfg = alembic_config()
    with writer(engine).begin() as conn:
        cfg.attributes["connection"] = conn
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(cfg, revision)
        after = MigrationContext.configure(conn).get_current_revision()
    if before != after:
        log.info(
            "database %s migrated from %s to %s",
            engine.url.render_as_string(),
            before or "empty",
            after,
        )


def open_database(url: str | Path) -> Engine:
    """An engine for ``url`` with the schema migrated to head (created when empty)."""
    engine = make_engine(url)
    upgrade(engine)
    return engine


def main(argv: list[str] | None = None) -> None:
    """``python -m defectwatch.db.migrate revision -m MSG`` (developers) or ``upgrade URL``."""
    parser = argparse.ArgumentParser(prog="python -m defectwatch.db.migrate")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="autogenerate a revision from models.py")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument(
        "--url",
        default="sqlite:///:memory:",
        help="database at the current head to diff against (default: a fresh one)",
    )
    up = sub.add_parser("upgrade", help="migrate a database to head")
    up.add_argument("url")
    args = parser.parse_args(argv)
    if args.cmd == "upgrade":
        open_database(args.url).dispose()
        return
    engine = make_engine(args.url)
    upgrade(engine)
    cfg = alembic_config()
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    head = head_revision()
    rev_id = f"{int(head) + 1:04d}" if head and head.isdigit() else "0001"
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=args.message, autogenerate=True, rev_id=rev_id)


if __name__ == "__main__":
    main()
