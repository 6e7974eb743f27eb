"""Live: `watch` and `serve` running as processes, a scan dropped into the watched folder, and
the overview already open in a browser shows it without a reload."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defectwatch.service.simulation import write_simulated_scans
from tests.service.web.conftest import Served, env, query

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    """A tiny random version (2 members, 4 filters): the plumbing, not the science."""
    import torch

    from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member, save_version

    torch.manual_seed(0)
    spec = UnetSpec(nb_filters=4)
    return save_version(
        tmp_path / "tiny",
        ModelConfig(version="tiny-live", pixel_size_nm=0.1, architecture=spec),
        [build_member(spec).state_dict() for _ in range(2)],
    )


def test_a_scan_dropped_in_appears_on_the_open_page_without_a_reload(tmp_path, tiny_model, browser):
    from defectwatch.db import open_database, write_transaction
    from defectwatch.db.registry import register_version

    db = tmp_path / "live.db"
    engine = open_database(db)
    with write_transaction(engine) as s:
        register_version(
            "tiny-live", session=s, directory=str(tiny_model), members=2, activate=True
        )
    engine.dispose()
    watched = tmp_path / "watched"
    (watched / "WSe2-LIVE").mkdir(parents=True)
    staged = tmp_path / "staged"
    (written,) = write_simulated_scans(staged, n=1, size_nm=8.0, pixels=64, seed=4)

    out = open(tmp_path / "watch.out", "wb")
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "defectwatch",
            "watch",
            str(watched),
            "--recursive",
            "--db",
            str(db),
            "--poll",
            "0.3",
            "--stable-for",
            "0.3",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env(tmp_path),
    )
    server = Served(tmp_path, db)
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_load_state("networkidle")
        page.evaluate("window.__notReloaded = true")
        assert page.locator("#recent-scans tbody tr").count() == 0
        # the daemon beats once it is ready: the page shows it alive without a reload too
        page.locator("#status .ok", has_text="alive").wait_for(timeout=60_000)
        shutil.copy(written.sxm, watched / "WSe2-LIVE" / written.sxm.name)
        t0 = time.monotonic()
        row = page.locator("#recent-scans tbody tr", has_text=written.sxm.name)
        row.wait_for(timeout=30_000)
        row.filter(has_text="done").wait_for(timeout=30_000)
        seconds = time.monotonic() - t0
        assert page.evaluate("window.__notReloaded === true")  # the same document
        assert page.locator("table.samples", has_text="WSe2-LIVE").count() == 1
        assert query(db, "SELECT status FROM scan") == [("done",)]
        assert seconds < 30
    finally:
        server.stop()
        if watch.poll() is None:
            watch.send_signal(signal.SIGTERM)
        try:
            watch.wait(30)
        finally:
            out.close()
