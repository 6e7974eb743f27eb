"""Engines and transactions for SQLite and PostgreSQL.

SQLite: WAL (readers never block the writer), ``foreign_keys=ON``, a busy timeout, and write
transactions that start with ``BEGIN IMMEDIATE``, so concurrent writers queue for the lock
instead of failing with "database is locked" when a read transaction tries to upgrade. Read
transactions start with a plain (deferred) ``BEGIN``. Nothing here is SQLite-only beyond these
connection settings; the same code runs on a PostgreSQL URL.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from defectwatch.errors import ConfigError, DatabaseUnavailableError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
_BEGIN = "defectwatch_sqlite_begin"  # execution option: "IMMEDIATE" for write transactions


def normalize_url(url: str | Path) -> str:
    """A database URL; a plain file path (no ``://``) means a SQLite file there."""
    text = str(url)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    return text


def make_engine(url: str | Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Engine:
    """An engine for ``url`` with the SQLite settings above (no schema changes; see
    ``open_database``). The folder of a SQLite file is created when missing."""
    text = normalize_url(url)
    try:
        parsed = make_url(text)
    except ArgumentError:
        raise ConfigError(
            f"database URL {text!r} is not a URL (e.g. sqlite:////path/to/x.db "
            f"or postgresql+psycopg://user@host/db)"
        ) from None
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(parsed, pool_pre_ping=True)
        except ImportError as exc:
            raise ConfigError(
                f"database {parsed.render_as_string(hide_password=True)}: its driver "
                f"{exc.name or parsed.get_driver_name()!r} is not installed (e.g. pip install "
                f"'psycopg[binary]' and use postgresql+psycopg://...)"
            ) from None

    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": busy_timeout_s})
    ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Take transaction control from pysqlite: we emit BEGIN ourselves (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if database not in ("", ":memory:"):
                _ensure_wal(cursor, timeout_s=busy_timeout_s)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _ensure_wal(cursor, *, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    """Put the file in WAL mode. WAL is a property of the file, so this is usually a read.
    The conversion needs the file to itself and SQLite does not run the busy handler for it:
    processes opening a new file together got "database is locked" at once. Retried here,
    with backoff, within the busy timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            # on a lock this either raises or answers with the mode it kept
            if str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked: could not switch it to WAL")
        time.sleep(delay)
        delay = min(2 * delay, 0.2)


# PostgreSQL SQLSTATEs that mean "the server is not there right now": connection exceptions
# (class 08), and the server shutting down or starting up
_UNREACHABLE_STATES = ("57P01", "57P02", "57P03")


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the database server cannot be reached (down, restarting, the
    network away), as opposed to a bad query or a conflict. SQLite files are never
    "unreachable" (a locked file waits in the busy timeout)."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    if not type(exc.orig).__module__.startswith("psycopg"):
        return False
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return state is None or state.startswith("08") or state in _UNREACHABLE_STATES


@contextmanager
def unreachable_as_error(engine: Engine) -> Iterator[None]:
    """Translate "the server cannot be reached" into ``DatabaseUnavailableError`` (one line
    naming the server; other database errors pass unchanged)."""
    try:
        yield
    except DBAPIError as exc:
        if not is_unreachable(exc):
            raise
        reason = (str(exc.orig or exc).strip().splitlines() or ["?"])[0]
        raise DatabaseUnavailableError(
            f"database {engine.url.render_as_string(hide_password=True)} is unreachable ({reason})"
        ) from exc


def writer(engine: Engine) -> Engine:
    """The same engine (shared pool) whose transactions take the write lock first."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_BEGIN: "IMMEDIATE"})
    return engine


def read_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions for reading (deferred transactions; never write through them on SQLite)."""
    return sessionmaker(engine, expire_on_commit=False)


def write_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose transactions start by taking the write lock (``BEGIN IMMEDIATE``)."""
    return sessionmaker(writer(engine), expire_on_commit=False)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Session]:
    """One write transaction: commits when the block ends, rolls back on an exception."""
    with write_sessions(engine).begin() as session:
        yield session


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Session]:
    """One read transaction (a consistent snapshot), ended when the block ends. Loaded objects
    stay readable afterwards (detached, not expired)."""
    with read_sessions(engine)() as session:
        yield session
