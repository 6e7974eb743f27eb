"""The broadened simulator families: switched off, every seed gives the scan it gave before;
switched on, each family changes the scan, reproducibly, and the truth still lands on it."""

from __future__ import annotations

import numpy as np
import pytest

from defectwatch.pipeline.simulate import BROAD_FAMILIES, simulate

KW = {"size_nm": 20.0, "pixels": 160, "density_per_cm2": 3e12}


def _same(a, b) -> bool:
    return all(np.array_equal(a.images[k], b.images[k], equal_nan=True) for k in a.images)


def test_off_by_default_so_held_out_seeds_stay_the_same():
    plain = simulate(11, **KW)
    assert plain.recipe.broad == {}
    assert _same(plain, simulate(11, broad=False, **KW))
    assert _same(plain, simulate(11, broad=(), **KW))


@pytest.mark.parametrize("family", BROAD_FAMILIES)
def test_each_family_changes_the_scan_reproducibly(family):
    plain = simulate(12, **KW)
    wide = simulate(12, broad=(family,), **KW)
    assert wide.recipe.broad["families"] == [family]
    assert not _same(plain, wide)
    assert _same(wide, simulate(12, broad=(family,), **KW))
    # the defects are drawn from the scan's own stream: same number, same kinds
    assert [d.kind for d in wide.truth] == [d.kind for d in plain.truth] or family == "drift"


def test_all_families_together_and_unknown_ones_refused():
    wide = simulate(13, broad=True, **KW)
    assert wide.recipe.broad["families"] == list(BROAD_FAMILIES)
    assert np.isfinite(wide.images[("Z", "forward")]).all()
    with pytest.raises(ValueError, match="unknown broad families"):
        simulate(13, broad=("sparkles",), **KW)


def test_sombrero_rings_have_a_rim_of_the_other_sign():
    """A trough drawn as a ring: the rim around its core is brighter than the far field."""
    from defectwatch.pipeline.simulate import CLASS_BY_NAME, _Defect, _defect_field

    d = _Defect(
        0.0,
        0.0,
        CLASS_BY_NAME["small bright trough"],
        "trough",
        -0.05,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        ring_amp_nm=0.02,
    )
    r = np.linspace(0.0, 4.0, 81)
    h, _ = _defect_field(r, np.zeros_like(r), d, 0.0, 0.05)
    assert h[0] < 0 and h.max() > 0.01 and 1.0 < r[np.argmax(h)] < 2.0


def test_the_training_mix_widens_a_share_of_scans_by_random_subsets_and_leaves_one_out():
    from defectwatch.pipeline.training_data import SimulationMix

    def draws(mix, n=200):
        return [mix.draw(np.random.default_rng([s, 7919]), target_nm=0.1) for s in range(n)]

    # without broadened scans a mix draws exactly what it drew before (older versions'
    # training scans are reproduced)
    assert all("broad" not in d for d in draws(SimulationMix(cluster_share=0.3)))
    wide = draws(SimulationMix(broad_share=0.7))
    picked = [d["broad"] for d in wide if "broad" in d]
    assert 0.55 < len(picked) / len(wide) < 0.85
    assert len({tuple(p) for p in picked}) > 50  # scans see different subsets
    assert set().union(*picked) == set(BROAD_FAMILIES)
    out = draws(SimulationMix(broad_share=0.7, broad_exclude=("lattice",)))
    assert not any("lattice" in d.get("broad", ()) for d in out)
    assert any("tips" in d.get("broad", ()) for d in out)
