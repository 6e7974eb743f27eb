"""Model version directories: save, load, and refuse what does not check out."""

from __future__ import annotations

import json

import pytest
import torch

from defectwatch.errors import ModelLoadError
from defectwatch.pipeline.model import (
    ModelConfig,
    UnetSpec,
    build_member,
    load_version,
    save_version,
)

TINY = UnetSpec(nb_filters=4)


def _members(n=2):
    torch.manual_seed(0)
    return [build_member(TINY).state_dict() for _ in range(n)]


def test_round_trip_in_fp16(tmp_path):
    members = _members()
    cfg = ModelConfig(version="v1", pixel_size_nm=0.098, architecture=TINY)
    save_version(tmp_path / "v1", cfg, members)
    loaded_cfg, states = load_version(tmp_path / "v1")
    assert loaded_cfg.architecture == TINY and loaded_cfg.classes[1:] == ("trough", "peak")
    assert len(states) == 2 and set(loaded_cfg.members) == {
        "member_00.safetensors",
        "member_01.safetensors",
    }
    for a, b in zip(members, states):
        for k, v in a.items():
            if v.is_floating_point():
                torch.testing.assert_close(b[k], v.float(), atol=2e-3, rtol=2e-3)
            else:
                assert torch.equal(b[k], v)
    net = build_member(TINY)
    net.load_state_dict(states[0])
    assert net.eval()(torch.zeros(1, 1, 32, 40)).shape == (1, 3, 32, 40)


def test_corrupted_missing_or_mismatched_weights_are_refused(tmp_path):
    save_version(
        tmp_path / "v", ModelConfig(version="v", pixel_size_nm=0.1, architecture=TINY), _members(1)
    )
    weights = tmp_path / "v" / "member_00.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_version(tmp_path / "v")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_version(tmp_path / "v")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_version(tmp_path / "nothing")

    save_version(
        tmp_path / "w", ModelConfig(version="w", pixel_size_nm=0.1, architecture=TINY), _members(1)
    )
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["architecture"]["nb_filters"] = 8
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_version(tmp_path / "w")


def test_light_unet_is_atomais_unet():
    """The U-Net loaded without all of atomai has atomai's keys, shapes and outputs."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from defectwatch.pipeline.model import build_member, UnetSpec;"
        "torch.manual_seed(0); m = build_member(UnetSpec(nb_filters=4));"
        "assert 'atomai' not in sys.modules, 'atomai was imported';"
        "import atomai.nets; torch.manual_seed(0);"
        "a = atomai.nets.Unet(nb_classes=3, nb_filters=4, layers=[1, 2, 2, 3]);"
        "sa, sm = a.state_dict(), m.state_dict();"
        "assert list(sa) == list(sm) and all(torch.equal(sa[k], sm[k]) for k in sa);"
        "x = torch.rand(1, 1, 32, 32); a.eval(); m.eval();"
        "assert torch.equal(a(x), m(x)); print('same')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "same" in result.stdout, result.stderr[-2000:]


def test_the_report_rule_is_part_of_the_version(tmp_path):
    """New versions carry the contrast rule they report by; a config written before versions
    carried it loads with the rule those versions reported by (what a labeller marks)."""
    from defectwatch.pipeline.contrast import LEGACY_REPORT_CONTRAST, REPORT_CONTRAST

    save_version(
        tmp_path / "new",
        ModelConfig(version="new", pixel_size_nm=0.1, architecture=TINY),
        _members(1),
    )
    new, _ = load_version(tmp_path / "new")
    assert new.report_contrast == REPORT_CONTRAST and REPORT_CONTRAST["peak"] == 1.0
    stored = json.loads((tmp_path / "new" / "config.json").read_text())
    del stored["detection"]
    (tmp_path / "new" / "config.json").write_text(json.dumps(stored))
    old, _ = load_version(tmp_path / "new")
    assert old.report_contrast == LEGACY_REPORT_CONTRAST == {"trough": -1.5, "peak": 1.0}
