"""Training and inference with tiny members: masks, reproducibility, tiling, mapping, import."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectwatch.errors import ModelLoadError
from defectwatch.pipeline.inference import Ensemble, Prediction
from defectwatch.pipeline.labels import IGNORE, circle_mask
from defectwatch.pipeline.model import (
    ModelConfig,
    UnetSpec,
    build_member,
    import_atomai_ensemble,
    load_version,
    save_version,
)
from defectwatch.pipeline.preprocess import PreprocessParams, Resampling, prepare
from defectwatch.pipeline.simulate import simulate
from defectwatch.pipeline.training import TrainingRecipe, train_ensemble, train_member
from defectwatch.pipeline.training_data import example_from_simulation, exported_render

TINY = UnetSpec(nb_filters=4)
RECIPE = TrainingRecipe(members=2, iterations=6, batch_size=2, crop_px=64, bn_batches=2)


@pytest.fixture(scope="module")
def examples():
    sims = [simulate(s, size_nm=12.0, pixels=96, density_per_cm2=3e12) for s in (1, 2)]
    return [example_from_simulation(s, target_nm=0.1) for s in sims]


@pytest.fixture(scope="module")
def tiny_version(examples, tmp_path_factory):
    states = train_ensemble(examples, spec=TINY, recipe=RECIPE)
    cfg = ModelConfig(
        version="tiny",
        pixel_size_nm=0.1,
        architecture=TINY,
        preprocess=PreprocessParams().to_dict(),
    )
    return save_version(tmp_path_factory.mktemp("models") / "tiny", cfg, states)


def test_circle_mask_draws_classes_and_never_hides_a_defect_under_an_ignored_one():
    mask = circle_mask(
        (40, 40),
        [10, 30, 12],
        [10, 30, 12],
        ["trough", "peak", "peak"],
        radius_px=3,
        ignore=[False, False, True],
    )
    assert mask[10, 10] == 1 and mask[30, 30] == 2
    assert mask[12, 16] == IGNORE  # the ignored disc is 1.5x larger
    assert mask[0, 0] == 0 and mask[20, 20] == 0
    with pytest.raises(ValueError, match="unknown defect kind"):
        circle_mask((8, 8), [1], [1], ["crater"], radius_px=1)


def test_simulated_example_marks_visible_defects_where_the_truth_is(examples):
    ex = examples[0]
    assert ex.image01.shape == ex.mask.shape == (120, 120)  # 12 nm at 0.1 nm/px
    assert 0.0 <= ex.image01.min() and ex.image01.max() <= 1.0
    sim = simulate(1, size_nm=25.0, pixels=200, density_per_cm2=6e12)  # ~37 defects
    ex = example_from_simulation(sim, target_nm=0.1)
    assert ex.mask.shape == (250, 250)
    right = wrong = 0
    for d in sim.truth:
        r, c = int(round((d.row + 0.5) * 1.25 - 0.5)), int(round((d.col + 0.5) * 1.25 - 0.5))
        if not (0 <= r < 250 and 0 <= c < 250):
            continue
        if not d.visible:  # never taught as background (a neighbour's class may cover it)
            assert ex.mask[r, c] in (IGNORE, 1, 2)
            continue
        expected = {"trough": 1, "peak": 2}[d.kind]
        right += int(ex.mask[r, c] == expected)
        wrong += int(ex.mask[r, c] != expected)
    # each visible defect's centre carries its own class; an overlapping neighbour of the other
    # kind may win the odd one
    assert right >= 5 and wrong <= max(1, right // 10), (right, wrong)


def test_an_exported_render_keeps_its_defects_where_the_truth_is():
    """8-bit JPEG renders (the way real frames often arrive) are a training view of a scan:
    same labels, grey levels only, and each visible trough still darker than its ring."""
    sim = simulate(4, size_nm=25.0, pixels=256, density_per_cm2=2e12)
    z = sim.images[("Z", "forward")]
    grey = exported_render(z, np.random.default_rng(0))
    assert grey.shape == z.shape and np.nanmin(grey) >= 0 and np.nanmax(grey) <= 255
    assert np.array_equal(grey, np.round(grey))  # 8-bit levels
    plain = example_from_simulation(sim, target_nm=0.1)
    rendered = example_from_simulation(sim, target_nm=0.1, render_rng=np.random.default_rng(0))
    assert np.array_equal(plain.mask, rendered.mask)
    yy, xx = np.mgrid[0:256, 0:256]
    px = 25.0 / 256
    darker = []
    for d in sim.truth:
        if d.visible and d.kind == "trough":
            dist = np.hypot(yy - d.row, xx - d.col) * px
            darker.append(grey[dist < 0.4].mean() < grey[(dist > 2.0) & (dist < 3.0)].mean())
    assert len(darker) >= 5 and np.mean(darker) > 0.8


def test_training_is_reproducible_and_members_differ(examples):
    a = train_member(examples, spec=TINY, recipe=RECIPE, member=0, device="cpu")
    b = train_member(examples, spec=TINY, recipe=RECIPE, member=0, device="cpu")
    c = train_member(examples, spec=TINY, recipe=RECIPE, member=1, device="cpu")
    key = "c1.block.0.weight"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])
    # BatchNorm statistics were recomputed for the averaged weights (not the init values)
    bn = [k for k in a if k.endswith("running_var")][0]
    assert not torch.allclose(a[bn], torch.ones_like(a[bn]))


def test_bf16_training_keeps_float32_weights_and_learns_close_to_float32(examples):
    """bf16 autocast changes the forward passes only: the same seed gives the same batches,
    float32 weights come out, reproducibly, and the losses track the float32 run's."""
    from dataclasses import replace

    losses = {True: [], False: []}

    def train(bf16: bool):
        return train_member(
            examples,
            spec=TINY,
            recipe=replace(RECIPE, bf16=bf16),
            member=0,
            device="cpu",
            on_progress=lambda m, i, n, loss: losses[bf16].append(loss),
        )

    a, b = train(True), train(True)
    ref = train(False)
    key = "c1.block.0.weight"
    assert a[key].dtype == torch.float32 and torch.equal(a[key], b[key])
    assert not torch.equal(a[key], ref[key])  # autocast did run
    assert len(losses[False]) == 6 and np.allclose(losses[True][:6], losses[False], rtol=0.03)


def test_progress_is_reported_per_iteration(examples):
    seen = []
    train_member(examples, spec=TINY, recipe=RECIPE, on_progress=lambda *a: seen.append(a))
    assert [s[1] for s in seen] == list(range(1, RECIPE.iterations + 1))
    assert all(np.isfinite(s[3]) for s in seen)


def test_ensemble_output_is_a_probability_with_spread_on_any_size(tiny_version):
    ens = Ensemble.load(tiny_version, device="cpu")
    rng = np.random.default_rng(0)
    for shape in ((37, 53), (64, 64), (130, 9)):
        mean, spread = ens.predict_image(rng.random(shape, dtype=np.float32))
        assert mean.shape == spread.shape == (3, *shape)
        np.testing.assert_allclose(mean.sum(axis=0), 1.0, atol=1e-5)
        assert (spread >= 0).all() and spread.max() > 0  # two members disagree somewhere


def test_tiled_inference_matches_one_pass_everywhere(tiny_version):
    image = np.random.default_rng(1).random((300, 421), dtype=np.float32)
    one = Ensemble.load(tiny_version, device="cpu").predict_image(image)
    tiled = Ensemble.load(tiny_version, device="cpu", tile_px=128, margin_px=64)
    two = tiled.predict_image(image)
    assert np.abs(one[0] - two[0]).max() < 1e-4
    assert np.abs(one[1] - two[1]).max() < 1e-4


def test_fast_mode_uses_bf16_only_where_the_cpu_has_it(tiny_version):
    from defectwatch.pipeline.inference import cpu_has_native_bf16

    auto = Ensemble.load(tiny_version, device="cpu", fast=True)
    assert (auto.fast_dtype == torch.bfloat16) == cpu_has_native_bf16()
    bf16 = Ensemble.load(tiny_version, device="cpu", fast=True, cpu_bf16=True)
    assert bf16.fast_dtype == torch.bfloat16 and bf16._sessions is None
    assert Ensemble.load(tiny_version, device="cpu").fast_dtype is None  # exact stays float32
    # without bf16, fast mode is the fused float32 forward; ONNX Runtime where that is off
    plain = Ensemble.load(tiny_version, device="cpu", fast=True, cpu_bf16=False)
    assert plain.fast_dtype is None and plain.runtime == "torch float32 (fused)"
    onnx = Ensemble.load(tiny_version, device="cpu", fast=True, cpu_bf16=False, cpu_fused=False)
    assert onnx.fast_dtype is None and onnx._sessions is not None


def test_bf16_fast_mode_finds_what_exact_mode_finds(tiny_version):
    """bf16 members (CPUs with AMX / AVX512-BF16) move probabilities by a few 0.01 at most;
    the defects found at the version's threshold are the same ones."""
    sim = simulate(5, size_nm=12.0, pixels=96, density_per_cm2=3e12)
    image, _, _ = prepare(sim.images[("Z", "forward")], pixel_size_nm=(0.125, 0.125), target_nm=0.1)
    exact_ens = Ensemble.load(tiny_version, device="cpu")
    fast_ens = Ensemble.load(tiny_version, device="cpu", fast=True, side_by_side=2, cpu_bf16=True)
    (mean_e, spread_e), (mean_f, spread_f) = (e.predict_image(image) for e in (exact_ens, fast_ens))
    assert 0 < np.abs(mean_e - mean_f).max() < 0.05  # bf16 did run, and stayed close
    assert np.abs(spread_e - spread_f).max() < 0.05
    full = Resampling(image.shape, image.shape)
    # a tiny model's probabilities are low: compare at a threshold it reaches
    thr = float(np.quantile(mean_e[1:], 0.995))
    found = [
        Prediction(
            image, np.ones(image.shape, bool), m, s, full, (0.1, 0.1), exact_ens.classes
        ).defects(threshold=thr)
        for m, s in ((mean_e, spread_e), (mean_f, spread_f))
    ]
    assert found[0], "nothing to compare"
    pos = [sorted((d.kind, round(d.row), round(d.col)) for d in f) for f in found]
    near = sum(
        any(k == k2 and abs(r - r2) <= 1 and abs(c - c2) <= 1 for k2, r2, c2 in pos[1])
        for k, r, c in pos[0]
    )
    assert near >= 0.9 * max(len(pos[0]), len(pos[1]))


def test_onnx_fast_mode_agrees_with_exact_mode(tiny_version, tmp_path):
    """Where the CPU has no native bf16 and the fused forward does not apply, fast mode runs
    ONNX Runtime exports of the members: the same maps, any size; the exports are cached by
    the members' sha256 and reused."""
    image = np.random.default_rng(2).random((96, 104), dtype=np.float32)
    exact = Ensemble.load(tiny_version, device="cpu").predict_image(image)
    fast = Ensemble.load(
        tiny_version,
        device="cpu",
        fast=True,
        side_by_side=2,
        onnx_cache_dir=tmp_path,
        cpu_bf16=False,
        cpu_fused=False,
    ).predict_image(image)
    assert np.abs(exact[0] - fast[0]).max() < 1e-4 and np.abs(exact[1] - fast[1]).max() < 1e-4
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len(cached) == 2 and all(name.endswith(".onnx") for name in cached)
    stamps = [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())]
    again = Ensemble.load(
        tiny_version,
        device="cpu",
        fast=True,
        onnx_cache_dir=tmp_path,
        cpu_bf16=False,
        cpu_fused=False,
    )
    assert np.abs(again.predict_image(image)[0] - fast[0]).max() < 1e-6
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())] == stamps


def test_exact_mode_in_onnx_runtime_keeps_float32_maps(tiny_version, tmp_path):
    """``cpu_onnx``: exact mode's members run in ONNX Runtime float32, the maps within 1e-5 of
    torch's (tiled frames too); fast mode with bf16 keeps torch."""
    image = np.random.default_rng(4).random((150, 203), dtype=np.float32)
    torch_ens = Ensemble.load(tiny_version, device="cpu", tile_px=64, margin_px=32)
    onnx_ens = Ensemble.load(
        tiny_version,
        device="cpu",
        tile_px=64,
        margin_px=32,
        side_by_side=2,
        onnx_cache_dir=tmp_path,
        cpu_onnx=True,
    )
    assert torch_ens.runtime == "torch float32 (fused)" and torch_ens._sessions is None
    assert onnx_ens.runtime == "onnxruntime float32" and onnx_ens.fast_dtype is None
    (mean_t, spread_t), (mean_o, spread_o) = (e.predict_image(image) for e in (torch_ens, onnx_ens))
    assert np.abs(mean_t - mean_o).max() < 1e-5 and np.abs(spread_t - spread_o).max() < 1e-5
    bf16 = Ensemble.load(tiny_version, device="cpu", fast=True, cpu_bf16=True, cpu_onnx=True)
    assert bf16.runtime == "torch bfloat16 (fused)" and bf16._sessions is None


def test_members_side_by_side_give_the_same_maps(tiny_version):
    image = np.random.default_rng(3).random((80, 72), dtype=np.float32)
    one = Ensemble.load(tiny_version, device="cpu").predict_image(image)
    two = Ensemble.load(tiny_version, device="cpu", side_by_side=2).predict_image(image)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_defects_are_reported_in_the_scans_pixels():
    """A blob at model pixel (50, 60) of a frame resampled 2x -> scan pixel (100.5, 120.5)."""
    mean = np.zeros((3, 100, 120), np.float32)
    mean[0] = 1.0
    mean[1, 48:53, 58:63] = 0.9
    mean[0, 48:53, 58:63] = 0.1
    pred = Prediction(
        image01=np.zeros((100, 120), np.float32),
        valid=np.ones((100, 120), bool),
        mean=mean,
        spread=np.full_like(mean, 0.05),
        mapping=Resampling((200, 240), (100, 120)),
        scan_pixel_nm=(0.05, 0.05),
        classes=("background", "trough", "peak"),
    )
    (d,) = pred.defects(threshold=0.5)
    assert d.kind == "trough" and d.row == pytest.approx(100.5) and d.col == pytest.approx(120.5)
    assert d.x_nm == pytest.approx(121 * 0.05) and d.area_nm2 == pytest.approx(25 * 0.01)
    assert d.confidence == pytest.approx(0.9) and d.uncertainty == pytest.approx(0.05)


def test_defects_a_labeller_would_not_mark_are_dropped_and_contrast_is_reported():
    """Two confident peak blobs; in the flattened scan only one stands out of the noise."""
    rng = np.random.default_rng(0)
    n = 160  # 0.1 nm/px, the model's own pixels
    mean = np.zeros((3, n, n), np.float32)
    mean[0] = 1.0
    for r, c in ((40, 40), (110, 110)):
        mean[2, r - 3 : r + 4, c - 3 : c + 4], mean[0, r - 3 : r + 4, c - 3 : c + 4] = 0.9, 0.1
    flat = rng.normal(0, 1e-11, (n, n)).astype(np.float32)  # 10 pm of noise
    yy, xx = np.mgrid[:n, :n]
    flat += 8e-11 * np.exp(-((yy - 40) ** 2 + (xx - 40) ** 2) / (2 * 5.0**2))  # a real bump
    common = dict(
        image01=np.zeros((n, n), np.float32),
        valid=np.ones((n, n), bool),
        mean=mean,
        spread=np.full_like(mean, 0.05),
        mapping=Resampling((n, n), (n, n)),
        scan_pixel_nm=(0.1, 0.1),
        classes=("background", "trough", "peak"),
    )
    judged = Prediction(**common, flat=flat)
    (kept,) = judged.defects(threshold=0.5)
    assert (round(kept.row), round(kept.col)) == (40, 40) and kept.contrast > 3.0
    both = judged.defects(threshold=0.5, marked_only=False)
    assert len(both) == 2 and abs(both[1].contrast) < 1.0  # noise alone: under a sigma
    unjudged = Prediction(**common).defects(threshold=0.5)  # e.g. a C-AFM current map
    assert len(unjudged) == 2 and all(np.isnan(d.contrast) for d in unjudged)
    # a version's own rule: a stricter peak limit than the bump's contrast drops it too
    strict = Prediction(
        **common, flat=flat, report_contrast={"trough": -1.5, "peak": kept.contrast + 0.1}
    )
    assert strict.defects(threshold=0.5) == []


def test_atomai_ensemble_file_imports_and_predicts_the_same(tmp_path):
    torch.manual_seed(0)
    members = {i: build_member(TINY).state_dict() for i in range(2)}
    meta = {
        "model_type": "seg",
        "model": "Unet",
        "nb_classes": 3,
        "batch_norm": True,
        "dropout": False,
        "upsampling": "bilinear",
        "with_dilation": False,
        "weights": members,
    }
    torch.save(meta, tmp_path / "wse2_ensemble_metadict.tar")
    out = import_atomai_ensemble(
        tmp_path / "wse2_ensemble_metadict.tar",
        tmp_path / "v",
        version="imported",
        pixel_size_nm=0.049,
    )
    cfg, states = load_version(out)
    assert cfg.architecture.nb_filters == 4 and cfg.pixel_size_nm == 0.049 and len(states) == 2
    for i, state in enumerate(states):
        for k, v in members[i].items():
            assert torch.equal(state[k], v.float() if v.is_floating_point() else v)


def test_atomai_file_with_pickled_objects_is_refused(tmp_path):
    net = build_member(TINY)
    meta = {
        "model": "Unet",
        "weights": {0: net.state_dict()},
        "optimizer": torch.optim.Adam(net.parameters()),
    }
    torch.save(meta, tmp_path / "x_ensemble_metadict.tar")
    with pytest.raises(ModelLoadError, match="weights-only"):
        import_atomai_ensemble(
            tmp_path / "x_ensemble_metadict.tar", tmp_path / "v", version="x", pixel_size_nm=0.1
        )
    with pytest.raises(ModelLoadError, match="no such file"):
        import_atomai_ensemble(
            tmp_path / "missing.tar", tmp_path / "w", version="x", pixel_size_nm=0.1
        )
