"""`benchmarks.sim_lab_retrain`: the simulated lab's labels are the defects a labeller would
mark, a seeded share of them, in a file `labels import` reads."""

from __future__ import annotations

from benchmarks.sim_lab_retrain import write_lab_labels
from defectwatch.pipeline.label_formats import read_points_csv
from defectwatch.service.simulation import read_truth_csv, write_simulated_scans


def test_the_lab_labels_a_seeded_share_of_the_marked_defects(tmp_path):
    lab = tmp_path / "lab"
    write_simulated_scans(lab, n=2, size_nm=20.0, pixels=200, density_per_cm2=2e13, seed=3)
    marked = [
        (sxm.name, d)
        for sxm in sorted(lab.glob("*.sxm"))
        for d in read_truth_csv(sxm.with_suffix(".csv"))
        if d.visible and d.kind in ("trough", "peak")
    ]
    assert len(marked) >= 20

    every = write_lab_labels(lab, tmp_path / "all.csv", keep=1.0, seed=0)
    assert every["marked"] == every["trough"] + every["peak"] == len(marked)
    parsed = read_points_csv(tmp_path / "all.csv")
    assert len(parsed.points) == len(marked)
    first = parsed.points[0]
    name, d = marked[0]
    assert (first.scan, first.kind) == (name, d.kind)
    assert abs(first.row - d.row) < 0.01 and abs(first.col - d.col) < 0.01

    half = write_lab_labels(lab, tmp_path / "half.csv", keep=0.5, seed=0)
    again = write_lab_labels(lab, tmp_path / "again.csv", keep=0.5, seed=0)
    assert (
        half == again
        and (tmp_path / "half.csv").read_text() == (tmp_path / "again.csv").read_text()
    )
    kept = half["trough"] + half["peak"]
    assert half["marked"] == len(marked) and 0.25 * len(marked) < kept < 0.75 * len(marked)
