"""The simulator's statistics and physics, and its truth after a write/read round trip."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from defectwatch.pipeline.preprocess import flatten
from defectwatch.pipeline.scan import read_scan
from defectwatch.pipeline.simulate import (
    CLASSES,
    MATERIALS,
    draw_recipe,
    simulate,
    simulate_scan,
)
from defectwatch.pipeline.sxm import write_sxm


def test_same_seed_same_scan():
    a, b = simulate(3, pixels=96, size_nm=10), simulate(3, pixels=96, size_nm=10)
    for key in a.images:
        np.testing.assert_array_equal(a.images[key], b.images[key])
    assert a.truth == b.truth


def _without_clusters(seed: int, **kwargs):
    rng = np.random.default_rng(seed)
    r = draw_recipe(rng, seed=seed, **kwargs)
    r.peak_clusters = []  # cluster members come on top of the Poisson density
    return simulate_scan(rng, r)


def test_density_within_poisson_bounds():
    density, size, scans = 1e12, 40.0, 16
    total = sum(len(_without_clusters(s, pixels=64, size_nm=size, density_per_cm2=density).truth)
                for s in range(scans))
    expected = density * size * size * 1e-14 * scans  # 16 cm^-2 ... = 256 defects
    lo, hi = stats.poisson.ppf([0.0005, 0.9995], expected)
    assert lo <= total <= hi, (total, expected)


def test_class_mix_follows_the_annotation_statistics():
    counts: Counter[str] = Counter()
    for seed in range(12):
        sim = simulate(seed, pixels=64, size_nm=40, density_per_cm2=1e13)
        counts.update(d.subtype for d in sim.truth)
    total = sum(counts.values())
    assert total > 1500
    for cls in CLASSES:
        assert abs(counts[cls.name] / total - cls.share) < 0.06, (cls.name, counts)
    assert counts["small bright trough"] == max(counts.values())


def test_lattice_is_the_se_lattice_at_fine_sampling():
    rng = np.random.default_rng(5)
    r = draw_recipe(rng, size_nm=12.5, pixels=256, density_per_cm2=1e8, artifacts=False)
    r = replace(r, tip_sigma_nm=0.06, corrugation_nm=0.02,  # a sharp tip, 0.049 nm/px
                peak_clusters=[], superstructure=None)  # the bare lattice
    sim = simulate_scan(rng, r)
    z = flatten(sim.images[("Z", "forward")].astype(np.float64))
    power = np.abs(np.fft.fftshift(np.fft.fft2(z - z.mean()))) ** 2
    f = np.fft.fftshift(np.fft.fftfreq(256, d=12.5 / 256))
    fy, fx = np.meshgrid(f, f, indexing="ij")
    radius = np.hypot(fx, fy)
    peak = radius[np.unravel_index(np.argmax(power * (radius > 1.0)), power.shape)]
    row_spacing = MATERIALS["wse2"].lattice_nm * np.sqrt(3) / 2  # 0.284 nm
    assert peak == pytest.approx(1 / row_spacing, rel=0.05)
    corrugation_pm = (np.percentile(z, 99) - np.percentile(z, 1)) * 1e12
    assert 5 < corrugation_pm < 40


def test_flattened_frames_have_realistic_height_spread():
    spreads = []
    for seed in range(12):
        sim = simulate(seed, pixels=128, size_nm=25)
        if sim.recipe.mode == "stm":
            spreads.append(np.nanstd(flatten(sim.images[("Z", "forward")].astype(float))) * 1e12)
    # real flattened WSe2 frames: 7-31 pm; tip changes and steps push a few higher
    assert 4 < np.median(spreads) < 35


@pytest.mark.parametrize("mode,artifacts,share", [("stm", False, 0.95), ("stm", True, 0.8),
                                                  ("cafm", True, 0.8)])
def test_truth_lands_on_its_defects_after_write_and_read(tmp_path, mode, artifacts, share):
    """Core darker (trough) or brighter (peak) than a 2-3 nm ring around each visible truth."""
    hits = {"trough": [0, 0], "peak": [0, 0]}
    dirs = set()
    for seed in range(16):
        sim = simulate(seed, mode=mode, pixels=192, size_nm=25, density_per_cm2=1e12,
                       artifacts=artifacts)
        r = sim.recipe
        dirs.add(r.scan_dir)
        path = tmp_path / f"s{seed}.sxm"
        write_sxm(path, images=sim.images, units={"Z": "m", "Current": "A"},
                  width_m=r.width_nm * 1e-9, height_m=r.height_nm * 1e-9, scan_dir=r.scan_dir)
        scan = read_scan(path, channel=sim.analysis_channel)
        flat = flatten(scan.data.astype(np.float64))
        px = scan.pixel_size_x_nm
        yy, xx = np.mgrid[0:scan.ny, 0:scan.nx]
        for d in sim.truth:
            if not d.visible:
                continue
            dist = np.hypot(yy - d.row, xx - d.col) * px
            core = np.nanmean(flat[dist < 0.4])
            ring = np.nanmean(flat[(dist > 2.0) & (dist < 3.0)])
            hits[d.kind][0] += (core < ring) if d.kind == "trough" else (core > ring)
            hits[d.kind][1] += 1
    assert dirs == {"up", "down"}
    for kind, (ok, n) in hits.items():
        assert n >= 10 and ok / n > share, (kind, ok, n)


def test_aborted_scans_have_nan_lines_and_no_truth_there():
    rng = np.random.default_rng(11)
    r = replace(draw_recipe(rng, pixels=64, size_nm=20, density_per_cm2=5e12),
                abort_fraction=0.5, scan_dir="down")
    sim = simulate_scan(rng, r)
    z = sim.images[("Z", "forward")]
    assert np.isnan(z[33:]).all() and np.isfinite(z[:31]).all()
    assert not any(d.visible for d in sim.truth if d.row > 33)


def test_materials_and_modes_differ_as_physics_says():
    def recipes(material):
        return [draw_recipe(np.random.default_rng(s), material=material, pixels=64)
                for s in range(200)]
    w, m = recipes("wse2"), recipes("mose2")
    assert np.median([abs(r.bias_v) for r in w]) == pytest.approx(1.4, abs=0.1)
    assert np.median([abs(r.bias_v) for r in m]) == pytest.approx(1.9, abs=0.1)
    # most scans at the paper's negative bias, some at positive
    assert 0.05 < np.mean([r.bias_v > 0 for r in w]) < 0.25
    # MoSe2 corrugation is 0.5-0.8 of WSe2's at the same tip
    ratio = np.median([r.corrugation_nm for r in m]) / np.median([r.corrugation_nm for r in w])
    assert 0.4 < ratio < 0.9
    c = simulate(1, mode="cafm", pixels=64, size_nm=10)
    assert c.analysis_channel == "Current" and c.recipe.gain_sigma >= 0.1
    assert np.nanmin(c.images[("Current", "forward")]) > 0  # a current, not a height


def _two_defects(rng, separation_nm, *, second_amp_pm, second_kind="trough"):
    """A clean 20 nm frame holding one small trough at the centre and one neighbour."""
    from defectwatch.pipeline import simulate as sim_mod

    r = replace(draw_recipe(rng, pixels=256, size_nm=20, density_per_cm2=1e8, artifacts=False),
                size_scale=1.5)
    cls = sim_mod.CLASS_BY_NAME["small bright trough"]
    other = sim_mod.CLASS_BY_NAME["large bright peak" if second_kind == "peak"
                                  else "small bright trough"]
    a = sim_mod._Defect(10.0, 10.0, cls, "trough", -0.026, 0.9, 0.1, 0.0, 0.0, 0.0)
    b = sim_mod._Defect(10.0 + separation_nm, 10.0, other, second_kind, second_amp_pm * 1e-3,
                        0.9 if second_kind == "trough" else 2.0, 0.1, 0.0, 0.0, 0.0)
    inside = np.ones(2, dtype=bool)
    return sim_mod._hidden_by_neighbours(r, [a, b], inside)


def test_defects_merged_with_a_stronger_neighbour_are_not_asked_for():
    rng = np.random.default_rng(3)
    # 0.6 nm apart: one blob; the weaker of the pair is hidden, the stronger keeps its label
    assert _two_defects(rng, 0.6, second_amp_pm=-40).tolist() == [True, False]
    # 3 nm apart: two blobs, both asked for
    assert _two_defects(rng, 3.0, second_amp_pm=-40).tolist() == [False, False]
    # a small trough on the flank of a large bright peak is swamped; far from it, it is not
    assert _two_defects(rng, 2.0, second_amp_pm=300, second_kind="peak")[0]
    assert not _two_defects(rng, 12.0, second_amp_pm=300, second_kind="peak")[0]


def test_visible_truth_never_asks_for_two_defects_in_one_blob():
    """At a dense 1e13 cm^-2 some defects overlap; of an overlapping pair at most one is asked
    for, so a detector that finds each blob once can reach full recall."""
    pairs = close_visible = 0
    for seed in range(4):
        sim = simulate(seed, size_nm=30, pixels=256, density_per_cm2=1e13, artifacts=False)
        pts = np.array([[d.x_nm, d.y_nm] for d in sim.truth])
        vis = np.array([d.visible for d in sim.truth])
        kinds = np.array([d.kind for d in sim.truth])
        dist = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
        close = (dist < 0.5) & (kinds[:, None] == kinds[None, :])
        np.fill_diagonal(close, False)
        pairs += int(close.sum())
        close_visible += int((close & vis[:, None] & vis[None, :]).sum())
    assert pairs > 0 and close_visible == 0


def test_most_tips_resolve_the_lattice():
    """The real 0.049-0.059 nm/px frames show the lattice crisply: so must most simulated tips."""
    k = 4 * np.pi / (np.sqrt(3) * MATERIALS["wse2"].lattice_nm)  # first reciprocal shell
    tips = [draw_recipe(np.random.default_rng(s), pixels=64).tip_sigma_nm for s in range(200)]
    transfer = np.exp(-0.5 * (k * np.array(tips)) ** 2)
    assert np.median(transfer) > 0.3
    assert np.mean(transfer < 0.05) > 0.05  # and some blunt tips do not


def _scan_with_cluster(seed: int, n: int):
    """A clean 30 nm STM scan holding one cluster of ``n`` bright peaks and few other defects."""
    rng = np.random.default_rng(seed)
    r = draw_recipe(rng, pixels=512, size_nm=30, density_per_cm2=1e10, artifacts=False)
    r.peak_clusters = [{"x_nm": 15.0, "y_nm": 15.0, "n": n, "amp_scale": 0.6}]
    return simulate_scan(rng, r)


def test_peak_clusters_pack_bright_blobs_that_are_each_asked_for():
    """Most real labelled peaks sit in clusters, 2-3.5 nm apart, each blob labelled."""
    from scipy.spatial import cKDTree

    sim = _scan_with_cluster(5, 8)
    members = [d for d in sim.truth if d.subtype == "large bright peak"
               and np.hypot(d.x_nm - 15.0, d.y_nm - 15.0) < 10.0]
    assert len(members) >= 6
    xy = np.array([[d.x_nm, d.y_nm] for d in members])
    nn = cKDTree(xy).query(xy, k=2)[0][:, 1]
    assert 1.6 <= nn.min() and np.median(nn) <= 3.6
    assert sum(d.visible for d in members) >= 0.8 * len(members)
    # each blob is bright: its centre stands above the frame's median
    z = flatten(sim.images[("Z", "forward")].astype(np.float64))
    centres = [z[int(round(d.row)), int(round(d.col))] for d in members]
    assert np.median(centres) > np.median(z) + 3 * np.std(z[:50, :50])


def test_cluster_share_of_scans_follows_the_real_frames():
    shares = [bool(draw_recipe(np.random.default_rng(s), pixels=64).peak_clusters)
              for s in range(300)]
    assert 0.2 < np.mean(shares) < 0.4
    cafm = [bool(draw_recipe(np.random.default_rng(s), mode="cafm", pixels=64).peak_clusters)
            for s in range(50)]
    assert not any(cafm)


def test_a_ringed_peak_sits_in_a_dark_ring():
    """The real labelled peaks' median profile dips below the background at 1.6-2.4 nm."""
    from defectwatch.pipeline import simulate as sim_mod

    rng = np.random.default_rng(0)
    r = draw_recipe(rng, pixels=64, size_nm=10, artifacts=False)
    d = sim_mod._Defect(0.0, 0.0, sim_mod.CLASS_BY_NAME["large bright peak"], "peak", 0.1,
                        1.0, 0.0, 0.0, 0.0, 0.0)
    sim_mod.PEAK_RING_SHARE, saved = 1.0, sim_mod.PEAK_RING_SHARE
    try:
        sim_mod._maybe_ring(rng, r, d)
    finally:
        sim_mod.PEAK_RING_SHARE = saved
    rho = np.linspace(0.0, 6.0, 61)
    h, _ = sim_mod._defect_field(rho, np.zeros_like(rho), d, 0.0, r.tip_sigma_nm)
    assert h[0] > 0.09 and 1.0 < rho[np.argmin(h)] < 3.0
    assert -0.04 < h.min() < -0.005 and abs(h[-1]) < 1e-3


def test_a_superstructure_band_adds_unlabelled_bumps_only_in_its_lines():
    rng = np.random.default_rng(2)
    r = draw_recipe(rng, pixels=256, size_nm=20, density_per_cm2=1e8, artifacts=False)
    r.superstructure = {"period_nm": 2.0, "angle_rad": 0.3, "amp_nm": 0.03,
                        "row_from": 0.5, "row_to": 1.0}
    with_band = simulate_scan(np.random.default_rng(9), r)
    without = simulate_scan(np.random.default_rng(9), replace(r, superstructure=None))
    diff = (with_band.images[("Z", "forward")] - without.images[("Z", "forward")]) * 1e9
    assert np.abs(diff[:100]).max() < 1e-3  # lines above the band: untouched
    assert diff[150:].max() - diff[150:].min() > 0.02  # inside it: bumps of the set amplitude
    assert [d.visible for d in with_band.truth] == [d.visible for d in without.truth]
    # bumps 2 nm apart: the strongest spatial frequency is the superstructure's
    spectrum = np.abs(np.fft.rfft(diff[200] - diff[200].mean()))
    period_nm = 20.0 / np.argmax(spectrum)
    assert 1.5 < period_nm < 2.6
