"""The same record on a PostgreSQL server (a facility's shared database).

A real server: a throwaway cluster of the PostgreSQL binaries here, or the one
``DEFECTWATCH_TEST_POSTGRES`` names (see ``tests/postgres.py``; skipped locally without either,
FAILED under CI=true). Each test gets a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from defectwatch.db import make_engine, open_database, write_transaction
from defectwatch.db.migrate import current_revision, head_revision
from defectwatch.db.models import Base, ModelVersion
from defectwatch.db.queue import SqlJobQueue, mark_done
from defectwatch.db.records import add_detection_run, rename_sample
from defectwatch.db.registry import register_version
from tests.db.factories import Clock, detection, record, sha


@pytest.fixture
def engine(pg_url):
    e = open_database(pg_url)
    yield e
    e.dispose()


def test_schema_migrates_and_matches_the_models(engine):
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


def test_queue_density_rename_and_one_active_version(engine):
    clock = Clock()
    queue = SqlJobQueue(engine, sample_for=lambda p: p.split("/")[2], clock=clock)
    assert queue.enqueue("/w/A/1.sxm", sha256=sha("1"), size_bytes=1, mtime_ns=1)
    assert not queue.enqueue("/w/B/copy.sxm", sha256=sha("1"), size_bytes=1, mtime_ns=1)
    job = queue.claim(worker="w", lease_s=10)
    assert queue.claim(worker="w2", lease_s=10) is None
    clock.advance(11)
    assert queue.requeue_expired() == 1
    job = queue.claim(worker="w2", lease_s=10)
    assert job.attempts == 2 and job.sample == "A"
    with write_transaction(engine) as s:
        assert mark_done(job, session=s)
        add_detection_run(job.id, detection(3, 1, 2500.0), session=s)
    record(engine, "/w/B/2.sxm", sample="B", runs=[detection(1, 1, 2500.0)])
    with write_transaction(engine) as s:
        assert rename_sample("B", "A", session=s) == "merged"

    from defectwatch.service.queries import density_report

    [a] = density_report(engine)
    assert (a.sample, a.scans, a.counts["total"], a.area_nm2) == ("A", 2, 6, 5000.0)

    with write_transaction(engine) as s:
        register_version("v1", session=s, directory="/m/v1", activate=True)
        register_version("v2", session=s, directory="/m/v2", activate=True)
    with pytest.raises(IntegrityError):
        with write_transaction(engine) as s:
            s.execute(update(ModelVersion).values(active=True))


def _claim_all(url: str, out) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    queue = SqlJobQueue(engine)
    ids = []
    while (job := queue.claim(worker=str(os.getpid()), lease_s=300)) is not None:
        ids.append(job.id)
    out.put(ids)
    engine.dispose()


def test_concurrent_claims_skip_locked_rows(engine, pg_url):
    queue = SqlJobQueue(engine)
    for i in range(40):
        queue.enqueue(f"/w/S/{i}.sxm", sha256=sha(str(i)), size_bytes=1, mtime_ns=1)
    engine.dispose()
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(pg_url, out)) for _ in range(3)]
    for p in procs:
        p.start()
    claimed = [i for _ in procs for i in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
    assert len(claimed) == len(set(claimed)) == 40
