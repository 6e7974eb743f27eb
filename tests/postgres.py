"""A real PostgreSQL server for the tests: a throwaway cluster, or the one a URL names.

Where the tests get their server, in order:

1. ``DEFECTWATCH_TEST_POSTGRES``: a server URL whose user may create databases, e.g.
   ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``;
2. else a throwaway cluster of the PostgreSQL binaries found on this machine (Debian's
   ``/usr/lib/postgresql/<major>/bin``, or ``pg_config --bindir``): a temporary data directory, a
   free port on 127.0.0.1, trust authentication, stopped and deleted after the session. The
   server refuses to run as root, so as root the cluster runs as ``DEFECTWATCH_TEST_PG_USER``
   (default ``defectwatch-ci``; create it with ``useradd -r defectwatch-ci``);
3. else the PostgreSQL tests are skipped, except under ``CI=true``, where they FAIL: nothing
   PostgreSQL-related may silently skip in CI.

Each test gets a fresh database (``pg_url``), dropped afterwards. ``PgCluster`` is also used
directly by the tests that stop and start a server under a running daemon.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

URL_VARIABLE = "DEFECTWATCH_TEST_POSTGRES"
USER_VARIABLE = "DEFECTWATCH_TEST_PG_USER"
DEFAULT_USER = "defectwatch-ci"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (None when there are none)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent  # type: ignore[arg-type]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """A throwaway PostgreSQL cluster: ``start()``, ``stop()``, ``start()`` again (same data,
    same port), ``destroy()``. ``url`` reaches its ``postgres`` database as superuser."""

    def __init__(self, bindir: Path, *, user: str | None = None) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="defectwatch-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.user = user
        if os.geteuid() == 0:
            self.user = user or os.environ.get(USER_VARIABLE, DEFAULT_USER)
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                raise RuntimeError(
                    f"PostgreSQL refuses to run as root and there is no user {self.user!r} to "
                    f"run it as: create one (useradd -r {self.user}), name another in "
                    f"{USER_VARIABLE}, or point {URL_VARIABLE} at a server"
                ) from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout_s: float = 120) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.user is not None and os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{log}"
            )

    def start(self) -> None:
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients disconnected, as a restart or crash would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI (where PostgreSQL must be tested)."""
    if in_ci():
        pytest.fail(
            f"PostgreSQL tests cannot run in CI: {reason}. .ci/run installs Debian's "
            f"postgresql and the non-root user {DEFAULT_USER}",
            pytrace=False,
        )
    pytest.skip(reason)


def throwaway_cluster() -> PgCluster:
    """A started cluster, or skip/fail (see `unavailable`) when none can be made."""
    bindir = postgres_bindir()
    if bindir is None:
        unavailable(
            "no PostgreSQL server binaries here (apt-get install postgresql, or set "
            f"{URL_VARIABLE})"
        )
    try:
        cluster = PgCluster(bindir)  # type: ignore[arg-type]
        cluster.start()
    except RuntimeError as exc:
        unavailable(str(exc))
    return cluster


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server URL for the whole session (see the module docstring)."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        yield url
        return
    cluster = throwaway_cluster()
    try:
        yield cluster.url
    finally:
        cluster.destroy()


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A cluster of this test's own (for stopping and starting it under a running daemon)."""
    cluster = throwaway_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


def create_database(server: str) -> str:
    """A new empty database on ``server``; its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"dw_test_{uuid.uuid4().hex[:10]}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
            break
        except Exception:  # noqa: BLE001 - the server may still be starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    admin.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def drop_database(server: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {make_url(url).database} WITH (FORCE)"))
    finally:
        admin.dispose()


@pytest.fixture
def pg_url(pg_server) -> Iterator[str]:
    """A fresh database on the session's server, dropped after the test."""
    url = create_database(pg_server)
    yield url
    drop_database(pg_server, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request, tmp_path) -> str:
    """The same test once on a SQLite file and once on a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'record.db'}"
    return request.getfixturevalue("pg_url")
