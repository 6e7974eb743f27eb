"""`defectwatch watch` as a user runs it: real processes, real folders, a real SQLite file.

Two sessions keep the process start-ups (torch + atomai: seconds each) few:
- one daemon through an instrument session: a scan written slowly in chunks, a truncated file,
  garbage and a non-scan file, 30 scans at once, `density` queried from other processes while it
  writes, the active model switched mid-run, paths with spaces and non-ASCII characters, SIGTERM;
- two daemons on one folder, one killed with SIGKILL mid-run and restarted: every scan recorded
  exactly once, none processed twice (on a SQLite file and on a real PostgreSQL server);
- the PostgreSQL server stopped under a running daemon while scans arrive, then started again:
  the outage is logged, waited out with backoff, and every scan recorded exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from defectwatch.service.watching import default_log_file, sxm_expected_size
from tests.daemon.queue_double import sxm_bytes, write_scan

pytestmark = pytest.mark.slow

FAST = [
    "--stable-for",
    "0.3",
    "--incomplete-after",
    "1.5",
    "--retry-delay",
    "0.2",
    "--max-attempts",
    "3",
]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny random model versions (2 members, 4 filters): plumbing, not science."""
    import torch

    from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member, save_version

    out = tmp_path_factory.mktemp("models")
    spec = UnetSpec(nb_filters=4)
    versions = {}
    for seed, name in enumerate(("tiny-1", "tiny-2")):
        torch.manual_seed(seed)
        members = [build_member(spec).state_dict() for _ in range(2)]
        versions[name] = save_version(
            out / name, ModelConfig(version=name, pixel_size_nm=0.1, architecture=spec), members
        )
    return versions


@pytest.fixture(params=["sqlite", "postgresql"])
def record_db(request, tmp_path) -> Path | str:
    """Where the record goes: a SQLite file, or a database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "record.db"
    return request.getfixturevalue("pg_url")


def make_db(path: Path | str, models: dict[str, Path], *, active: str = "tiny-1") -> Path | str:
    from defectwatch.db import open_database, write_transaction
    from defectwatch.db.registry import register_version

    engine = open_database(path)
    with write_transaction(engine) as session:
        for name, directory in models.items():
            register_version(
                name, session=session, directory=str(directory), members=2, activate=name == active
            )
    engine.dispose()
    return path


def activate(db: Path, name: str) -> None:
    from defectwatch.db import open_database, write_transaction
    from defectwatch.db.registry import activate_version

    engine = open_database(db)
    with write_transaction(engine) as session:
        activate_version(name, session=session)
    engine.dispose()


def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTWATCH_")}
    e["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    e["PYTHONUNBUFFERED"] = "1"
    e["OMP_NUM_THREADS"] = e["MKL_NUM_THREADS"] = "1"  # several processes share 2 cores
    return e


class Watch:
    """A `defectwatch watch` subprocess whose output goes to a file (no pipe to fill)."""

    def __init__(self, tmp_path: Path, name: str, *args: str) -> None:
        self.output = tmp_path / f"{name}.out"
        self._fh = open(self.output, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "defectwatch", "watch", *args],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=env(tmp_path),
        )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._fh.close()

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait(10)
        self._fh.close()


def query(db: Path | str, sql: str, *args: object) -> list[tuple]:
    """Rows of ``sql`` from a SQLite file (read-only) or a server URL."""
    if isinstance(db, Path):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(db, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql, args or None).fetchall()]
    finally:
        engine.dispose()


def scans(db: Path | str) -> dict[str, tuple]:
    """file name -> (status, attempts, last_error, sample, runs, model versions)."""
    rows = query(
        db,
        """
        SELECT s.id, s.path, s.status, s.attempts, s.last_error, sa.name, r.model_version
        FROM scan s LEFT JOIN sample sa ON sa.id = s.sample_id
        LEFT JOIN detection_run r ON r.scan_id = s.id ORDER BY s.id, r.id""",
    )
    out: dict[str, tuple] = {}
    versions: dict[str, list[str]] = {}
    for _, path, status, attempts, error, sample, version in rows:
        name = Path(path).name
        versions.setdefault(name, [])
        if version is not None:
            versions[name].append(version)
        out[name] = (
            status,
            attempts,
            error,
            sample,
            len(versions[name]),
            ",".join(versions[name]) or None,
        )
    return out


def wait_until(cond: Callable[[], bool], what: str, timeout_s: float, *procs: Watch) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for w in procs:
            if w.proc.poll() is not None:
                raise AssertionError(
                    f"watch exited ({w.proc.returncode}) while waiting for "
                    f"{what}:\n{w.text()[-3000:]}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(w.text()[-2000:] for w in procs)
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs}")
        time.sleep(0.1)


def started(db: Path, n: int = 1) -> Callable[[], bool]:
    """At least ``n`` daemons beating (they beat once reconcile is done)."""

    def check() -> bool:
        try:
            return (
                query(db, "SELECT COUNT(*) FROM daemon_heartbeat WHERE stopped_at IS NULL")[0][0]
                >= n
            )
        except Exception:  # noqa: BLE001 - not created yet (or the server is away)
            return False

    return check


def test_a_session_written_as_an_instrument_writes_it(tmp_path, tiny_models):
    db = make_db(tmp_path / "record.db", tiny_models)
    root = tmp_path / "Lab data – Ångström"
    first, second = root / "WSe2-SL445 ü", root / "MoSe2-M12"
    first.mkdir(parents=True)
    second.mkdir()
    watch = Watch(tmp_path, "watch", str(root), "--recursive", "--db", str(db), *FAST)
    try:
        wait_until(started(db), "start-up", 90, watch)

        data = sxm_bytes(1, pixels=64)

        def slow_writer() -> None:  # ~2 s, pauses longer than --stable-for
            with open(first / "slow scan.sxm", "wb") as fh:
                for k in range(8):
                    fh.write(data[k * len(data) // 8 : (k + 1) * len(data) // 8])
                    fh.flush()
                    time.sleep(0.25)

        writer = threading.Thread(target=slow_writer)
        writer.start()
        whole = sxm_bytes(2, pixels=64)
        (first / "cut.sxm").write_bytes(whole[: len(whole) * 2 // 3])
        (first / "garbage.sxm").write_bytes(os.urandom(30_000))
        (first / "text.sxm").write_text("Just some notes.\n" * 50)
        (first / "notes.txt").write_text("not watched")
        for k in range(30):
            write_scan(second / f"STM_MoSe2-M12_{k:03d}.sxm", 100 + k, pixels=64)
        readers = [
            subprocess.Popen(
                [sys.executable, "-m", "defectwatch", "density", "--json", "--db", str(db)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env(tmp_path),
            )
            for _ in range(2)
        ]
        writer.join()
        for r in readers:  # queried while it writes
            out, err = r.communicate(timeout=120)
            assert r.returncode == 0, err
            assert "locked" not in err
            assert isinstance(json.loads(out), list)

        def settled() -> bool:
            s = scans(db)
            return len(s) == 34 and all(v[0] in ("done", "failed") for v in s.values())

        wait_until(settled, "34 scans done or failed", 120, watch)
        activate(db, "tiny-2")  # the next scan uses the newly active version
        write_scan(first / "after the switch.sxm", 200, pixels=64)
        wait_until(
            lambda: scans(db).get("after the switch.sxm", ("",))[0] == "done",
            "a scan after the model switch",
            60,
            watch,
        )
        code = watch.stop()
    finally:
        if watch.proc.poll() is None:
            watch.proc.kill()
    log = watch.text()
    assert code == 0, log[-3000:]

    s = scans(db)
    assert "notes.txt" not in s and len(s) == 35
    assert s["slow scan.sxm"][:2] == ("done", 1), log[-3000:]
    status, attempts, error, *_ = s["cut.sxm"]
    assert (status, attempts) == ("failed", 3) and "header promises" in error
    for name in ("garbage.sxm", "text.sxm"):
        assert s[name][:2] == ("failed", 1) and "not a Nanonis .sxm file" in s[name][2]
    done = {n: v for n, v in s.items() if v[0] == "done"}
    assert len(done) == 32 and all(v[4] == 1 for v in done.values())  # one run each
    assert s["slow scan.sxm"][3] == "WSe2-SL445 ü" and s["STM_MoSe2-M12_000.sxm"][3] == "MoSe2-M12"
    assert s["after the switch.sxm"][5] == "tiny-2"
    assert s["STM_MoSe2-M12_029.sxm"][5] == "tiny-1"
    # one log line per scan, in the rotating file too; a clean stop recorded
    logged = (tmp_path / "watch.log").read_text()
    assert "WSe2-SL445 ü slow scan.sxm:" in logged and "trough" in logged
    assert (
        query(db, "SELECT COUNT(*) FROM daemon_heartbeat WHERE stopped_at IS NOT NULL")[0][0] == 1
    )


def test_kill_9_restart_and_two_watchers_record_every_scan_once(tmp_path, tiny_models, record_db):
    db = make_db(record_db, tiny_models)
    folder = tmp_path / "scans"
    n = 24
    for k in range(n):
        write_scan(folder / f"scan_{k:03d}.sxm", 300 + k, pixels=128)
    # the lease outlives a slow scan on a loaded machine, and has expired by the time the
    # restarted daemons are up (start-up takes longer than that)
    args = [str(folder), "--db", str(db), "--lease", "6", *FAST]
    one = Watch(tmp_path, "one", *args)
    again = two = None

    def done() -> int:
        return sum(v[0] == "done" for v in scans(db).values())

    try:
        wait_until(lambda: done() >= 3, "a few scans done", 120, one)
        one.kill()  # kill -9 mid-run: the scan it held stays leased to a dead process
        done_by_one = {name for name, v in scans(db).items() if v[0] == "done"}
        killed_at = len(done_by_one)
        again = Watch(tmp_path, "again", *args)  # the restart, and a second daemon beside it
        two = Watch(tmp_path, "two", *args)
        wait_until(lambda: done() == n, f"all {n} scans done", 120, again, two)
        # both up (the killed one's row stays unstopped): one may have been slow to start
        # while the other did the work
        wait_until(started(db, 3), "both restarted daemons beating", 120, again, two)
        assert again.stop() == 0 and two.stop() == 0
    finally:
        for w in (one, again, two):
            if w is not None and w.proc.poll() is None:
                w.proc.kill()
    assert killed_at < n, "the first daemon finished before it could be killed"
    s = scans(db)
    assert len(s) == n and {v[0] for v in s.values()} == {"done"}
    assert {v[4] for v in s.values()} == {1}  # one detection run per scan

    # no scan processed to the end twice: the restarted daemons log one summary line for each
    # scan the killed one had not recorded, and none for those it had. The killed daemon logs
    # at most one per scan; the kill may fall between its commit and its log line, so the
    # database, not its log, says what it finished.
    def summaries(*watches: Watch) -> Counter[str]:
        return Counter(
            name
            for w in watches
            for line in w.text().splitlines()
            for name in s
            if f" {name}: " in line and " trough, " in line
        )

    assert summaries(again, two) == Counter({name: 1 for name in s if name not in done_by_one})
    assert set(summaries(one)) <= done_by_one and set(summaries(one).values()) <= {1}
    assert "lease lost" not in again.text() + two.text()


def test_expected_size_and_log_file_location(tmp_path):
    path = tmp_path / "a.sxm"
    data = sxm_bytes(5)
    path.write_bytes(data[:500])
    assert sxm_expected_size(str(path)) is None
    path.write_bytes(data)
    assert sxm_expected_size(str(path)) == len(data)
    assert default_log_file(str(tmp_path / "x.db")) == tmp_path / "watch.log"
    assert default_log_file(f"sqlite:///{tmp_path}/y.db") == tmp_path / "watch.log"
    assert default_log_file("postgresql://u@h/db").name == "watch.log"


def test_watch_reports_bad_set_up_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "defectwatch",
            "watch",
            str(tmp_path / "missing"),
            "--db",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(tmp_path),
    )
    assert result.returncode == 1
    assert "missing: not a folder" in result.stderr and "Traceback" not in result.stderr


STOPPED_WHILE_LOADING = """
import os, signal, sys
import defectwatch.service.watching as watching
from defectwatch.service.watching import WatchOptions, watch

loaded = watching.check_model

def check_model(engine):  # SIGTERM arrives while the model loads
    os.kill(os.getpid(), signal.SIGTERM)
    return loaded(engine)

watching.check_model = check_model
report = watch([sys.argv[1]], db_url=sys.argv[2], options=WatchOptions(stable_for_s=0.3))
print("stopped cleanly, done", report.done)
"""


def test_a_sigterm_while_the_model_loads_stops_cleanly(tmp_path, tiny_models):
    """systemd may stop the daemon during its seconds of start-up: exit 0, a clean stop
    recorded, not death by signal."""
    db = make_db(tmp_path / "record.db", tiny_models)
    folder = tmp_path / "scans"
    write_scan(folder / "scan_000.sxm", 1, pixels=64)
    run = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_LOADING, str(folder), f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(tmp_path),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stopped cleanly, done 0" in run.stdout and "SIGTERM" in run.stderr
    assert (
        query(db, "SELECT COUNT(*) FROM daemon_heartbeat WHERE stopped_at IS NOT NULL")[0][0] == 1
    )


def test_postgresql_going_away_under_watch_loses_no_scan(tmp_path, tiny_models, pg_cluster):
    """The server stops while `watch` runs and scans keep arriving; it starts again: the daemon
    says the database is unreachable, retries with backoff, and records every scan once."""
    from tests.postgres import create_database

    db = make_db(create_database(pg_cluster.url), tiny_models)
    folder = tmp_path / "scans"
    folder.mkdir()
    watch = Watch(tmp_path, "watch", str(folder), "--db", str(db), "--instrument", "LT-STM", *FAST)

    def done() -> int:
        return sum(v[0] == "done" for v in scans(db).values())

    try:
        wait_until(started(db), "start-up", 90, watch)
        for k in range(2):
            write_scan(folder / f"before_{k}.sxm", 400 + k, pixels=64)
        wait_until(lambda: done() == 2, "the scans before the outage", 60, watch)
        pg_cluster.stop()  # clients disconnected, as a server restart or crash does
        for k in range(4):
            write_scan(folder / f"during_{k}.sxm", 410 + k, pixels=64)
        wait_until(
            lambda: "retrying in 2 s" in watch.text(), "the outage noticed and retried", 60, watch
        )
        time.sleep(1.0)  # the scans written meanwhile are stable and waiting
        pg_cluster.start()
        wait_until(lambda: done() == 6, "every scan recorded after the outage", 90, watch)
        code = watch.stop()
    finally:
        if watch.proc.poll() is None:
            watch.proc.kill()
    log = watch.text()
    assert code == 0, log[-3000:]
    s = scans(db)
    assert len(s) == 6 and {v[0] for v in s.values()} == {"done"}
    assert {v[4] for v in s.values()} == {1}, s  # one detection run per scan
    assert "is unreachable" in log and "retrying in 1 s" in log and "retrying in 2 s" in log
    assert "database reachable again" in log and "Traceback" not in log, log[-3000:]
    assert query(db, "SELECT DISTINCT instrument FROM scan") == [("LT-STM",)]
