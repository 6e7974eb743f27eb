"""The oneDNN forward of `fused_unet` gives the member's own maps, or is not used."""

import numpy as np
import pytest
import torch

from defectwatch.pipeline.fused_unet import FusedUnet, fuse_member
from defectwatch.pipeline.inference import Ensemble
from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member
from defectwatch.pipeline.preprocess import PreprocessParams


def _member(spec: UnetSpec, seed: int):
    """A random member whose BatchNorms are not the identity (negative scales included)."""
    torch.manual_seed(seed)
    member = build_member(spec)
    for module in member.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.uniform_(-2.0, 2.0)
            module.bias.data.uniform_(-0.5, 0.5)
    return member.eval().to(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "spec",
    [
        UnetSpec(nb_filters=4, layers=(1, 2, 2, 3)),
        UnetSpec(nb_filters=6, layers=(2, 1, 1, 1), dropout=True, nb_classes=2),
        UnetSpec(nb_filters=4, batch_norm=False, upsampling_mode="nearest"),
    ],
)
def test_fused_forward_gives_the_members_own_probabilities(spec):
    member = _member(spec, seed=1)
    fused = fuse_member(member)
    assert isinstance(fused, FusedUnet)
    x = torch.rand(1, 1, 72, 104, generator=torch.Generator().manual_seed(2))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        own, ours = member(x), fused(x)
    assert ours.shape == own.shape == (1, spec.nb_classes, 72, 104)
    assert (ours.softmax(1) - own.softmax(1)).abs().max() < 1e-5


def test_an_architecture_it_cannot_take_runs_the_members_own_forward():
    dilated = _member(UnetSpec(nb_filters=4, with_dilation=True), seed=3)
    assert fuse_member(dilated) is None


def test_an_ensemble_with_fused_members_gives_the_same_maps_tiled_or_not():
    spec = UnetSpec(nb_filters=4)
    states = [_member(spec, seed=s).state_dict() for s in (5, 6)]
    config = ModelConfig(
        version="fused",
        pixel_size_nm=0.1,
        architecture=spec,
        preprocess=PreprocessParams().to_dict(),
    )
    image = np.random.default_rng(7).random((150, 203), dtype=np.float32)
    fused = Ensemble(config, states, device="cpu", tile_px=64, margin_px=32, side_by_side=2)
    plain = Ensemble(config, states, device="cpu", cpu_fused=False)
    assert fused.runtime == "torch float32 (fused)" and plain.runtime == "torch float32"
    (mean_f, spread_f), (mean_p, spread_p) = fused.predict_image(image), plain.predict_image(image)
    assert np.abs(mean_f - mean_p).max() < 1e-5 and np.abs(spread_f - spread_p).max() < 1e-5


def test_bf16_fused_forward_stays_as_close_to_exact_as_autocast():
    """Fast mode on the CPU (bf16) runs the fused forward cast to bf16: its probabilities are
    as close to float32 as the member's own forward under autocast."""
    member = _member(UnetSpec(nb_filters=4), seed=8)
    fused = fuse_member(member).to(torch.bfloat16)
    x = torch.rand(1, 1, 64, 96, generator=torch.Generator().manual_seed(9))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        exact = member(x).softmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = member(x).float().softmax(1)
        ours = fused(x)
    assert ours.dtype == torch.bfloat16
    ours = ours.float().softmax(1)
    err_auto, err_ours = (float((p - exact).abs().mean()) for p in (auto, ours))
    assert err_ours < 1.5 * err_auto + 1e-3
    assert float((ours - exact).abs().max()) < 0.1


def test_a_member_in_training_mode_is_not_fused():
    member = _member(UnetSpec(nb_filters=4), seed=10).train()
    assert fuse_member(member) is None
