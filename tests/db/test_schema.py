"""Schema, engine settings and migrations on real SQLite files."""

from __future__ import annotations

import io
import sqlite3
from datetime import UTC, datetime
from contextlib import redirect_stdout

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, inspect, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError

from defectwatch.db import make_engine, open_database, read_transaction, write_transaction
from defectwatch.db.migrate import alembic_config, current_revision, head_revision, upgrade
from defectwatch.db.models import Base, ModelVersion, ScanRow
from defectwatch.db.queue import due_query
from tests.db.factories import detection, record

TABLES = {"sample", "scan", "detection_run", "defect", "model_version", "model_activation",
          "label", "label_set", "daemon_heartbeat", "split_assignment", "alembic_version",
          "retrain_run"}


def test_fresh_database_has_the_schema_at_head(engine):
    assert set(inspect(engine).get_table_names()) == TABLES
    assert current_revision(engine) == head_revision()
    indexes = {i["name"] for i in inspect(engine).get_indexes("scan")}
    assert {"ix_scan_status_not_before", "ix_scan_path", "ix_scan_sample_status"} <= indexes


def test_sqlite_pragmas_are_on_for_every_connection(engine, db_url):
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    # WAL is a property of the file: a plain sqlite3 connection sees it too
    raw = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_write_transactions_begin_immediate_and_reads_deferred(engine):
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, stmt, *a: statements.append(stmt))
    with write_transaction(engine) as s:
        s.execute(text("SELECT 1"))
    with read_transaction(engine) as s:
        s.execute(text("SELECT 1"))
    begins = [st for st in statements if st.startswith("BEGIN")]
    assert begins == ["BEGIN IMMEDIATE", "BEGIN DEFERRED"]


def test_foreign_keys_are_enforced(engine):
    with pytest.raises(IntegrityError):
        with write_transaction(engine) as s:
            s.execute(text("INSERT INTO defect (run_id, row, col, x_nm, y_nm, kind, confidence, "
                           "uncertainty, area_nm2) VALUES (999, 0, 0, 0, 0, 'peak', 1, 0, 1)"))


def test_models_and_migrations_agree(engine):
    """`alembic check`: autogenerate finds nothing to change after upgrading to head."""
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    assert diff == []


def test_upgrade_keeps_the_rows_of_an_older_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = make_engine(url)
    upgrade(old, revision="0001")
    assert current_revision(old) == "0001"
    assert "daemon_heartbeat" not in inspect(old).get_table_names()
    # a database written by the first release: a sample, a scan with a run, an active model
    scan_id = record(old, "/data/S1/a.sxm", sample="S1", runs=[detection(0, 0, 2500.0)])
    with old.begin() as conn:
        for i in range(5):  # its defects, in the columns of the time
            conn.execute(text("INSERT INTO defect (run_id, row, col, x_nm, y_nm, kind, "
                              "confidence, uncertainty, area_nm2) VALUES (1, :i, :i, :i, :i, "
                              "'trough', 0.9, 0.05, 1.5)"), {"i": float(i)})
        conn.execute(text("INSERT INTO model_version (name, directory, created_at, active, "
                          "metrics, members) VALUES ('v1', '/m/v1', '2025-01-01', 1, '{}', 10)"))
    old.dispose()

    engine = open_database(url)  # what the next release does at start-up
    assert current_revision(engine) == head_revision()
    with read_transaction(engine) as s:
        row = s.get(ScanRow, scan_id)
        assert row is not None and row.sample is not None and row.sample.name == "S1"
        assert s.execute(text("SELECT count(*) FROM defect")).scalar() == 5
        # measured contrast came later (0005): unknown for the old rows
        assert s.execute(text("SELECT count(*) FROM defect WHERE contrast IS NULL")
                         ).scalar() == 5
        assert s.scalar(select(ModelVersion.name).where(ModelVersion.active)) == "v1"
        # the active version got its first activation-history entry
        assert s.execute(text("SELECT count(*) FROM model_activation")).scalar() == 1
    engine.dispose()


def test_open_database_twice_is_a_no_op(db_url):
    for _ in range(2):
        e = open_database(db_url)
        assert current_revision(e) == head_revision()
        e.dispose()


def test_plain_path_is_a_sqlite_file_and_folders_are_created(tmp_path):
    path = tmp_path / "new folder" / "sub" / "x.db"
    e = open_database(str(path))
    assert path.is_file()
    e.dispose()


def test_migrations_render_for_postgresql():
    """No SQLite-only DDL: the whole upgrade renders as PostgreSQL SQL (offline mode)."""
    cfg = alembic_config("postgresql://u@localhost/defectwatch")
    buf = io.StringIO()
    cfg.stdout = buf
    with redirect_stdout(buf):
        command.upgrade(cfg, "head", sql=True)
    sql = buf.getvalue()
    assert "CREATE TABLE scan" in sql and "TIMESTAMP WITH TIME ZONE" in sql
    assert "CREATE UNIQUE INDEX uq_model_version_active ON model_version (active) WHERE active" \
        in sql
    assert "PRAGMA" not in sql


def test_claim_query_locks_and_skips_on_postgresql():
    now = datetime(2025, 1, 1, tzinfo=UTC)
    pg = str(due_query(now, dialect="postgresql").compile(dialect=postgresql.dialect()))
    assert pg.rstrip().endswith("FOR UPDATE OF scan SKIP LOCKED")
    lite = str(due_query(now, dialect="sqlite").compile(dialect=sqlite_dialect.dialect()))
    assert "FOR UPDATE" not in lite
