"""Defect contrast in ring-noise units: the statistic behind the simulator's `visible`."""

from __future__ import annotations

import numpy as np
import pytest

from defectwatch.pipeline.contrast import PEAK_MARKED, TROUGH_MARKED, defect_contrast, marked
from defectwatch.pipeline.preprocess import flatten
from defectwatch.pipeline.simulate import simulate
from defectwatch.pipeline.training_data import exported_render
from tests.conftest import SHARED

REAL = SHARED / "real-wse2"


def test_a_dip_of_known_depth_in_white_noise_measures_depth_over_sigma():
    rng = np.random.default_rng(0)
    px = 0.05
    yy, xx = np.mgrid[0:200, 0:200]
    dip = -3.0 * np.exp(-((yy - 100) ** 2 + (xx - 100) ** 2) * px**2 / (2 * 0.6**2))
    image = dip + rng.normal(0, 1.0, (200, 200))
    c = defect_contrast(image, pixel_size_nm=px, rows=[100.0, 40.0], cols=[100.0, 40.0])
    # a 0.6 nm-sigma dip smoothed by 0.33 nm peaks at 2.30, and its mean over the 0.5 nm core
    # is 0.88 of that: -2.0 noise sigmas
    assert c[0] == pytest.approx(-2.0, abs=0.25)
    assert abs(c[1]) < 0.5  # nothing there
    assert marked("trough", c[0]) and not marked("trough", c[1]) and marked("peak", np.nan)


def test_visible_simulated_defects_stand_out_as_much_as_the_labelled_real_ones():
    """Measured as the real ones were, on an exported render (flattened, contrast-stretched
    with clipped tails, 8-bit JPEG): real labelled troughs median -3.3 sigma, peaks +2.2
    overall and +4.2 when isolated (a neighbour in the ring pulls a clustered one to +1.5;
    simulated peaks are mostly isolated). The render clips bright peaks: on the raw
    topography the same simulated peaks measure about three times higher."""
    values = {"trough": [], "peak": []}
    for seed in range(16):
        sim = simulate(seed, size_nm=50, pixels=384, density_per_cm2=1.2e12)
        render = exported_render(sim.images[("Z", "forward")], np.random.default_rng(seed))
        flat = flatten(render.astype(np.float64))
        vis = [d for d in sim.truth if d.visible]
        c = defect_contrast(
            flat, pixel_size_nm=50 / 384, rows=[d.row for d in vis], cols=[d.col for d in vis]
        )
        for d, v in zip(vis, c):
            values[d.kind].append(v)
    troughs, peaks = np.array(values["trough"]), np.array(values["peak"])
    assert len(troughs) > 60 and len(peaks) > 20
    assert -4.5 < np.nanmedian(troughs) < -2.2
    assert 1.6 < np.nanmedian(peaks) < 4.5
    assert np.nanmean(troughs <= TROUGH_MARKED + 0.5) > 0.85
    assert np.nanmean(peaks >= PEAK_MARKED - 0.5) > 0.85


def test_the_real_labels_measure_as_the_reference_says():
    if not REAL.is_dir():
        pytest.skip("../shared/fixtures/real-wse2 is not present")
    from defectwatch.service.evaluation import cases_from_images

    values = {"trough": [], "peak": []}
    isolated_peaks, clustered_peaks = [], []
    for case in cases_from_images(sorted(REAL.glob("*.jpg")), REAL / "labels_via.csv"):
        px = case.scan.pixel_size_x_nm
        flat = flatten(case.scan.data.astype(np.float64))
        c = defect_contrast(
            flat,
            pixel_size_nm=px,
            rows=[lab.y_nm / px - 0.5 for lab in case.labels],
            cols=[lab.x_nm / px - 0.5 for lab in case.labels],
        )
        xy = np.array([(lab.x_nm, lab.y_nm) for lab in case.labels])
        for i, (lab, v) in enumerate(zip(case.labels, c)):
            values[lab.kind].append(v)
            if lab.kind == "peak":  # another labelled defect within 5 nm: a cluster
                near = np.delete(np.hypot(*(xy - xy[i]).T), i)
                (clustered_peaks if (near < 5.0).any() else isolated_peaks).append(v)
    assert -3.8 < np.nanmedian(values["trough"]) < -2.7
    assert 1.6 < np.nanmedian(values["peak"]) < 2.8
    assert 3.5 < np.nanmedian(isolated_peaks) < 5.0 and np.nanmedian(clustered_peaks) < 2.5
    assert np.nanmean(np.array(values["trough"]) <= TROUGH_MARKED) > 0.9


def test_evaluation_excuses_simulated_defects_fainter_than_the_version_reports():
    """Simulated truth carries each defect's contrast; a version that reports peaks only from
    +2.0 is neither asked for the fainter ones nor faulted for finding them. A person's labels
    (no contrast measured) always count."""
    from defectwatch.pipeline.metrics import TruthPoint
    from defectwatch.service.evaluation import Case, reported_truth, simulated_cases

    (case,) = simulated_cases([5], size_nm=30.0, pixels=256, density_per_cm2=5e12)
    peaks = [lab for lab in case.labels if lab.kind == "peak" and lab.visible]
    assert peaks and all(lab.contrast >= PEAK_MARKED for lab in peaks)
    rule = {"trough": TROUGH_MARKED, "peak": 2.0}
    judged = reported_truth(case, rule)
    for before, after in zip(case.labels, judged.labels):
        expected = before.visible and marked(before.kind, before.contrast, rule)
        assert after.visible == expected and (after.x_nm, after.kind) == (before.x_nm, before.kind)
    assert sum(lab.visible for lab in judged.labels) < sum(lab.visible for lab in case.labels)
    person = Case("real", case.scan, [TruthPoint(1.0, 2.0, "peak")])
    assert reported_truth(person, rule).labels[0].visible
    assert marked("peak", 1.5) and not marked("peak", 1.5, rule) and marked("peak", 2.0, rule)
