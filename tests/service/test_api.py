"""The Python API for notebooks (``import defectwatch as dw``): real simulated .sxm files, the
shipped model, a real SQLite file; the same answers as the command line."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from typer.testing import CliRunner

import defectwatch as dw
from defectwatch.errors import NotFoundError, ScanReadError
from defectwatch.service.api import DEFECT_COLUMNS, _defects_frame
from defectwatch.service.cli import app
from defectwatch.service.simulation import read_truth_csv

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("api") / "WSe2-A"
    return dw.simulate_scans(folder, n=2, size_nm=25, pixels=256, density_per_cm2=3e12, seed=11)


@pytest.fixture(scope="module")
def detections(scans):
    return [dw.detect(p) for p in scans]


def test_import_defectwatch_stays_light():
    light = (
        "import sys, defectwatch; heavy = [m for m in ('torch', 'pandas', 'sqlalchemy', "
        "'cv2', 'matplotlib', 'defectwatch.service') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", light], check=True, timeout=60)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dw.nope  # noqa: B018
    assert {"read_scan", "detect", "open_record"} <= set(dir(dw))


def test_read_scan_channel_and_direction(scans):
    forward = dw.read_scan(scans[0])
    backward = dw.read_scan(scans[0], direction="backward")
    assert forward.data.shape == (256, 256) and forward.width_nm == pytest.approx(25.0)
    assert not np.array_equal(forward.data, backward.data)
    with pytest.raises(ScanReadError, match="direction"):
        dw.read_scan(scans[0], direction="sideways")


def test_detect_finds_the_planted_defects_and_the_frame_holds_them(scans, detections):
    det = detections[0]
    frame = det.defects_frame()
    assert tuple(frame.columns) == DEFECT_COLUMNS
    assert len(frame) == len(det.defects) > 0
    first = det.defects[0]
    assert frame.iloc[0]["kind"] == first.kind
    assert frame.iloc[0]["x_nm"] == pytest.approx(first.x_nm)
    assert set(frame["kind"]) <= {"trough", "peak"}
    # the shipped model finds most of what a labeller would mark (the simulator's truth)
    truth = [t for t in read_truth_csv(scans[0].with_suffix(".csv")) if t.visible]
    found = sum(
        any(math.hypot(t.x_nm - d.x_nm, t.y_nm - d.y_nm) < 1.0 for d in det.defects) for t in truth
    )
    assert truth and found >= 0.6 * len(truth), (found, len(truth))
    # densities: defects over the acquired area (1 cm^2 = 1e14 nm^2)
    area_nm2 = det.scan.acquired_area_nm2
    for kind in ("trough", "peak"):
        n = int((frame["kind"] == kind).sum())
        assert det.densities[kind].count == n
        assert det.densities[kind].per_cm2 == pytest.approx(n / area_nm2 * 1e14)
    assert det.densities["total"].count == len(frame)


def test_detect_accepts_a_scan_and_a_model_folder(scans, detections):
    from defectwatch.models import default_model_dir

    again = dw.detect(dw.read_scan(scans[0]), model=default_model_dir())
    assert again.model_version == detections[0].model_version
    assert again.defects == detections[0].defects
    with pytest.raises(Exception, match="no such model version directory"):
        dw.detect(scans[0], model=scans[0].parent / "no-model-here")


def test_an_empty_defects_frame_keeps_its_columns_and_dtypes():
    frame = _defects_frame([])
    assert tuple(frame.columns) == DEFECT_COLUMNS and len(frame) == 0
    assert frame["x_nm"].dtype == np.float64 and frame["contrast"].dtype == np.float64
    one = _defects_frame(
        [dict(zip(DEFECT_COLUMNS, (1, 2, 0.1, 0.2, "peak", 0.9, 0.01, 1.0, None)))]
    )
    assert math.isnan(one.loc[0, "contrast"])


def test_plot_circles_every_defect_on_the_frame_in_nm(detections):
    det = detections[0]
    ax = det.plot()
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(points) == len(det.defects)
    xy = sorted((round(d.x_nm, 6), round(d.y_nm, 6)) for d in det.defects)
    assert sorted((round(x, 6), round(y, 6)) for x, y in points) == xy
    assert ax.images[0].get_extent() == [0.0, det.scan.width_nm, det.scan.height_nm, 0.0]
    n_t = det.densities["trough"].count
    assert f"{n_t} trough" in ax.get_title()
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_record_add_and_ask_gives_what_the_cli_gives(tmp_path, scans, detections):
    db = tmp_path / "lab.db"
    with pytest.raises(NotFoundError):
        dw.open_record(db, create=False)
    with dw.open_record(db) as record:
        runs = [record.add(d) for d in detections]
        assert runs == [1, 2]
        samples = record.samples()
        density = record.density()
        listed = record.scans()
        defects = record.defects(scans[1].name)
        assert record.detect(scans[0]).model_version == detections[0].model_version
    assert list(samples["sample"]) == ["WSe2-A"] and samples.loc[0, "done"] == 2
    assert len(listed) == 2 and set(listed["file"]) == {p.name for p in scans}
    total = density.set_index("kind").loc["total"]
    n = sum(len(d.defects) for d in detections)
    area = sum(d.scan.acquired_area_nm2 for d in detections)
    assert total["defects"] == n and total["scans"] == 2
    assert total["area_nm2"] == pytest.approx(area)
    assert total["raw_density_per_cm2"] == pytest.approx(n / area * 1e14)
    # the shipped default carries a calibration: the reported density is corrected by it
    assert total["calibration"] != "uncalibrated"
    assert total["ci95_low_per_cm2"] < total["density_per_cm2"] < total["ci95_high_per_cm2"]
    assert tuple(defects.columns) == DEFECT_COLUMNS and len(defects) == len(detections[1].defects)
    assert sorted(defects["x_nm"].round(3)) == sorted(
        round(d.x_nm, 3) for d in detections[1].defects
    )
    # one implementation per question: `defectwatch density --csv` says the same
    result = CliRunner().invoke(app, ["density", "--csv", "--db", str(db)])
    assert result.exit_code == 0, result.output
    cli = {r["kind"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    for _, row in density.iterrows():
        assert int(cli[row["kind"]]["defects"]) == row["defects"]
        assert float(cli[row["kind"]]["density_per_cm2"]) == pytest.approx(
            row["density_per_cm2"], rel=1e-5
        )


def test_record_add_with_a_sample_name_and_an_unknown_sample(tmp_path, detections):
    with dw.open_record(tmp_path / "named.db") as record:
        record.add(detections[0], sample="flake 3")
        record.add(detections[0], sample="flake 3")  # the same file again: a new run
        assert list(record.samples()["sample"]) == ["flake 3"]
        assert len(record.scans()) == 1
        with pytest.raises(NotFoundError, match="no sample called 'flake 9'"):
            record.density(["flake 9"])
