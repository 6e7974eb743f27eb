"""`defectwatch labels ...` and `import-image` on real SQLite files, real images and every
label format (VIA rows as the paper's annotators exported them included)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from defectwatch.db import open_database, read_transaction
from defectwatch.db.labels import labelled_scans
from defectwatch.service.cli import app
from tests.conftest import SHARED
from tests.db.factories import detection, record

runner = CliRunner()
REAL = SHARED / "real-wse2"

# Rows like the paper's VIA export (no header; boxes on a 128 x 128 render; lattice rows).
VIA_ROWS = """\
Large Bright Trough,10,20,8,8,STM_A_001.png,128,128
Small Dim Peak,60,60,4,6,STM_A_001.png,128,128
WSe2 Atoms,0,0,128,128,STM_A_001.png,128,128
Large Dim Trough,100,4,10,10,stm_a_002.PNG,128,128
Bright Flower,3,3,5,5,STM_A_002.png,128,128
Small Bright Peak,1,1,4,4,never_recorded.png,128,128
"""


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def write_png(path: Path, size: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'record.db'}"


@pytest.fixture
def renders(tmp_path, db) -> list[Path]:
    """Two 64 px renders of 32 nm recorded as scans of sample A."""
    files = [
        write_png(tmp_path / "A" / "STM_A_001.png", seed=1),
        write_png(tmp_path / "A" / "STM_A_002.png", seed=2),
    ]
    result = invoke("import-image", *files, "--size-nm", "32", "--db", db)
    assert result.exit_code == 0, result.output
    return files


def labels(db: str) -> dict[str, list[tuple]]:
    engine = open_database(db)
    with read_transaction(engine) as s:
        found = labelled_scans(session=s, with_labels=True)
    engine.dispose()
    return {
        Path(x.scan.path).name: sorted(
            (
                round(lab.row, 3),
                round(lab.col, 3),
                lab.kind,
                round(lab.radius_nm or 0, 3),
                lab.source,
                lab.exhaustive,
            )
            for lab in x.labels
        )
        for x in found
    }


def test_import_image_records_renders_without_distorting_densities(tmp_path, db):
    real = record(
        open_database(db), "/w/A/STM_real.sxm", sample="A", runs=[detection(3, 1, 10_000.0)]
    )
    assert real
    png = write_png(tmp_path / "A" / "render_30x20nm.png", size=64)
    result = invoke("import-image", png, "--db", db)  # size from the name
    assert result.exit_code == 0, result.output
    assert "recorded scan 2" in result.stdout and "30x20 nm" in result.stdout
    scans = {s["file"]: s for s in json.loads(invoke("scans", "--json", "--db", db).stdout)}
    r = scans["render_30x20nm.png"]
    assert (r["status"], r["nx"], r["width_nm"], r["height_nm"], r["sample"]) == (
        "done",
        64,
        30.0,
        20.0,
        "A",
    )
    assert r["model_version"] is None  # no detection run
    (a,) = json.loads(invoke("density", "--json", "--db", db).stdout)
    assert a["scans"] == 1 and a["area_nm2"] == 10_000.0 and a["counts"]["total"] == 4

    # again with another size and a sample: the same scan, updated
    again = invoke("import-image", png, "--size-nm", "40x40", "--sample", "B", "--db", db)
    assert again.exit_code == 0 and "updated scan 2" in again.stdout
    # an image-only sample is not in the density report
    assert [x["sample"] for x in json.loads(invoke("density", "--json", "--db", db).stdout)] == [
        "A"
    ]


def test_import_image_errors_are_one_line_and_the_rest_still_records(tmp_path, db):
    bare = write_png(tmp_path / "bare.png")
    ok = write_png(tmp_path / "ok_10x10.png")
    not_image = tmp_path / "scan.sxm"
    not_image.write_bytes(b"x")
    result = invoke("import-image", bare, ok, not_image, "--db", db)
    assert result.exit_code == 1
    assert "holds no frame size" in result.stderr and "--size-nm" in result.stderr
    assert "not a rendered image" in result.stderr
    assert "recorded scan 1: ok_10x10.png" in result.stdout
    bad = invoke("import-image", ok, "--size-nm", "wide", "--db", db)
    assert bad.exit_code == 1 and "W or WxH" in bad.stderr and "Traceback" not in bad.output


def test_via_rows_like_the_papers_are_matched_by_stem_and_scaled(renders, db, tmp_path):
    via = tmp_path / "labels_via.csv"
    via.write_text(VIA_ROWS)
    result = invoke("labels", "import", via, "--db", db)
    assert result.exit_code == 0, result.output
    assert "imported 2 trough, 1 peak on 2 scan(s)" in result.stdout
    assert "1 not a defect" in result.stdout and "1 unknown class" in result.stdout
    assert "never_recorded.png" in result.stderr and "no recorded scan" in result.stderr
    assert "'Bright Flower'" in result.stderr
    got = labels(db)
    # 128 px render -> 64 px scan: centre (24, 14) -> row 24/2 - 0.5, col 14/2 - 0.5
    # radius: a quarter of (8 + 8) render px x 32 nm / 128 px = 1 nm
    assert got["STM_A_001.png"] == [
        (11.5, 6.5, "trough", 1.0, "via:labels_via.csv", True),
        (31.0, 30.5, "peak", 0.625, "via:labels_via.csv", True),
    ]
    assert [x[:3] for x in got["STM_A_002.png"]] == [(4.0, 52.0, "trough")]

    # importing the same file again replaces, --partial marks the sets partial
    again = invoke("labels", "import", via, "--partial", "--db", db)
    assert again.exit_code == 0
    got = labels(db)
    assert sum(len(v) for v in got.values()) == 3
    assert {x[5] for v in got.values() for x in v} == {False}


def test_unmatched_only_is_an_error_and_unreadable_files_do_not_stop_others(renders, db, tmp_path):
    only = tmp_path / "other.csv"
    only.write_text("Large Bright Peak,1,1,4,4,unknown_scan.png,128,128\n")
    result = invoke("labels", "import", only, "--db", db)
    assert result.exit_code == 1 and "no labels were imported" in result.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text("Large Bright Peak,1,1\n")
    good = tmp_path / "good.csv"
    good.write_text("Small Dim Trough,10,10,4,4,STM_A_001.png,128,128\n")
    result = invoke("labels", "import", broken, good, "--db", db)
    assert result.exit_code == 1
    assert "broken.csv:1: expected 8 columns" in result.stderr
    assert "imported 1 trough, 0 peak on 1 scan(s)" in result.stdout
    bad_format = invoke("labels", "import", good, "--format", "yolo", "--db", db)
    assert bad_format.exit_code == 1 and "choose one of via, voc, coco, csv" in bad_format.stderr


def test_voc_coco_and_point_csv_and_the_scan_option(renders, db, tmp_path):
    voc = tmp_path / "whatever.xml"
    voc.write_text("""<annotation><filename>ignored_name.png</filename>
      <size><width>64</width><height>64</height></size>
      <object><name>Large Bright Trough</name>
        <bndbox><xmin>11</xmin><ymin>21</ymin><xmax>14</xmax><ymax>24</ymax></bndbox>
      </object></annotation>""")
    result = invoke("labels", "import", voc, "--scan", "STM_A_002.png", "--db", db)
    assert result.exit_code == 0, result.output
    coco = tmp_path / "coco.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "STM_A_001.png", "width": 32, "height": 32}],
                "categories": [{"id": 1, "name": "peak"}, {"id": 2, "name": "WSe2 Atoms"}],
                "annotations": [
                    {"id": 1, "image_id": 7, "category_id": 1, "bbox": [4, 8, 2, 2]},
                    {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0, 0, 32, 32]},
                ],
            }
        )
    )
    assert invoke("labels", "import", coco, "--db", db).exit_code == 0
    points = tmp_path / "points.csv"
    points.write_text(
        "scan,row,col,kind,radius_nm\nSTM_A_001,3.5,4.25,trough,0.8\nSTM_A_001,70,1,peak,\n"
    )
    result = invoke("labels", "import", points, "--partial", "--db", db)
    assert result.exit_code == 0, result.output
    assert "1 outside the frame dropped" in result.stdout
    got = labels(db)
    assert got["STM_A_002.png"] == [(21.5, 11.5, "trough", 1.0, "voc:whatever.xml", True)]
    assert (17.5, 9.5, "peak", 1.0, "coco:coco.json", True) in got["STM_A_001.png"]
    assert (3.5, 4.25, "trough", 0.8, "csv:points.csv", False) in got["STM_A_001.png"]

    listed = json.loads(invoke("labels", "list", "--json", "--db", db).stdout)
    one = next(x for x in listed if x["path"].endswith("STM_A_001.png"))
    assert one["exhaustive"] and one["counts"] == {"trough": 1, "peak": 1, "total": 2}
    assert {(s["source"], s["exhaustive"], s["labels"]) for s in one["sources"]} == {
        ("coco:coco.json", True, 1),
        ("csv:points.csv", False, 1),
    }
    table = invoke("labels", "list", "--sample", "A", "--db", db)
    assert table.exit_code == 0 and "2 labelled scan(s): 2 exhaustive" in table.stdout
    assert invoke("labels", "list", "--sample", "Z", "--db", db).exit_code == 1

    # --scan with a file labelling several images is refused for that file
    two = tmp_path / "two.csv"
    two.write_text(VIA_ROWS)
    refused = invoke("labels", "import", two, "--scan", "1", "--db", db)
    assert refused.exit_code == 1 and "--scan names one scan" in refused.stderr
    unknown = invoke("labels", "import", two, "--scan", "nope.png", "--db", db)
    assert unknown.exit_code == 1 and "no scan 'nope.png'" in unknown.stderr


def test_accept_turns_the_latest_run_into_exhaustive_labels(tmp_path, db):
    engine = open_database(db)
    scan = record(
        engine,
        "/w/A/STM_001.sxm",
        sample="A",
        runs=[detection(1, 1, 100.0, version="old"), detection(2, 1, 100.0)],
    )
    record(engine, "/w/A/queued.sxm", sample="A", runs=[], status="queued")
    engine.dispose()
    result = invoke("labels", "accept", "STM_001.sxm", "--db", db)
    assert result.exit_code == 0, result.output
    assert "accepted 2 trough, 1 peak from run 2 (v1)" in result.stdout
    got = labels(db)["STM_001.sxm"]
    assert [(r, c, k, s, e) for r, c, k, _, s, e in got] == [
        (0.0, 0.0, "trough", "accepted", True),
        (1.0, 1.0, "trough", "accepted", True),
        (2.0, 2.0, "peak", "accepted", True),
    ]
    assert got[0][3] == pytest.approx(np.sqrt(1.5 / np.pi), abs=1e-3)
    # above every detection's confidence: no label, but the scan stays labelled as clean
    result = invoke("labels", "accept", str(scan), "--min-confidence", "0.95", "--db", db)
    assert result.exit_code == 0 and "3 below 0.95 left out" in result.stdout
    assert "replacing" in result.stdout
    (x,) = json.loads(invoke("labels", "list", "--json", "--db", db).stdout)
    assert x["exhaustive"] and x["counts"]["total"] == 0
    missing = invoke("labels", "accept", "queued.sxm", "--db", db)
    assert missing.exit_code == 1 and "no detection run" in missing.stderr


def test_export_in_every_format_imports_back_onto_the_same_scans(renders, db, tmp_path):
    via = tmp_path / "in.csv"
    via.write_text(VIA_ROWS)
    assert invoke("labels", "import", via, "--db", db).exit_code == 0
    before = labels(db)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert invoke("import-image", *renders, "--size-nm", "32", "--db", fresh).exit_code == 0
    for fmt, target in (
        ("via", tmp_path / "out" / "via.csv"),
        ("coco", tmp_path / "c.json"),
        ("csv", tmp_path / "p.csv"),
        ("voc", tmp_path / "voc"),
    ):
        result = invoke("labels", "export", target, "--format", fmt, "--db", db)
        assert result.exit_code == 0, result.output
        assert "exported 2 trough, 1 peak of 2 scan(s)" in result.stdout
        files = sorted(target.glob("*.xml")) if fmt == "voc" else [target]
        assert len(files) == (2 if fmt == "voc" else 1)
        back = invoke("labels", "import", *files, "--format", fmt, "--db", fresh)
        assert back.exit_code == 0, back.output
    after = labels(fresh)  # each format is its own source: compare them one by one
    for fmt in ("via", "coco", "csv", "voc"):
        for name in before:
            got = [x for x in after[name] if x[4].startswith(f"{fmt}:")]
            assert [x[2] for x in got] == [x[2] for x in before[name]], fmt
            np.testing.assert_allclose(
                [(x[0], x[1], x[3]) for x in got],
                [(x[0], x[1], x[3]) for x in before[name]],
                atol=2e-3,
            )
    # our CSV is readable as such
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert {r["scan"] for r in rows} == {"STM_A_001.png", "STM_A_002.png"}
    # default format from the target; a folder for other formats gets a named file
    assert "as coco" in invoke("labels", "export", tmp_path / "x.json", "--db", db).stdout
    folder = tmp_path / "dir"
    folder.mkdir()
    assert invoke("labels", "export", folder, "--format", "via", "--db", db).exit_code == 0
    assert (folder / "labels_via.csv").is_file()


def test_the_real_frames_and_the_papers_via_labels(tmp_path, db):
    if not (REAL / "labels_via.csv").is_file():
        pytest.skip("../shared/fixtures/real-wse2 is not present")
    frames = sorted(REAL.glob("*.jpg"))
    folder = tmp_path / "WSe2-SL445"
    folder.mkdir()
    for f in frames:  # a copy: the fixtures stay read-only
        shutil.copy(f, folder / f.name)
    result = invoke("import-image", *sorted(folder.glob("*.jpg")), "--db", db)
    assert result.exit_code == 0, result.output  # sizes from the names (_100x100_)
    result = invoke("labels", "import", REAL / "labels_via.csv", "--db", db)
    assert result.exit_code == 0, result.output
    via_rows = list(csv.reader(io.StringIO((REAL / "labels_via.csv").read_text())))
    images = {r[5] for r in via_rows if r and not r[0].lower().endswith("atoms")}
    listed = json.loads(invoke("labels", "list", "--json", "--db", db).stdout)
    assert len(listed) == len(images) and all(x["exhaustive"] for x in listed)
    assert {x["sample"] for x in listed} == {"WSe2-SL445"}
    total = sum(x["counts"]["total"] for x in listed)
    defects = sum(
        1
        for r in via_rows
        if r and "atoms" not in r[0].lower() and float(r[3]) > 0 and float(r[4]) > 0
    )
    assert total == defects
