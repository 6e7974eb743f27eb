"""The nightly recipe (``retrain --recipe finetune``, the default): what a lab with a handful
to a few hundred labelled scans can train on a CPU overnight without making things worse.

1. **Validation split of the lab's labels.** The frozen training scans are split once more,
   deterministically (``VALIDATION_SHARE`` of them, at least one when there are two or more),
   into scans to fit and scans to choose on. The frozen test split is never looked at here.
2. **Fine-tune from the active version**, every member from its own parent member.
3. **Rehearsal.** Every mini-batch mixes ``REHEARSAL_SHARE`` simulated crops from the parent's
   own training distribution (its ``config.json`` records the simulator mix and seeds) with
   the lab's crops, so a night's few labels do not wash out what the parent knew.
4. **Incomplete labels (positive-unlabelled).** Human label sets marked exhaustive are often
   not (the paper's own 200 nm frame: about half as dense as its neighbours). A confident
   detection of the parent (mean probability >= ``SPARE_THRESHOLD``, or the parent's own
   threshold where that is lower: whatever it reports counts) that no label marks
   within ``SPARE_MATCH_NM`` is not taught as background: its disc is IGNORE
   (`training_data.spare_detections`). Labelled defects and the rest of the frame are taught
   as before.
5. **Members.** Every member of the parent is fine-tuned (``--members`` for fewer): the
   candidate is the parent's equal in size, so the gate compares what the night taught, not
   ensemble size, and the parent's threshold (chosen for the mean of all its members) still
   fits it.
6. **Learning rate and steps on the validation split.** One probe member per learning rate in
   ``RATES`` is fine-tuned for the full number of steps; its weights at half and at all the
   steps are scored on the validation scans (each at its best detection rule, see 7); the
   best (rate, steps) trains every member.
7. **Detection thresholds on the validation split.** The candidate's mean-probability
   threshold and its per-kind contrast rule (``report_contrast``) are chosen jointly on the
   validation scans (`choose_detection`); a kind with fewer than ``MIN_RULE_LABELS``
   validation labels keeps the parent's rule (it still counts in the mean F1 that chooses the
   threshold). The parent's unlabelled detections are "don't care" there
   (`unlabelled_as_dont_care`): counted as false, they make the F1-best point the one that
   reports less (measured on a simulated lab: 22-27 % fewer defects than are there). The choice
   replaces the parent's operating point only where it is clearly better (`clear_or_parent`:
   at least ``MIN_CHOICE_SCANS`` validation scans, and the paired bootstrap interval of the
   gain over them above zero); a handful of frames otherwise move it on noise.
8. **Rare kinds.** ``LABEL_CROP_SHARE`` of the lab's crops are centred on a labelled defect
   whose kind is drawn uniformly, so a night with 40 peaks and 300 troughs teaches both.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from defectwatch.pipeline.compare import bootstrap_f1_difference, scan_counts
from defectwatch.pipeline.contrast import marked
from defectwatch.pipeline.metrics import ObjectEvaluation
from defectwatch.pipeline.preprocess import PreprocessParams, Resampling
from defectwatch.pipeline.training_data import (
    Example,
    SimulationMix,
    simulated_examples,
    spare_detections,
)

log = logging.getLogger(__name__)

VALIDATION_SHARE = 0.25
RATES = (1e-4, 3e-4)  # Adam learning rates tried (a couple of candidates: CPU budget)
STEPS = 200  # mini-batches per member at most; half of it is the other candidate
# members fine-tuned (the parent's first ones); None: all of them (the candidate is the
# parent's equal; a 5-member candidate of default-sim-9 scored mean F1 0.007 below its 10
# members at the same rule on four real folds, and every later scan costs the same)
MEMBERS: int | None = None
CROP_PX = 128
BATCH = 8
REHEARSAL_SHARE = 0.5
REHEARSAL_SCANS = 16
SPARE_THRESHOLD = 0.5
SPARE_MATCH_NM = 1.0  # a detection within this of a label is that label, not an unmarked one
SPARE_RADIUS_SCALE = 1.5  # the spared disc: this times the class's mask radius
THRESHOLD_GRID = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75)
CONTRAST_GRID = {"trough": (-0.5, -1.0, -1.5, -2.0), "peak": (1.0, 1.5, 2.0, 2.5)}
KINDS = ("trough", "peak")
# a kind's contrast rule is re-chosen only with at least this many validation labels of it;
# with fewer (a 3-frame split holds about 6 peaks) the parent's rule is kept: one more or one
# fewer match would swing the choice
MIN_RULE_LABELS = 20
# the validation split's best operating point replaces the parent's only when its gain in mean
# F1 is clear: the paired bootstrap interval (this level, over validation scans) lies above 0,
# over at least MIN_CHOICE_SCANS scans. A bootstrap over n scans has C(2n-1, n) distinct
# resamples: 10 for 3 scans, 1716 for 7, 6435 for 8; below that the interval cannot show the
# scan-to-scan spread of labelling (one crowded, sparsely labelled frame decides the choice)
CLEAR_LEVEL = 0.9
MIN_CHOICE_SCANS = 8
# share of the lab's crops centred on a labelled defect, kinds drawn uniformly (rare peaks are
# seen as often as troughs; `TrainingRecipe.label_crop_share`)
LABEL_CROP_SHARE = 0.5

Progress = Callable[[str, int, int], None]


def validation_split(
    items: Sequence[Any], *, share: float = VALIDATION_SHARE
) -> tuple[list[Any], list[Any]]:
    """(fit, validation) among the frozen training scans ``items`` (each with ``scan_id`` and
    ``name``): ordered by a hash of id and name, the first ``round(share * n)`` (at least one
    when n >= 2, none when n < 2) validate. Deterministic: the same scans every night."""
    if len(items) < 2:
        return list(items), []
    order = sorted(
        items, key=lambda i: hashlib.sha256(f"{i.scan_id}:{i.name}".encode()).hexdigest()
    )
    n_val = min(len(items) - 1, max(1, math.floor(share * len(items) + 0.5)))
    val_ids = {i.scan_id for i in order[:n_val]}
    return (
        [i for i in items if i.scan_id not in val_ids],
        [i for i in items if i.scan_id in val_ids],
    )


def simulation_mix(data: Mapping[str, Any]) -> tuple[SimulationMix, bool]:
    """The parent's simulator mix from its config ``data`` (True), else the default (False)."""
    mix = data.get("mix") if isinstance(data, Mapping) else None
    if not isinstance(mix, Mapping):
        return SimulationMix(), False
    fields = SimulationMix.__dataclass_fields__
    kwargs = {}
    for k, v in mix.items():
        if k not in fields:
            continue
        if isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        kwargs[k] = v
    return SimulationMix(**kwargs), True


def rehearsal_examples(
    parent_data: Mapping[str, Any],
    *,
    n: int,
    target_nm: float,
    params: PreprocessParams,
    radius_nm: Mapping[str, float],
    on_progress: Progress | None = None,
) -> tuple[list[Example], str]:
    """``n`` simulated examples from the parent's own training distribution (its mix, its
    first seeds) -> (examples, a sentence saying which)."""
    mix, own = simulation_mix(parent_data)
    seeds = parent_data.get("seeds") if isinstance(parent_data, Mapping) else None
    first = int(seeds[0]) if isinstance(seeds, (list, tuple)) and seeds else 1_000_000
    chosen = list(range(first, first + n))

    def progress(done: int, total: int) -> None:
        if on_progress:
            on_progress("simulating rehearsal scans", done, total)

    examples = list(
        simulated_examples(
            chosen,
            target_nm=target_nm,
            mix=mix,
            params=params,
            radius_nm=dict(radius_nm),
            on_progress=progress,
        )
    )
    where = (
        "the parent's recorded simulator mix"
        if own
        else ("the default simulator mix (the parent records none)")
    )
    return examples, f"{n} simulated scans (seeds {first}-{first + n - 1}) from {where}"


def spare_threshold(parent_threshold: float) -> float:
    """The mean probability from which a parent's unlabelled detection is spared: the lower of
    ``SPARE_THRESHOLD`` and the parent's own threshold for the scan's channel (a detection the
    parent reports is never taught as background)."""
    return min(SPARE_THRESHOLD, float(parent_threshold))


def spare_unlabelled(
    example: Example,
    item: Any,
    prediction: Any,
    *,
    radius_nm: Mapping[str, float],
    target_nm: float,
    threshold: float = SPARE_THRESHOLD,
) -> tuple[Example, int]:
    """``example`` of an exhaustively labelled scan ``item`` with the parent's confident,
    unlabelled detections (from ``prediction``, the parent's `Prediction` of the scan) made
    IGNORE -> (example, how many were spared). Partial label sets are returned as they are
    (everything away from a mark is IGNORE already)."""
    if not item.exhaustive:
        return example, 0
    px, py = item.scan.pixel_size_x_nm, item.scan.pixel_size_y_nm
    labelled = np.column_stack(
        [(np.asarray(item.cols, float) + 0.5) * px, (np.asarray(item.rows, float) + 0.5) * py]
    )
    keep = unlabelled_detections(prediction, labelled, threshold=threshold)
    if not keep:
        return example, 0
    mapping = Resampling(tuple(item.scan.data.shape), tuple(example.image01.shape))
    r, c = mapping.to_resampled(
        np.array([d.row for d in keep], float), np.array([d.col for d in keep], float)
    )
    radii = np.array([SPARE_RADIUS_SCALE * radius_nm.get(d.kind, 0.7) for d in keep]) / target_nm
    mask = spare_detections(example.mask, r, c, radius_px=radii)
    return Example(example.image01, mask, example.source), len(keep)


def unlabelled_detections(prediction: Any, labelled_nm: np.ndarray, *, threshold: float) -> list:
    """The parent's detections (``prediction``, mean probability >= ``threshold``, contrast not
    judged) with no label (``labelled_nm``: (n, 2) x, y in nm) within ``SPARE_MATCH_NM``."""
    found = prediction.defects(threshold=threshold, marked_only=False)
    if not len(labelled_nm):
        return list(found)
    return [
        d
        for d in found
        if float(np.min(np.hypot(labelled_nm[:, 0] - d.x_nm, labelled_nm[:, 1] - d.y_nm)))
        > SPARE_MATCH_NM
    ]


def unlabelled_as_dont_care(truth: Sequence[Any], prediction: Any, *, threshold: float) -> list:
    """Validation truth for choosing a rule when labels may be incomplete: ``truth`` (a scan's
    labels, `TruthPoint`) plus a "don't care" point (``visible=False``: neither a hit nor a
    false detection) at each of the parent's `unlabelled_detections`, the detections training
    spares."""
    from defectwatch.pipeline.metrics import TruthPoint

    labelled = np.array([(t.x_nm, t.y_nm) for t in truth], float).reshape(-1, 2)
    return list(truth) + [
        TruthPoint(d.x_nm, d.y_nm, d.kind, visible=False)
        for d in unlabelled_detections(prediction, labelled, threshold=threshold)
    ]


# -- choosing on the validation split -----------------------------------------------------------


@dataclass(frozen=True)
class DetectionChoice:
    """The detection rule chosen on validation scans: ``threshold`` (mean probability),
    ``report_contrast`` {kind: weakest contrast reported}, ``mean_f1`` there, per-kind F1 and
    the table tried."""

    threshold: float
    report_contrast: dict[str, float]
    mean_f1: float
    f1: dict[str, float]
    table: dict[str, float] = field(default_factory=dict)  # "threshold" -> best mean F1
    # how it was settled: "" (the best on validation), or a sentence (`clear_or_parent`)
    basis: str = ""


def choose_detection(
    ensemble: Any,
    cases: Sequence[Any],
    *,
    parent_threshold: float,
    parent_rule: Mapping[str, float],
    thresholds: Sequence[float] = THRESHOLD_GRID,
    contrast_grid: Mapping[str, Sequence[float]] = CONTRAST_GRID,
    radius_nm: float = 1.0,
    predictions: Sequence[Any] | None = None,
    min_labels: int = MIN_RULE_LABELS,
) -> DetectionChoice:
    """The threshold and per-kind contrast rule with the best mean object F1 (over kinds with
    labels in ``cases``) on the validation ``cases``; each scan is predicted once (or
    ``predictions`` given). Ties go to the parent's values. Kinds without labels keep the
    parent's rule and do not count; kinds with fewer than ``min_labels`` keep the parent's rule
    and count in the mean F1 at it."""
    grid_t = sorted({float(t) for t in thresholds} | {float(parent_threshold)})
    preds = (
        list(predictions)
        if predictions is not None
        else [ensemble.predict_scan(c.scan) for c in cases]
    )
    n_labels = {k: 0 for k in KINDS}
    for c in cases:
        for lab in c.labels:
            if lab.visible and lab.kind in n_labels:
                n_labels[lab.kind] += 1
    kinds = [k for k in KINDS if n_labels[k] > 0]
    limits = {
        k: sorted(
            (set(contrast_grid.get(k, ())) if n_labels[k] >= min_labels else set())
            | {float(parent_rule.get(k, 0.0))}
        )
        for k in KINDS
    }
    evals = {
        (t, k, lim): ObjectEvaluation(kinds=(k,))
        for t in grid_t
        for k in kinds
        for lim in limits[k]
    }
    for case, pred in zip(cases, preds):
        area = case.scan.acquired_area_nm2
        for t in grid_t:
            found = pred.defects(threshold=t, marked_only=False)
            for k in kinds:
                mine = [d for d in found if d.kind == k]
                labels = [lab for lab in case.labels if lab.kind == k]
                for lim in limits[k]:
                    kept = [d for d in mine if marked(k, float(d.contrast), {k: lim})]
                    evals[(t, k, lim)].add(kept, labels, area_nm2=area, radius_nm=radius_nm)
    best: tuple | None = None
    table = {}
    for t in grid_t:
        per_kind, rule = {}, {}
        for k in kinds:
            scored = [
                (evals[(t, k, lim)].scores()[k].f1, -abs(lim - parent_rule.get(k, lim)), lim)
                for lim in limits[k]
            ]
            f1, _, lim = max(
                (s for s in scored if math.isfinite(s[0])),
                default=(0.0, 0.0, parent_rule.get(k, 0.0)),
            )
            per_kind[k], rule[k] = float(f1), float(lim)
        mean = float(np.mean(list(per_kind.values()))) if per_kind else 0.0
        table[f"{t:.2f}"] = round(mean, 4)
        key = (mean, -abs(t - parent_threshold))
        if best is None or key > best[0]:
            best = (key, t, per_kind, rule)
    assert best is not None
    _, t, per_kind, rule = best
    full_rule = {k: float(rule.get(k, parent_rule.get(k, 0.0))) for k in parent_rule}
    return DetectionChoice(float(t), full_rule, float(best[0][0]), per_kind, table)


def operating_point_counts(
    cases: Sequence[Any],
    predictions: Sequence[Any],
    *,
    threshold: float,
    rule: Mapping[str, float],
    radius_nm: float = 1.0,
) -> np.ndarray:
    """(n_scans, len(KINDS), 3) TP, FP, FN per scan of ``cases`` and kind
    (`compare.scan_counts`), detections of ``predictions`` (one per case) kept from mean
    probability ``threshold`` and contrast ``rule`` {kind: weakest contrast}; matched within
    ``radius_nm``."""
    ev = ObjectEvaluation(kinds=KINDS)
    for case, pred in zip(cases, predictions):
        found = pred.defects(threshold=threshold, marked_only=False)
        kept = [d for d in found if d.kind in KINDS and marked(d.kind, float(d.contrast), rule)]
        ev.add(kept, case.labels, area_nm2=case.scan.acquired_area_nm2, radius_nm=radius_nm)
    return scan_counts(ev.summary()["scans"], KINDS)


def clear_or_parent(
    choice: DetectionChoice,
    cases: Sequence[Any],
    predictions: Sequence[Any],
    *,
    parent_threshold: float,
    parent_rule: Mapping[str, float],
    level: float = CLEAR_LEVEL,
    min_scans: int = MIN_CHOICE_SCANS,
) -> tuple[DetectionChoice, Any]:
    """``choice`` (the validation split's best threshold and rule) where it clearly beats the
    parent's operating point on the same validation ``cases`` (``predictions``: the
    candidate's, one per case), else the parent's threshold and rule.

    Clearly: at least ``min_scans`` validation scans, and the paired bootstrap over them
    (`compare.bootstrap_f1_difference`) puts the ``level`` interval of the mean-F1 gain above
    zero. A few validation frames with incomplete labels otherwise move the operating point on
    noise, and the move is biased towards reporting less (an unlabelled true defect counts as
    a false detection). Returns
    (the operating point, with ``basis`` saying which and why; the `F1Difference`, or None
    when the choice is the parent's anyway).
    """
    full_parent = {k: float(v) for k, v in parent_rule.items()}
    same = math.isclose(choice.threshold, parent_threshold) and all(
        math.isclose(choice.report_contrast.get(k, v), v) for k, v in full_parent.items()
    )
    if same:
        return replace(choice, basis="the parent's, also the best on validation"), None
    mine = operating_point_counts(
        cases, predictions, threshold=choice.threshold, rule=choice.report_contrast
    )
    theirs = operating_point_counts(
        cases, predictions, threshold=parent_threshold, rule=full_parent
    )
    diff = bootstrap_f1_difference(theirs, mine, level=level)
    gain = (
        f"validation mean F1 {diff.delta:+.3f} ({level:.0%} interval {diff.low:+.3f} to "
        f"{diff.high:+.3f} over {diff.resamples} bootstrap resamples of {diff.scans} scans)"
    )
    enough = len(cases) >= min_scans
    if enough and math.isfinite(diff.low) and diff.low > 0:
        return replace(choice, basis=f"chosen on validation: clearly better, {gain}"), diff
    at_parent = choose_detection(
        None,
        cases,
        parent_threshold=parent_threshold,
        parent_rule=full_parent,
        thresholds=(),
        contrast_grid={},
        predictions=predictions,
    )
    kept = replace(
        at_parent,
        table=choice.table,
        basis=(
            f"the parent's: the validation's best (threshold {choice.threshold:.2f}, "
            f"rule {choice.report_contrast}) is not clearly better, {gain}"
            + ("" if enough else f"; fewer than {min_scans} validation scans")
        ),
    )
    return kept, diff
