"""Sample rules (pure) and settings from DEFECTWATCH_* variables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from defectwatch.errors import ConfigError
from defectwatch.pipeline.sxm import write_sxm
from defectwatch.service.config import Settings, get_settings
from defectwatch.service.samples import header_comment, make_sample_for, sample_for

ROOT = "/data/stm"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/data/stm/WSe2-SL445/STM_001.sxm", "WSe2-SL445"),
        ("/data/stm/WSe2-SL445/day 2/STM_001.sxm", "WSe2-SL445"),  # first folder under the root
        ("/data/stm/STM_WTip_WSe2-SL445_022.sxm", "WSe2-SL445"),  # in the root: from the name
        ("/data/stm/scan_001.sxm", "unsorted"),
        ("/elsewhere/MoSe2-M12/x.sxm", "MoSe2-M12"),  # outside the root: its own folder
    ],
)
def test_folder_rule(path, expected):
    assert sample_for(path, watch_root=ROOT, rule="folder") == expected


def test_regex_rule_on_the_file_name():
    rule = r"regex:(?P<sample>WSe2-SL\d+)"
    assert (
        sample_for("/data/stm/x/STM_WTip_WSe2-SL445_022.sxm", watch_root=ROOT, rule=rule)
        == "WSe2-SL445"
    )
    assert sample_for("/data/stm/x/MoSe2_001.sxm", watch_root=ROOT, rule=rule) == "unsorted"


@pytest.mark.parametrize(
    "comment, expected",
    [
        ("bias 1 V; sample=WSe2-SL445; tip W", "WSe2-SL445"),
        ("Sample = MoSe2-M12\nafter anneal", "MoSe2-M12"),
        ('sample="WSe2 batch 3"', "WSe2 batch 3"),
        ("no sample entry here", "folder-name"),  # falls back to the folder rule
        (None, "folder-name"),
    ],
)
def test_comment_rule(comment, expected):
    assert (
        sample_for("/data/stm/folder-name/x.sxm", watch_root=ROOT, rule="comment", comment=comment)
        == expected
    )


@pytest.mark.parametrize(
    "rule, message",
    [
        ("regex:(?P<x>a)", "needs a (?P<sample>...) group"),
        ("regex:([", "bad regular expression"),
        ("by-date", "use folder, comment or regex"),
    ],
)
def test_bad_rules_say_what_to_write(rule, message):
    with pytest.raises(
        ConfigError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("?", r"\?")
        .replace(".", r"\."),
    ):
        sample_for("/x/y.sxm", watch_root=None, rule=rule)


def test_bound_rule_picks_the_deepest_root_and_reads_the_comment(tmp_path):
    outer, inner = tmp_path / "stm", tmp_path / "stm" / "afm share"
    resolve = make_sample_for(roots=[outer, inner], rule="folder")
    assert resolve(str(inner / "S9" / "a.sxm")) == "S9"
    assert resolve(str(outer / "S1" / "a.sxm")) == "S1"

    import numpy as np

    scan = tmp_path / "stm" / "S1" / "c.sxm"
    scan.parent.mkdir(parents=True)
    z = np.zeros((16, 16), np.float32)
    write_sxm(
        scan,
        images={("Z", "forward"): z},
        units={"Z": "m"},
        width_m=1e-8,
        height_m=1e-8,
        comment=["tip W", "sample=WSe2-SL445"],
    )
    assert "sample=WSe2-SL445" in header_comment(scan)
    assert make_sample_for(roots=[outer], rule="comment")(str(scan)) == "WSe2-SL445"
    assert header_comment(tmp_path / "absent.sxm") == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG folders are Linux's")
def test_settings_defaults_and_environment(monkeypatch, tmp_path):
    for var in ("DEFECTWATCH_DB", "DEFECTWATCH_MODELS_DIR", "DEFECTWATCH_SAMPLE_RULE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg data"))
    s = Settings()  # the defaults: in the user's data folder, written out here by hand
    assert s.db == f"sqlite:///{tmp_path}/xdg data/defectwatch/defectwatch.db"
    assert s.models_dir == tmp_path / "xdg data" / "defectwatch" / "models"
    assert s.sample_rule == "folder"
    monkeypatch.setenv("DEFECTWATCH_DB", str(tmp_path / "x.db"))
    monkeypatch.setenv("DEFECTWATCH_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DEFECTWATCH_SAMPLE_RULE", r"regex:(?P<sample>S\d+)")
    get_settings.cache_clear()
    try:
        s = get_settings()
        assert (s.db, s.models_dir) == (str(tmp_path / "x.db"), Path(tmp_path / "models"))
        assert get_settings() is s  # cached
        monkeypatch.setenv("DEFECTWATCH_SAMPLE_RULE", "nonsense")
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match="DEFECTWATCH_SAMPLE_RULE: sample rule 'nonsense'"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_cpu_bf16_setting_reaches_the_fast_ensemble(monkeypatch):
    """``DEFECTWATCH_CPU_BF16`` decides CPU fast mode's precision; unset, the hardware does."""
    import torch

    from defectwatch.service.detection import load_ensemble

    monkeypatch.delenv("DEFECTWATCH_CPU_BF16", raising=False)
    assert Settings().cpu_bf16 is None
    try:
        for value, dtype in (("1", torch.bfloat16), ("0", None)):
            monkeypatch.setenv("DEFECTWATCH_CPU_BF16", value)
            get_settings.cache_clear()
            assert load_ensemble(device="cpu", fast=True).fast_dtype == dtype
        monkeypatch.setenv("DEFECTWATCH_CPU_BF16", "maybe")
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match="DEFECTWATCH_CPU_BF16"):
            load_ensemble(device="cpu", fast=True)
    finally:
        get_settings.cache_clear()


def test_cpu_onnx_setting_decides_what_runs_exact_mode(monkeypatch):
    """``DEFECTWATCH_CPU_ONNX`` (default off): on, the service's exact-mode members run in
    ONNX Runtime float32; off, in torch."""
    from defectwatch.service.detection import load_ensemble

    monkeypatch.delenv("DEFECTWATCH_CPU_ONNX", raising=False)
    assert Settings().cpu_onnx is False
    try:
        for value, runtime in (("1", "onnxruntime float32"), ("0", "torch float32 (fused)")):
            monkeypatch.setenv("DEFECTWATCH_CPU_ONNX", value)
            get_settings.cache_clear()
            assert load_ensemble(device="cpu").runtime == runtime
    finally:
        get_settings.cache_clear()
