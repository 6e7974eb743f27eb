"""`inspect`, `process` and `watch` treat every supported format alike: real files of each
format (../shared/fixtures/real-formats), a tiny real model, a real SQLite file."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from defectwatch.service.cli import app

runner = CliRunner()
IMAGES = (
    "topo_ABC_Graphite-Sample5_9K_2021_08_13_19_11_10_065.sm4",
    "20201111--4_1.Z_mtrx",
    "A250407.141806.dat",
    "mulfile_test_single_image.gwy",
    "hBN_defect_img_0070.sxm",
)
OTHERS = ("20201111_0001.mtrx", "Iz_gold_9K_2019_12_18_13_49_32_752.sm4")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member, save_version

    torch.manual_seed(0)
    spec = UnetSpec(nb_filters=4)
    cfg = ModelConfig(version="tiny-formats", pixel_size_nm=0.5, architecture=spec)
    return save_version(
        tmp_path_factory.mktemp("m") / "tiny",
        cfg,
        [build_member(spec).state_dict() for _ in range(2)],
    )


@pytest.fixture
def lab(shared_formats, tmp_path) -> Path:
    """A folder as a lab's share would hold it: one image of each format, a MATRIX chain file,
    an .sm4 of spectra only, and a note."""
    folder = tmp_path / "Sample-A1"
    folder.mkdir()
    for name in IMAGES + OTHERS:
        shutil.copy(shared_formats[name], folder / name)
    (folder / "notes.txt").write_text("not a scan")
    return folder


def test_inspect_reads_every_format(lab):
    result = runner.invoke(app, ["inspect", "--json", *(str(lab / n) for n in IMAGES)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in rows] == list(IMAGES)
    assert all(r["width_nm"] > 0 and r["acquired_fraction"] > 0 for r in rows)
    assert [r["nx"] for r in rows] == [128, 400, 256, 512, 96]
    assert rows[2]["acquired_fraction"] == pytest.approx(9 / 256)  # the aborted Createc scan


def test_process_a_folder_of_every_format(lab, tiny_model, tmp_path):
    db = tmp_path / "record.sqlite"
    result = runner.invoke(
        app,
        [
            "process",
            str(lab),
            "--json",
            "--model",
            str(tiny_model),
            "--db",
            str(db),
            "--overlay",
            str(tmp_path / "pictures"),
        ],
    )
    lines = {Path(x["path"]).name: x for x in map(json.loads, result.stdout.splitlines())}
    # the chain file and the note are not scans; the spectra file fails with its reason
    assert set(lines) == set(IMAGES) | {"Iz_gold_9K_2019_12_18_13_49_32_752.sm4"}
    assert result.exit_code == 1
    spectra = lines.pop("Iz_gold_9K_2019_12_18_13_49_32_752.sm4")
    assert spectra["status"] == "failed" and "no image in this file" in spectra["error"]
    assert all(x["status"] == "ok" for x in lines.values()), lines
    assert len(list((tmp_path / "pictures").glob("*.png"))) == len(IMAGES)
    con = sqlite3.connect(db)
    recorded = {Path(p).name for (p,) in con.execute("SELECT path FROM scan")}
    con.close()
    assert recorded == set(IMAGES)  # nothing recorded for the file without an image

    # labels drawn on renders of these scans find them by file stem, whatever the format
    via = tmp_path / "via.csv"
    via.write_text(
        "Large Bright Trough,10,20,8,8,20201111--4_1.png,128,128\n"
        "Small Dim Peak,60,60,4,6,A250407.141806.png,128,128\n"
    )
    imported = runner.invoke(app, ["labels", "import", str(via), "--db", str(db)])
    assert imported.exit_code == 0, imported.output
    assert "imported 1 trough, 1 peak on 2 scan(s)" in imported.stdout


def test_watch_once_takes_every_format_unless_the_pattern_narrows_it(lab, tiny_model, tmp_path):
    from defectwatch.service.watching import WatchOptions, watch

    def recorded(db: Path) -> dict[str, str]:
        con = sqlite3.connect(db)
        try:
            return {Path(p).name: s for p, s in con.execute("SELECT path, status FROM scan")}
        finally:
            con.close()

    def run(db: Path, **options) -> None:
        from defectwatch.db import open_database, write_transaction
        from defectwatch.db.registry import register_version

        engine = open_database(db)
        with write_transaction(engine) as session:
            register_version(
                "tiny-formats", session=session, directory=str(tiny_model), members=2, activate=True
            )
        engine.dispose()
        watch(
            [lab],
            db_url=str(db),
            handle_signals=False,
            options=WatchOptions(
                once=True,
                stable_for_s=0.0,
                incomplete_after_s=0.5,
                retry_delay_s=0.1,
                max_attempts=2,
                **options,
            ),
        )

    every = tmp_path / "every.db"
    run(every)
    assert recorded(every) == {n: "done" for n in IMAGES}  # spectra file skipped, not failed
    narrow = tmp_path / "narrow.db"
    run(narrow, pattern="*.sm4")
    assert recorded(narrow) == {IMAGES[0]: "done"}
