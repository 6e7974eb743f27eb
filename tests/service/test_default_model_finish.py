"""`make default-model` writes the shipped threshold, report rule and calibration itself:
`default_model.finish_version` on a small version and a few simulated scans."""

from __future__ import annotations

import json

from defectwatch.pipeline.model import load_version
from defectwatch.service.default_model import finish_version
from defectwatch.service.operating_points import LIMITS, THRESHOLDS
from tests.service.test_active_model_use import tiny_version

SMALL = {"material": "wse2", "size_nm": 12.0, "pixels": 96, "density_per_cm2": 3e12}


def test_finishing_a_version_writes_its_rule_thresholds_and_calibration(tmp_path):
    folder = tiny_version(tmp_path, "finish-me")
    metrics = finish_version(
        folder,
        validation=((SMALL, range(200, 202)), ({**SMALL, "broad": True}, range(236, 237))),
        validation_by_channel={"Current": (({**SMALL, "mode": "cafm"}, range(200, 201)),)},
        calibration_sets=((SMALL, range(300, 302)),),
    )
    config, _ = load_version(folder)  # the members' hashes still hold
    assert config.metrics == json.loads(json.dumps(metrics))
    assert config.threshold_for("Z") in THRESHOLDS
    assert "Current" in config.metrics["threshold_by_channel"]
    assert "seeds 236-236" in config.metrics["threshold_chosen_on"]
    rule = config.report_contrast
    assert rule["trough"] in LIMITS["trough"] and rule["peak"] in LIMITS["peak"]
    shipped = config.metrics["operating_points"]["shipped"]
    assert {k: shipped[k]["limit"] for k in rule} == rule
    cal = config.calibration
    assert cal["source"] == "simulated" and cal["kinds"]["trough"]["scans"] == 2
    assert "finish-me" in cal["description"]


def test_training_scans_simulated_in_parallel_are_the_scans_of_one_process():
    from defectwatch.service.default_model import DEFAULT_MIX, build_examples

    seeds = range(1_000_000, 1_000_003)
    one = build_examples(seeds, mix=DEFAULT_MIX)
    several = build_examples(seeds, mix=DEFAULT_MIX, jobs=2, chunk=1)
    assert [e.source for e in several] == [e.source for e in one] == [f"sim-{s}" for s in seeds]
    for a, b in zip(one, several, strict=True):
        assert (a.image01 == b.image01).all() and (a.mask == b.mask).all()
