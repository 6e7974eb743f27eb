"""A real record for the web app's tests: simulated scans of two samples processed by
`defectwatch process` with the shipped ensemble into a SQLite file (once per session; each test
that writes gets its own copy)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from defectwatch.service.cli import app
from defectwatch.service.simulation import write_simulated_scans


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> Path:
    """The SQLite file `process` wrote: samples WSe2-SL1 (2 scans) and WSe2-SL2 (1 scan),
    20 nm at 128 px (shipped model; a few seconds)."""
    root = tmp_path_factory.mktemp("web-record")
    write_simulated_scans(
        root / "scans" / "WSe2-SL1", n=2, size_nm=20.0, pixels=128, seed=11, density_per_cm2=4e12
    )
    write_simulated_scans(
        root / "scans" / "WSe2-SL2", n=1, size_nm=20.0, pixels=128, seed=21, density_per_cm2=2e12
    )
    db = root / "record.db"
    files = sorted(str(p) for p in (root / "scans").rglob("*.sxm"))
    result = CliRunner().invoke(app, ["process", *files, "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    return db


@pytest.fixture
def record(recorded, tmp_path) -> Path:
    """A copy of the recorded database this test may write to."""
    db = tmp_path / "record.db"
    shutil.copy(recorded, db)
    return db


def query(db: Path, sql: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTWATCH_")}
    e["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    e["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    e["PYTHONUNBUFFERED"] = "1"
    e["OMP_NUM_THREADS"] = e["MKL_NUM_THREADS"] = "1"
    return e


class Served:
    """`defectwatch serve` as a subprocess on a free port (output in a file)."""

    def __init__(self, tmp_path: Path, db: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = tmp_path / f"serve-{self.port}.out"
        self._fh = open(self.output, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "defectwatch",
                "serve",
                "--db",
                str(db),
                "--port",
                str(self.port),
                *args,
            ],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=env(tmp_path),
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited ({self.proc.returncode}): {self.text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve did not listen: {self.text()}") from None
                time.sleep(0.1)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        finally:
            self._fh.close()


@pytest.fixture
def browser():
    """Headless Debian chromium driven by Playwright (`playwright install` cannot download
    browsers here; .ci/run installs the `chromium` package when it is missing)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(executable).exists(), "install Debian's chromium: apt-get install -y chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=executable,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            b.close()
