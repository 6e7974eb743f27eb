"""Several processes on one SQLite file: claims never collide, readers never see a lock."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
import traceback

import pytest
from sqlalchemy import func, select

from defectwatch.db import make_engine, read_transaction, write_transaction
from defectwatch.db.models import DefectRow
from defectwatch.db.queue import SqlJobQueue, mark_done
from defectwatch.db.records import add_detection_run
from tests.db.factories import detection, sha

CTX = mp.get_context("fork")  # children build their own engines; the parent's are disposed


def _claimer(url: str, start, results) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    queue = SqlJobQueue(engine)
    claimed = []
    start.wait()
    try:
        while (job := queue.claim(worker=mp.current_process().name, lease_s=300)) is not None:
            claimed.append(job.id)
            with write_transaction(engine) as s:
                assert mark_done(job, session=s)
        results.put(("ok", claimed))
    except Exception:  # noqa: BLE001 - reported to the parent
        results.put(("error", traceback.format_exc()))


def test_concurrent_claims_never_hand_out_a_job_twice(db_url, engine):
    queue = SqlJobQueue(engine)
    n = 60
    for i in range(n):
        queue.enqueue(f"/w/S/{i}.sxm", sha256=sha(str(i)), size_bytes=1, mtime_ns=1)
    engine.dispose()
    start, results = CTX.Event(), CTX.Queue()
    workers = [CTX.Process(target=_claimer, args=(db_url, start, results)) for _ in range(3)]
    for w in workers:
        w.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    errors = [o[1] for o in outcomes if o[0] == "error"]
    assert not errors, errors[0]
    claimed = [job_id for _, ids in outcomes for job_id in ids]
    assert len(claimed) == len(set(claimed)) == n
    assert queue.depth() == 0


def _writer(url: str, n: int, start, results) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    queue = SqlJobQueue(engine, sample_for=lambda p: f"S{hash(p) % 3}")
    start.wait()
    try:
        for i in range(n):  # what the daemon does per scan: enqueue, claim, record
            queue.enqueue(f"/w/{i}.sxm", sha256=sha(f"w{i}"), size_bytes=1, mtime_ns=1)
            job = queue.claim(worker="writer", lease_s=60)
            with write_transaction(engine) as s:
                mark_done(job, session=s)
                add_detection_run(job.id, detection(20, 10, 2500.0), session=s)
        results.put(("writer", n))
    except Exception:  # noqa: BLE001
        results.put(("error", traceback.format_exc()))


def _reader(url: str, start, stop, results) -> None:  # type: ignore[no-untyped-def]
    from defectwatch.service.queries import density_report, status_report

    engine = make_engine(url)
    start.wait()
    reads = 0
    try:
        while not stop.is_set():
            density_report(engine)
            status_report(engine)
            reads += 1
        results.put(("reader", reads))
    except Exception:  # noqa: BLE001 - "database is locked" would land here
        results.put(("error", traceback.format_exc()))


def test_readers_never_see_database_is_locked_while_a_writer_writes(db_url, engine):
    import defectwatch.service.queries  # noqa: F401 - imported before forking

    engine.dispose()
    n = 60
    start, stop, results = CTX.Event(), CTX.Event(), CTX.Queue()
    writer = CTX.Process(target=_writer, args=(db_url, n, start, results))
    readers = [CTX.Process(target=_reader, args=(db_url, start, stop, results)) for _ in range(2)]
    for p in (writer, *readers):
        p.start()
    t0 = time.perf_counter()
    start.set()
    first = results.get(timeout=120)
    stop.set()
    outcomes = [first] + [results.get(timeout=60) for _ in readers]
    elapsed = time.perf_counter() - t0
    for p in (writer, *readers):
        p.join(timeout=30)
    errors = [o[1] for o in outcomes if o[0] == "error"]
    assert not errors, errors[0]
    reads = sum(o[1] for o in outcomes if o[0] == "reader")
    assert reads > 0
    with read_transaction(engine) as s:
        assert s.scalar(select(func.count()).select_from(DefectRow)) == n * 30
    print(f"{n} write transactions and {reads} density+status reads in {elapsed:.2f} s")


def _opener(url: str, start, results) -> None:  # type: ignore[no-untyped-def]
    from defectwatch.db import open_database
    from defectwatch.db.migrate import current_revision

    start.wait()
    try:
        engine = open_database(url)
        results.put(("ok", current_revision(engine)))
        engine.dispose()
    except Exception:  # noqa: BLE001
        results.put(("error", traceback.format_exc()))


def test_processes_starting_together_on_a_new_file_migrate_it_once(tmp_path):
    from defectwatch.db.migrate import head_revision

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    start, results = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_opener, args=(url, start, results)) for _ in range(3)]
    for p in procs:
        p.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert outcomes == [("ok", head_revision())] * 3, outcomes


class _LockedCursor:
    """A DB-API cursor whose journal-mode switch fails like SQLite's under contention: it
    raises "database is locked" or answers with the mode it kept, ``failures`` times."""

    def __init__(self, failures: list[str]):
        self.failures, self.mode, self.calls = list(failures), "delete", 0

    def execute(self, sql: str):  # type: ignore[no-untyped-def]
        self.calls += 1
        if sql.endswith("= WAL"):
            if self.failures:
                if self.failures.pop(0) == "raise":
                    raise sqlite3.OperationalError("database is locked")
                return self  # SQLite answers with the old mode when it could not switch
            self.mode = "wal"
        return self

    def fetchone(self):  # type: ignore[no-untyped-def]
        return (self.mode,)


def test_the_switch_to_wal_is_retried_while_another_opener_holds_the_file():
    """SQLite runs no busy handler for the journal-mode conversion: three processes opening a
    new file at once once got "database is locked" at connect. The switch is retried."""
    from defectwatch.db.engine import _ensure_wal

    cursor = _LockedCursor(["raise", "kept", "raise"])
    _ensure_wal(cursor, timeout_s=5.0)
    assert cursor.mode == "wal"
    already = _LockedCursor([])
    already.mode = "wal"
    _ensure_wal(already, timeout_s=5.0)
    assert already.calls == 1  # a WAL file is only read
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _ensure_wal(_LockedCursor(["raise"] * 1000), timeout_s=0.2)
