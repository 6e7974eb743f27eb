"""The nightly retrain (issue 17) on tiny real models and a real SQLite record: a night with
no new label is skipped (and `--force` trains anyway), every run's outcome shows in `models
list` and `status`, the gate states its uncertainty on a small test split, and the fine-tuning
recipe runs end to end with rehearsal and the positive-unlabelled masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from defectwatch.db import open_database, write_transaction
from defectwatch.db.models import Label
from defectwatch.pipeline.compare import bootstrap_f1_difference
from defectwatch.pipeline.labels import IGNORE
from defectwatch.pipeline.scan import read_scan
from defectwatch.pipeline.training import MixedSampler
from defectwatch.pipeline.training_data import Example, spare_detections
from defectwatch.service import retrain_recipe as rr
from defectwatch.service.cli import app
from defectwatch.service.retrain_recipe import spare_unlabelled, validation_split
from defectwatch.service.retraining import LabelledScan, example_from_labels, gate
from tests.service.test_retrain import blind_model, record, record_scans, sim_scans  # noqa: F401

runner = CliRunner()
SCRATCH = [
    "--recipe",
    "scratch",
    "--filters",
    "4",
    "--members",
    "1",
    "--iterations",
    "3",
    "--crop",
    "64",
]


def retrain(db: str, models: Path, *args: str):
    return runner.invoke(app, ["retrain", "--db", db, "--models-dir", str(models), *args])


# -- skip, force, outcomes ----------------------------------------------------------------------


def test_a_night_without_new_labels_is_skipped_force_trains_and_outcomes_show(record, sim_scans):
    from defectwatch.service.retrain_runs import current_fingerprint, unchanged_since

    db, models = record
    engine = open_database(db)
    ids = record_scans(engine, sim_scans[:5])
    first = retrain(db, models, *SCRATCH, "--promote", "never", "--name", "c1", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["outcome"] == "candidate"

    # nothing changed: skipped, exit 0, no version made, said why
    again = retrain(db, models, *SCRATCH, "--json")
    assert again.exit_code == 0, again.output
    skipped = json.loads(again.stdout)
    assert skipped["outcome"] == "skipped" and skipped["version"] is None
    assert "no label changed since c1 was trained from blind-1" in skipped["reason"]
    assert "--force" in skipped["reason"]
    plain = retrain(db, models, *SCRATCH)
    assert plain.exit_code == 0 and "skipped" in plain.stdout

    # --force trains anyway (promoted: the blind parent finds nothing); the night after, the
    # new active version was trained on these very labels: skipped
    forced = retrain(db, models, *SCRATCH, "--force", "--name", "c2", "--json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["outcome"] == "promoted"
    after = json.loads(retrain(db, models, *SCRATCH, "--json").stdout)
    assert after["outcome"] == "skipped" and "active version c2 was trained" in after["reason"]

    # a new label is a change; importing the same labels again is not
    same = current_fingerprint(engine)
    assert unchanged_since(engine, active="c2", active_data={}, fingerprint=same)
    with write_transaction(engine) as s:
        s.add(
            Label(
                scan_id=ids[0],
                row=5.0,
                col=5.0,
                kind="peak",
                radius_nm=0.7,
                source="review:x",
                exhaustive=False,
            )
        )
    changed = current_fingerprint(engine)
    assert changed != same
    assert unchanged_since(engine, active="c2", active_data={}, fingerprint=changed) is None
    engine.dispose()

    listed = runner.invoke(app, ["models", "list", "--db", db, "--json"])
    by_name = {r["version"]: r for r in json.loads(listed.stdout)}
    assert by_name["c1"]["retrain"]["outcome"] == "candidate"
    assert "--promote never" in by_name["c1"]["retrain"]["reason"]
    assert by_name["c2"]["retrain"]["outcome"] == "promoted" and by_name["c2"]["active"]
    assert by_name["blind-1"]["retrain"] is None
    table = runner.invoke(app, ["models", "list", "--db", db])
    assert table.exit_code == 0 and "last retrain" in table.stdout
    assert "skipped" in table.stdout and "candidate" in table.stdout
    status = runner.invoke(app, ["status", "--db", db, "--json"])
    assert json.loads(status.stdout)["last_retrain"]["outcome"] == "skipped"
    assert "last retrain" in runner.invoke(app, ["status", "--db", db]).stdout


def test_a_failed_run_is_recorded_with_its_reason(record, sim_scans):
    db, models = record
    engine = open_database(db)
    record_scans(engine, sim_scans[:3])
    engine.dispose()
    result = retrain(db, models, *SCRATCH)
    assert result.exit_code == 1 and "at least 4" in result.stderr
    status = json.loads(runner.invoke(app, ["status", "--db", db, "--json"]).stdout)
    assert status["last_retrain"]["outcome"] == "failed"
    assert "at least 4" in status["last_retrain"]["reason"]


# -- the gate on a small test split -------------------------------------------------------------


def test_a_small_test_split_is_judged_with_a_stated_uncertainty():
    # 3 test scans; per scan TP, FP, FN of the active and the candidate for peaks
    active = np.array([[1, 0, 2], [0, 1, 1], [2, 0, 1]])
    cand = np.array([[2, 0, 1], [1, 0, 0], [2, 1, 1]])
    diff = bootstrap_f1_difference(active, cand, resamples=500)
    assert diff.low <= diff.delta <= diff.high and diff.scans == 3
    assert diff.delta == pytest.approx(2 * 5 / (10 + 1 + 2) - 2 * 3 / (6 + 1 + 4))
    d = gate(
        {"trough": 0.80, "peak": 0.60},
        {"trough": 0.80, "peak": 0.50},
        test_labels={"trough": 120, "peak": 8},
        uncertainty={"peak": diff, "mean": diff},
    )
    assert d.promote and d.small == ("peak",)
    rough = [r for r in d.reasons if r.startswith("rough for peak")]
    assert rough and "only 8 peak label(s) in the test split (fewer than 30)" in rough[0]
    assert "interval" in rough[0] and "bootstrap resamples of the 3 test scans" in rough[0]
    assert any("label more scans" in r for r in d.reasons)
    assert d.uncertainty["peak"]["delta"] == pytest.approx(diff.delta)
    # a small split does not excuse a drop beyond the tolerance
    worse = gate(
        {"trough": 0.80, "peak": 0.40},
        {"trough": 0.80, "peak": 0.50},
        test_labels={"trough": 120, "peak": 8},
    )
    assert not worse.promote and worse.small == ("peak",)
    # enough labels: no such caveat
    big = gate({"trough": 0.8}, {"trough": 0.7}, test_labels={"trough": 30})
    assert big.small == () and not any(r.startswith("rough") for r in big.reasons)


def test_a_candidate_that_only_reports_less_where_no_label_is_is_refused():
    """As labelled, a candidate that stops reporting real but unlabelled troughs looks more
    precise and passes; with the active version's unlabelled detections as don't care, the
    labelled troughs it lost show, and the gate refuses it (`--pu-gate`, the default)."""
    from defectwatch.service.retraining import _with_unlabelled_check

    labelled = gate(
        {"trough": 0.60, "peak": 0.50},
        {"trough": 0.57, "peak": 0.50},
        test_labels={"trough": 200, "peak": 10},
    )
    assert labelled.promote and labelled.small == ("peak",)
    worse = {"candidate": {"trough": 0.83, "peak": 0.95}, "active": {"trough": 0.96, "peak": 0.95}}
    refused = _with_unlabelled_check(labelled, worse, tolerance=0.02)
    assert not refused.promote and not refused.would_promote
    assert refused.reasons[0].startswith(
        "with the active version's unlabelled detections as don't care (labels may be "
        "incomplete): trough F1 drops from 0.960 to 0.830"
    )
    assert refused.reasons[1].startswith("rough for peak")  # the caveat stays; the pass goes
    assert not any(" vs " in r for r in refused.reasons)
    # as good there too: the verdict stands; --promote force still forces
    same = {"candidate": {"trough": 0.96, "peak": 0.95}, "active": {"trough": 0.96, "peak": 0.95}}
    assert _with_unlabelled_check(labelled, same, tolerance=0.02) == labelled
    forced = gate({"trough": 0.60}, {"trough": 0.57}, mode="force")
    assert _with_unlabelled_check(forced, worse, tolerance=0.02).promote
    # refused as labelled already: refused, with both grounds
    both = _with_unlabelled_check(gate({"trough": 0.50}, {"trough": 0.57}), worse, tolerance=0.02)
    assert not both.promote and both.reasons[0].startswith("trough F1 drops")
    assert both.reasons[-1].startswith("with the active version's unlabelled detections")


def test_the_bootstrap_separates_a_clear_difference_from_none():
    same = np.array([[5, 1, 1]] * 6)
    d = bootstrap_f1_difference(same, same)
    assert d.delta == 0 and d.low == 0 and d.high == 0 and d.p_worse == 0
    better = np.array([[9, 0, 0]] * 6)
    d = bootstrap_f1_difference(same, better)
    assert d.low > 0 and d.p_worse == 0


# -- the fine-tuning recipe ---------------------------------------------------------------------


def test_mixed_batches_hold_the_rehearsal_share():
    lab = [Example(np.zeros((40, 40), np.float32), np.full((40, 40), 1, np.uint8), "lab")]
    sim = [Example(np.ones((40, 40), np.float32), np.full((40, 40), 2, np.uint8), "sim")]
    sampler = MixedSampler(lab, sim, share=0.5, crop_px=16, rng=np.random.default_rng(0))
    xs, ys = sampler.batch(8)
    assert xs.shape == (8, 1, 16, 16) and (ys[:4] == 1).all() and (ys[4:] == 2).all()
    plain = MixedSampler(lab, [], share=0.5, crop_px=16, rng=np.random.default_rng(0))
    assert (plain.batch(4)[1] == 1).all()


def test_spared_detections_become_ignore_and_labels_stay():
    mask = np.zeros((40, 40), np.uint8)
    mask[8:12, 8:12] = 1  # a labelled trough
    mask[0, :] = IGNORE
    out = spare_detections(mask, [10.0, 30.0], [10.0, 30.0], radius_px=3.0)
    assert (out[8:12, 8:12] == 1).all()  # the label is still taught
    assert out[30, 30] == IGNORE and out[30, 33] == IGNORE and out[30, 35] == 0
    assert (out[0] == IGNORE).all() and (spare_detections(mask, [], [], radius_px=3) == mask).all()


def test_the_parents_unlabelled_detections_are_spared_on_exhaustive_scans(sim_scans, tmp_path):
    """A parent that calls everything a trough: its one big detection (at the frame's centre)
    has no label near it and is spared on an exhaustive scan, not on a partial one."""
    import torch

    from defectwatch.pipeline.inference import Ensemble
    from defectwatch.pipeline.model import ModelConfig, UnetSpec, build_member

    spec = UnetSpec(nb_filters=4)
    torch.manual_seed(0)
    state = build_member(spec).state_dict()
    state["px.weight"] = torch.zeros_like(state["px.weight"])
    state["px.bias"] = torch.tensor([-20.0, 20.0, -20.0])
    eager = Ensemble(
        ModelConfig(
            version="eager",
            pixel_size_nm=0.1,
            architecture=spec,
            detection={"report_contrast": {"trough": 0, "peak": 0}},
        ),
        [state],
    )
    scan = read_scan(sim_scans[0])
    item = LabelledScan(
        scan_id=1,
        name="a",
        split="train",
        scan=scan,
        rows=(5.0,),
        cols=(5.0,),
        kinds=("peak",),
        radius_nm=(None,),
        exhaustive=True,
    )
    ex = example_from_labels(item, target_nm=0.1)
    pred = eager.predict_scan(scan)
    spared, n = spare_unlabelled(
        ex, item, pred, radius_nm={"trough": 0.6, "peak": 0.7}, target_nm=0.1
    )
    assert n == 1
    h, w = ex.mask.shape
    assert ex.mask[h // 2, w // 2] == 0 and spared.mask[h // 2, w // 2] == IGNORE
    assert (spared.mask == 2).sum() == (ex.mask == 2).sum()  # the labelled peak is kept
    partial = LabelledScan(**{**item.__dict__, "exhaustive": False})
    assert (
        spare_unlabelled(ex, partial, pred, radius_nm={"trough": 0.6, "peak": 0.7}, target_nm=0.1)[
            1
        ]
        == 0
    )


def test_the_validation_split_is_deterministic_and_leaves_training_scans():
    class Item:
        def __init__(self, i: int) -> None:
            self.scan_id, self.name = i, f"s{i}.sxm"

    items = [Item(i) for i in range(11)]
    fit, val = validation_split(items)
    assert len(val) == 3 and len(fit) == 8 and {i.scan_id for i in fit + val} == set(range(11))
    assert [i.scan_id for i in validation_split(items[::-1])[1]] == sorted(i.scan_id for i in val)[
        ::-1
    ] or {i.scan_id for i in validation_split(items[::-1])[1]} == {i.scan_id for i in val}
    assert validation_split(items[:1]) == (items[:1], [])
    assert len(validation_split(items[:2])[1]) == 1


@pytest.fixture
def tiny_mix_parent(tmp_path, blind_model):  # noqa: F811
    """The blind model with a recorded simulator mix of tiny frames (fast rehearsal)."""
    import shutil

    out = tmp_path / "blind-mix"
    shutil.copytree(blind_model, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["data"] = {
        "source": "defectwatch simulator",
        "seeds": [500, 515],
        "mix": {
            "material_weights": [["wse2", 1.0]],
            "cafm_share": 0.0,
            "size_nm": [6.0, 8.0],
            "pixel_size_nm": [0.1, 0.12],
            "max_model_px": 80,
            "artifacts_share": 0.0,
            "density_per_cm2": [1e12, 3e12],
            "render_share": 0.0,
        },
    }
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_the_finetune_recipe_runs_end_to_end_with_rehearsal_and_spared_labels(
    tmp_path, sim_scans, tiny_mix_parent
):  # noqa: F811
    from defectwatch.db.registry import register_version

    db = tmp_path / "nightly.db"
    engine = open_database(db)
    with write_transaction(engine) as s:
        register_version(
            "blind-1", session=s, directory=str(tiny_mix_parent), members=2, activate=True
        )
    record_scans(engine, sim_scans[:6])
    engine.dispose()
    models = tmp_path / "models"
    result = retrain(str(db), models, "--iterations", "4", "--crop", "32", "--name", "n1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    t = report["training"]
    assert t["recipe"] == "finetune" and t["from"] == "active version blind-1"
    assert t["members"] == 2 and t["rehearsal_share"] == 0.5 and t["crop_px"] == 32
    assert "the parent's recorded simulator mix" in t["rehearsal"]
    assert t["unlabelled"].startswith("spared: 0 confident detections")  # blind: none
    search = t["search"]
    assert search["chosen"]["iterations"] in (2, 4)
    assert search["chosen"]["learning_rate"] in rr.RATES
    assert set(search["validation_mean_f1"]) == {
        "parent member 0",
        "rate 0.0001, 2 steps",
        "rate 0.0001, 4 steps",
        "rate 0.0003, 2 steps",
        "rate 0.0003, 4 steps",
    }
    data = report["data"]
    assert data["validation"]["scans"] == 1 and data["train"]["scans"] == 4
    assert set(data["validation"]["scan_names"]) <= set(data["train"]["scan_names"])
    assert not set(data["validation"]["scan_names"]) & set(data["test"]["scan_names"])
    # 1 validation scan: too few to move the operating point (`clear_or_parent`)
    assert t["rule_choice"] == "clear" and t["operating_point"].startswith("the parent's")
    cfg = json.loads((models / "n1" / "config.json").read_text())
    parent_cfg = json.loads((tiny_mix_parent / "config.json").read_text())
    assert cfg["metrics"]["threshold"] == parent_cfg["metrics"].get("threshold", 0.5)
    assert cfg["detection"]["report_contrast"] == parent_cfg["detection"]["report_contrast"]
    assert "validation scans" in cfg["metrics"]["threshold_chosen_on"]
    # the gate also scored both versions with the active version's unlabelled detections as
    # don't care (`--pu-gate`)
    pu = cfg["metrics"]["gate"]["unlabelled_dont_care"]
    assert set(pu["candidate"]) == set(pu["active"]) == {"trough", "peak"}
    assert pu["dont_care"] >= 0
    assert set(cfg["detection"]["report_contrast"]) == {"trough", "peak"}
    # its own calibration (issue 15), measured on the validation scan, not the test split
    cal = cfg["calibration"]
    assert cal["source"] == "lab" and cal["description"].startswith("1 exhaustively labelled")
    assert set(cal["kinds"]) == {"trough", "peak"}
    assert report["decision"]["small"]  # 2 test scans: too few labels per kind
    # without the positive-unlabelled masks and without rehearsal, as the options say
    off = retrain(
        str(db),
        models,
        "--iterations",
        "2",
        "--crop",
        "32",
        "--force",
        "--rehearsal",
        "0",
        "--no-spare-unlabelled",
        "--no-pu-gate",
        "--learning-rate",
        "1e-4",
        "--promote",
        "never",
        "--json",
    )
    assert off.exit_code == 0, off.output
    off_report = json.loads(off.stdout)
    t = off_report["training"]
    assert t["rehearsal"] == "none" and t["unlabelled"].startswith("taught as background")
    assert t["search"].startswith("not searched: --learning-rate given")
    off_cfg = json.loads((Path(off_report["directory"]) / "config.json").read_text())
    assert "unlabelled_dont_care" not in off_cfg["metrics"]["gate"]


def test_label_centred_crops_show_a_rare_kind_as_often_as_a_common_one():
    """40 peaks against 300 troughs: with crops anywhere a peak is rarely in view; with every
    crop centred on a label whose kind is drawn uniformly, about half the crops hold a peak."""
    rng = np.random.default_rng(1)
    mask = np.zeros((400, 400), np.uint8)
    for r, c in rng.integers(10, 390, size=(60, 2)):
        mask[r - 2 : r + 3, c - 2 : c + 3] = 1  # common troughs
    mask[200:205, 300:305] = 2  # one rare peak
    lab = [Example(rng.random((400, 400), dtype=np.float32), mask, "lab")]

    def share_with_peak(label_share: float) -> float:
        s = MixedSampler(
            lab,
            [],
            share=0.0,
            crop_px=32,
            rng=np.random.default_rng(0),
            label_share=label_share,
        )
        ys = np.concatenate([s.batch(50)[1] for _ in range(8)])
        return float(np.mean([(y == 2).any() for y in ys]))

    assert share_with_peak(0.0) < 0.05
    assert 0.4 < share_with_peak(1.0) < 0.6
    with pytest.raises(ValueError, match="label crop share"):
        MixedSampler(lab, [], share=0.0, crop_px=32, rng=rng, label_share=1.5)


def _peak_scan(
    weak_true: int = 0, strong_noise: int = 0, strong_true: int = 0, weak_noise: int = 0
):
    """A validation scan of peaks: labelled ones found weakly (+1.2 sigma) or strongly (+3),
    and unlabelled spots found weakly or strongly."""
    from types import SimpleNamespace

    def spot(x, contrast):
        return SimpleNamespace(x_nm=x, y_nm=5.0, kind="peak", confidence=0.9, contrast=contrast)

    xs = iter(2.0 * i for i in range(1000))
    true = [(next(xs), 1.2) for _ in range(weak_true)] + [
        (next(xs), 3.0) for _ in range(strong_true)
    ]
    noise = [(next(xs), 3.0) for _ in range(strong_noise)] + [
        (next(xs), 1.2) for _ in range(weak_noise)
    ]
    labels = [SimpleNamespace(x_nm=x, y_nm=5.0, kind="peak", visible=True) for x, _ in true]
    dets = [spot(x, c) for x, c in true + noise]
    scan = SimpleNamespace(acquired_area_nm2=1e4)
    pred = SimpleNamespace(defects=lambda threshold, marked_only: dets)
    return SimpleNamespace(scan=scan, labels=labels), pred


PARENT_RULE = {"trough": -1.0, "peak": 2.5}  # reports only the strong spots: misses weak peaks


def _choose(cases, preds, **kwargs):
    """`choose_detection` at threshold 0.5 from a parent reporting peaks from +2.5 sigma."""
    return rr.choose_detection(
        None,
        cases,
        parent_threshold=0.5,
        parent_rule=PARENT_RULE,
        thresholds=(0.5,),
        predictions=preds,
        **kwargs,
    )


def test_a_kind_with_few_validation_labels_keeps_the_parents_rule():
    """3 validation frames hold about 6 peaks: one match more or less would choose the rule.
    Below `MIN_RULE_LABELS` the parent's limit stays; with enough labels it is chosen."""
    # every true peak is found, weakly (+1.2 sigma); strong bright noise at +3 sigma
    for n, expect in ((6, 2.5), (30, 1.0)):
        c, p = _peak_scan(weak_true=n, strong_noise=n // 3)
        choice = _choose([c], [p])
        assert choice.report_contrast["peak"] == expect, (n, choice)
    # `retrain --rule-choice parent` (`--keep-rule`): the parent's threshold and rule even
    # where another would score more
    from defectwatch.service.retraining import RetrainOptions, _rule_grids

    assert RetrainOptions(rule_choice="parent").keep_rule
    assert RetrainOptions().rule_choice == "clear" and not RetrainOptions().keep_rule
    c, p = _peak_scan(weak_true=30, strong_noise=10)
    kept = rr.choose_detection(
        None,
        [c],
        parent_threshold=0.45,
        parent_rule={"trough": -1.0, "peak": 2.5},
        predictions=[p],
        **_rule_grids(RetrainOptions(rule_choice="parent")),
    )
    assert (kept.threshold, kept.report_contrast["peak"]) == (0.45, 2.5)
    assert kept.mean_f1 < choice.mean_f1


def test_the_operating_point_moves_only_on_a_clear_gain_over_enough_validation_scans():
    """The validation split's best rule replaces the parent's only when the paired bootstrap
    over at least `MIN_CHOICE_SCANS` validation scans puts the gain above zero: not on 3
    frames however large the gain, not when one frame of ten carries it, yes when every frame
    of ten shows it."""
    parent = PARENT_RULE

    def settle(scans):
        cases, preds = zip(*scans)
        best = _choose(cases, preds, min_labels=1)
        assert best.report_contrast["peak"] == 1.0  # +1.0 finds the true peaks
        return rr.clear_or_parent(best, cases, preds, parent_threshold=0.5, parent_rule=parent)

    few, diff = settle([_peak_scan(weak_true=10, strong_noise=2) for _ in range(3)])
    assert few.report_contrast == parent and few.threshold == 0.5
    assert "fewer than 8 validation scans" in few.basis and diff.delta > 0.5
    assert few.f1 == {"peak": 0.0}  # the parent's rule scored: it finds no true peak

    # one frame of ten holds weak true peaks; on the nine others the weak spots are unlabelled
    # and +1.0 loses: pooled, +1.0 wins, but a resample without that frame says otherwise
    one = [_peak_scan(weak_true=20)] + [_peak_scan(strong_true=2, weak_noise=4) for _ in range(9)]
    lucky, diff = settle(one)
    assert lucky.report_contrast == parent and diff.low <= 0 < diff.delta
    assert lucky.basis.startswith("the parent's: ") and "fewer than" not in lucky.basis

    every, diff = settle([_peak_scan(weak_true=4, strong_noise=1) for _ in range(10)])
    assert every.report_contrast["peak"] == 1.0 and diff.low > 0
    assert every.basis.startswith("chosen on validation: clearly better")


def test_the_parents_operating_point_is_kept_when_it_is_the_validations_best():
    c, p = _peak_scan(strong_true=3)  # +2.5 and +1.0 tie, ties go to the parent
    best = _choose([c], [p], min_labels=1)
    same, diff = rr.clear_or_parent(best, [c], [p], parent_threshold=0.5, parent_rule=PARENT_RULE)
    assert diff is None and same.basis == "the parent's, also the best on validation"


def test_what_the_parent_reports_is_spared_even_below_the_usual_confidence():
    """Sparing starts at 0.5 mean probability, or at the parent's own threshold where that is
    lower: a detection the parent reports is never taught as background."""
    from defectwatch.service.retrain_recipe import SPARE_THRESHOLD, spare_threshold

    assert spare_threshold(0.40) == 0.40
    assert spare_threshold(0.60) == SPARE_THRESHOLD == 0.5


def test_unlabelled_parent_detections_are_dont_care_on_validation():
    """`--pu-validation`: a parent detection near a label stays a normal match; one far from
    every label becomes a "don't care" point (neither a hit nor a false detection)."""
    from types import SimpleNamespace

    from defectwatch.pipeline.metrics import ObjectEvaluation, TruthPoint

    truth = [TruthPoint(5.0, 5.0, "trough")]
    dets = [
        SimpleNamespace(x_nm=5.2, y_nm=5.0, kind="trough", confidence=0.9, contrast=-2.0),
        SimpleNamespace(x_nm=20.0, y_nm=20.0, kind="trough", confidence=0.9, contrast=-2.0),
    ]
    pred = SimpleNamespace(defects=lambda threshold, marked_only: dets)
    out = rr.unlabelled_as_dont_care(truth, pred, threshold=0.4)
    assert out[0] == truth[0] and len(out) == 2
    assert (out[1].x_nm, out[1].visible) == (20.0, False)
    strict, lenient = ObjectEvaluation(kinds=("trough",)), ObjectEvaluation(kinds=("trough",))
    strict.add(dets, truth, area_nm2=1e3)
    lenient.add(dets, out, area_nm2=1e3)
    assert strict.scores()["trough"].fp == 1 and lenient.scores()["trough"].fp == 0
    assert strict.scores()["trough"].tp == lenient.scores()["trough"].tp == 1
