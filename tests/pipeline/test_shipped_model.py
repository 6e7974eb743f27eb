"""The shipped default ensemble: present, intact, and finds defects on small simulated scans."""

from __future__ import annotations

import pytest

from defectwatch.models import DEFAULT_VERSION, default_model_dir
from defectwatch.pipeline.calibration import (
    Calibration,
    CalibrationCounter,
    corrected_interval,
)
from defectwatch.pipeline.inference import Ensemble
from defectwatch.pipeline.metrics import ObjectEvaluation
from defectwatch.pipeline.model import load_version
from defectwatch.service.evaluation import headline, reported_truth, simulated_cases

# measured on these four scans (against the defects it reports): default-sim-7 trough F1 0.94
# (35 troughs), peak F1 0.94 (8 peaks); default-sim-9 0.90 and 0.95. The bars leave room for
# platform noise but fail on a broken model, preprocessing or detection
MIN_F1 = {"trough": 0.8, "peak": 0.5}


@pytest.fixture(scope="module")
def ensemble():
    return Ensemble.load(default_model_dir(), device="cpu")


def test_the_default_ships_inside_the_package_with_ten_members():
    config, states = load_version(default_model_dir())  # checks every sha256
    assert config.version == DEFAULT_VERSION and len(states) == 10
    assert config.classes == ("background", "trough", "peak")
    assert config.training["members"] == 10 and config.data["scans"] >= 100
    size_mb = sum(p.stat().st_size for p in default_model_dir().glob("*.safetensors")) / 2**20
    assert size_mb < 15


def test_minimum_quality_on_small_simulated_wse2_scans(ensemble):
    ev = ObjectEvaluation()
    for case in simulated_cases(range(900, 904), size_nm=25.0, pixels=256, density_per_cm2=3e12):
        case = reported_truth(case, ensemble.config.report_contrast)  # as `evaluate` scores
        defects = ensemble.predict_scan(case.scan).defects(
            threshold=ensemble.config.threshold_for(case.scan.channel)
        )
        ev.add(defects, case.labels, area_nm2=case.scan.acquired_area_nm2)
    scores = headline(ev.summary())
    assert scores["trough"]["f1"] >= MIN_F1["trough"], scores
    assert scores["peak"]["f1"] >= MIN_F1["peak"], scores


def test_large_frames_keep_their_quality(ensemble):
    """102 nm frames at 0.1 nm/px (1024 model px, beyond the 768 px the model trained on):
    CLAHE tiles stay <= 96 px as in training. With 8 tiles of 128 px these two scans scored
    trough F1 0.19 and 0.76; default-sim-7 0.98 pooled, peaks 1.00; default-sim-9 0.98, 0.95."""
    ev = ObjectEvaluation()
    for case in simulated_cases((910, 912), size_nm=102.4, pixels=1024, density_per_cm2=2e12):
        case = reported_truth(case, ensemble.config.report_contrast)
        defects = ensemble.predict_scan(case.scan).defects(
            threshold=ensemble.config.threshold_for(case.scan.channel)
        )
        ev.add(defects, case.labels, area_nm2=case.scan.acquired_area_nm2)
    scores = headline(ev.summary())
    assert scores["trough"]["f1"] >= 0.85, scores
    assert scores["peak"]["f1"] >= 0.65, scores


def test_the_shipped_thresholds_were_chosen_on_validation_scans():
    config, _ = load_version(default_model_dir())
    m = config.metrics
    # re-chosen with the report limits on simulated validation seeds (issue 15), never on the
    # real frames or the test seeds
    assert m["threshold_chosen_on"].startswith("simulated seeds 200-253 (validation")
    table = m["validation_mean_f1"]
    assert len(table) >= 5 and table[f"{m['threshold']:.2f}"] == max(table.values())
    assert 0.2 <= m["threshold"] <= 0.8
    assert config.threshold_for("Z") == float(m["threshold"])
    assert config.threshold_for("Current") == m["threshold_by_channel"]["Current"]
    assert m["threshold_by_channel"]["Current"] != m["threshold"]  # its own, not a copy


def test_the_shipped_config_is_what_make_default_model_writes():
    """config.json against the training script's recipe (not against itself): a recipe, mix,
    mask radius or preprocessing changed without retraining the default fails here."""
    import json
    from dataclasses import asdict

    from defectwatch.pipeline.preprocess import PreprocessParams
    from defectwatch.service.default_model import (
        DEFAULT_MIX,
        DEFAULT_RECIPE,
        DEFAULT_SPEC,
        MASK_RADIUS_NM,
        MODEL_PIXEL_NM,
        TRAINING_SEEDS,
    )

    def plain(value):  # as JSON stores it (tuples -> lists)
        return json.loads(json.dumps(value))

    config, _ = load_version(default_model_dir())
    assert config.pixel_size_nm == MODEL_PIXEL_NM
    assert config.architecture == DEFAULT_SPEC
    assert plain(config.preprocess) == plain(PreprocessParams().to_dict())
    recipe = plain(DEFAULT_RECIPE.to_dict())
    # rehearsal and label-centred crops belong to the nightly fine-tune (issue 17), not to
    # the default's recipe; each member draws from its own 80% of the scans (issue 15)
    assert recipe["rehearsal_share"] == 0.0 and recipe["label_crop_share"] == 0.0
    assert recipe["member_scans_share"] == 0.8
    assert {k: config.training[k] for k in recipe} == recipe
    assert config.training["mask_radius_nm"] == MASK_RADIUS_NM
    assert config.data["seeds"] == [TRAINING_SEEDS[0], TRAINING_SEEDS[-1]]
    assert config.data["scans"] == len(TRAINING_SEEDS)
    mix = plain(asdict(DEFAULT_MIX))
    # 70% of the scans widened by the broadened families, none left out (issue 15)
    assert mix["broad_share"] == 0.7 and mix["broad_exclude"] == []
    assert config.data["mix"] == mix


def test_topography_defects_carry_their_contrast_and_current_maps_none(ensemble):
    """Contrast is judged in heights by the version's own rule (chosen on simulated validation
    scans by `default_model.finish_version`); C-AFM current maps are not judged."""
    (stm,) = simulated_cases([905], size_nm=25.0, pixels=256, density_per_cm2=3e12)
    found = ensemble.predict_scan(stm.scan).defects(threshold=0.55)
    measured = [d for d in found if d.contrast == d.contrast]
    assert len(measured) >= 0.8 * len(found) > 0  # NaN only where the ring leaves the frame
    rule = ensemble.config.report_contrast
    shipped = ensemble.config.metrics["operating_points"]["shipped"]
    assert rule == {k: shipped[k]["limit"] for k in ("trough", "peak")}
    assert rule["trough"] < 0 < rule["peak"]
    assert "not the real frames" in ensemble.config.detection["report_contrast_chosen_on"]
    assert all(d.contrast <= rule["trough"] for d in measured if d.kind == "trough")
    assert all(d.contrast >= rule["peak"] for d in measured if d.kind == "peak")
    (cafm,) = simulated_cases([906], mode="cafm", size_nm=50.0, pixels=256)
    prediction = ensemble.predict_scan(cafm.scan)
    assert cafm.scan.unit == "A" and prediction.flat is None
    found = prediction.defects(threshold=0.2)
    assert found and all(d.contrast != d.contrast for d in found)


def test_the_default_carries_a_calibration_that_corrects_held_out_counts(ensemble):
    """The shipped calibration was measured on simulated validation scans (not training, not
    test); end to end on four held-out scans, the corrected counts land near the true ones
    (every defect a labeller marks) and the 95% intervals hold them."""
    cal = Calibration.from_json(ensemble.config.calibration)
    assert cal is not None and cal.source == "simulated" and cal.scans >= 40
    assert "validation" in cal.description and "Monte Carlo" in cal.method
    for kind in ("trough", "peak"):
        c = cal.kinds[kind]
        assert 0.5 < c.recall <= 1.0 and 0.5 < c.precision <= 1.0, c
    counter = CalibrationCounter()
    inside = []
    corrected = dict.fromkeys(("trough", "peak"), 0.0)
    for case in simulated_cases(range(900, 904), size_nm=25.0, pixels=256, density_per_cm2=3e12):
        found = ensemble.predict_scan(case.scan).defects(
            threshold=ensemble.config.threshold_for(case.scan.channel)
        )
        counts = counter.add(found, case.labels)
        est = corrected_interval([({k: counts[k].detected for k in corrected}, cal.kinds)])
        for k in corrected:
            corrected[k] += est[k].count
            inside.append(est[k].low <= counts[k].true <= est[k].high)
    true = {k: sum(s.true for s in counter.per_scan[k]) for k in corrected}
    assert sum(inside) >= 6, inside  # of 8 intervals
    for k in corrected:
        assert 0.75 <= corrected[k] / true[k] <= 1.33, (k, corrected[k], true[k])
