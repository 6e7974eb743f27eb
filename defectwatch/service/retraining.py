"""Use case: retrain the ensemble from the labels in the record, compare it with the active
version on the frozen test split, and promote it only when it is no worse.

1. Labelled scans (at least ``MIN_LABELLED_SCANS``) are split by scan, once and for ever
   (``db.splits``): every version is compared on the same test scans.
2. Training examples are made at the active model's pixel size with its preprocessing. A scan's
   labels are exhaustive when any of its label sets says so (one source marked every defect;
   an exhaustive empty set is a clean scan, all background); partial
   label sets teach background only in a ring of ``RING_NM`` around each marked defect and
   leave the rest of the frame IGNORE, so unmarked defects are never taught as background.
   Disc radius: the label's ``radius_nm`` clipped to [0.5, 1] x the class default (the active
   version's ``training.mask_radius_nm`` when it records one, else ``labels.DEFAULT_RADIUS_NM``):
   box-derived radii include the halo around a defect, and a disc much larger than the defect's
   core teaches the lattice around it as defect.
3. A candidate is trained (from scratch or fine-tuned from the active members), saved as a new
   version directory (``parent`` = the active version), evaluated beside the active version on
   the test split (object level and the paper's pixel level), and registered with its metrics.
4. The gate (``--promote auto``) activates it only if no class's F1 drops by more than the
   tolerance and the mean F1 over the classes improves or holds.

A lock file in the models directory (``fcntl.flock``; released by the OS when the process
dies, so a crashed retrain never leaves a stale lock) keeps two retrains from overlapping.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from defectwatch.db.engine import read_transaction, write_transaction
from defectwatch.db.models import utcnow
from defectwatch.db.registry import active_version, list_versions, register_version
from defectwatch.db.splits import (
    TEST_SHARE,
    assign_splits,
    exhaustive_scan_ids,
    scan_labels,
    trainable_scans,
)
from defectwatch.domain import Scan
from defectwatch.errors import ConfigError, DefectwatchError
from defectwatch.pipeline.compare import (
    F1Difference,
    bootstrap_f1_difference,
    scan_counts,
)
from defectwatch.pipeline.labels import (
    CLASS_INDEX,
    DEFAULT_RADIUS_NM,
    IGNORE,
    circle_mask,
)
from defectwatch.pipeline.metrics import ObjectEvaluation, TruthPoint
from defectwatch.pipeline.preprocess import PreprocessParams, Resampling
from defectwatch.pipeline.training_data import Example, example_from_points
from defectwatch.service.evaluation import Case

log = logging.getLogger(__name__)

KINDS = ("trough", "peak")
RECIPES = ("finetune", "scratch")
MIN_LABELLED_SCANS = 4
# fewer test labels of a kind than this: its F1 is too rough to resolve a few hundredths (with
# F1 ~ 0.5-0.8 on n labels, the binomial standard error of recall alone is ~sqrt(0.25 / n),
# 0.09 at n = 30); the gate says so and states a bootstrap interval of the difference
MIN_TEST_LABELS = 30
SMALL_TEST_SPLIT = 3  # fewer test scans than this: the comparison is rough (a warning)
RING_NM = 1.0  # partial labels: background taught this far beyond each marked disc
RADIUS_RANGE = (0.5, 1.0)  # label radius clipped to these multiples of the class default
LOCK_NAME = ".retrain.lock"
PROMOTE_MODES = ("auto", "never", "force")
# the candidate's threshold and rule (`RetrainOptions.rule_choice`)
RULE_CHOICES = ("clear", "validation", "parent")
DEFAULT_THRESHOLD = 0.5

Progress = Callable[[str, int, int], None]  # (task, done, total)
Note = Callable[[str], None]


class NotEnoughLabelsError(DefectwatchError):
    """Too few labelled scans to train and test a candidate."""


class RetrainLockedError(DefectwatchError):
    """Another retrain holds the lock."""


# -- options and results ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainOptions:
    """What ``defectwatch retrain`` can change.

    ``recipe``: ``finetune`` (the nightly default: `retrain_recipe`) or ``scratch`` (the
    paper's: new members from random weights; ``from_active`` starts them from the active
    members instead, without rehearsal or search). ``members`` / ``iterations`` / ``crop_px``
    / ``batch_size`` / ``learning_rate``: None takes the recipe's default (fine-tune: the
    parent's members (``MEMBERS``), ``STEPS``, ``CROP_PX``, ``BATCH``, a search over
    ``RATES`` on the validation split; scratch: 10, 500, 256, 4, 1e-3). ``filters``: U-Net
    width (scratch only; None: the active version's); ``tolerance``: largest F1 drop of one
    class the gate accepts; ``version``: the new version's name (default
    ``retrain-<UTC time>``); ``force``: train even when no label changed since the active
    version was trained;
    ``rehearsal_share``: share of each fine-tuning mini-batch that is simulated;
    ``spare_unlabelled``: the positive-unlabelled masks (`retrain_recipe.spare_unlabelled`);
    ``label_crop_share``: share of the lab's crops centred on a label (None:
    `retrain_recipe.LABEL_CROP_SHARE`); ``rule_choice``: the candidate's threshold and
    report rule: ``clear`` (default) the validation split's best where it is clearly better
    than the active version's (`retrain_recipe.clear_or_parent`), else the active version's;
    ``validation`` the validation split's best; ``parent`` the active version's (the rate and
    steps are still chosen on validation, scored at that rule; ``keep_rule`` is this);
    ``pu_validation`` (default): on the validation split, the parent's detections that no
    label marks are "don't care" (`retrain_recipe.unlabelled_as_dont_care`) when the rate,
    steps and rule are chosen; ``pu_gate`` (default): besides the test split as labelled, the
    gate also refuses a candidate that fails its rule with the active version's unlabelled
    detections as "don't care" there (`_with_unlabelled_check`).
    """

    members: int | None = None
    iterations: int | None = None
    from_active: bool = False
    device: str = "auto"
    promote: str = "auto"
    filters: int | None = None
    crop_px: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int = 0
    tolerance: float = 0.02
    test_share: float = TEST_SHARE
    version: str | None = None
    recipe: str = "finetune"
    force: bool = False
    rehearsal_share: float | None = None
    label_crop_share: float | None = None
    spare_unlabelled: bool = True
    rule_choice: str = "clear"
    pu_validation: bool = True
    pu_gate: bool = True
    min_test_labels: int = MIN_TEST_LABELS
    threads: int | None = None

    def check(self) -> None:
        """ConfigError naming the first unusable value."""
        if self.recipe not in RECIPES:
            raise ConfigError(f"--recipe {self.recipe!r}: choose {' or '.join(RECIPES)}")
        if self.rule_choice not in RULE_CHOICES:
            raise ConfigError(
                f"--rule-choice {self.rule_choice!r}: choose {', '.join(RULE_CHOICES)}"
            )
        if self.promote not in PROMOTE_MODES:
            raise ConfigError(f"--promote {self.promote!r}: choose auto, never or force")
        if (self.members is not None and self.members < 1) or (
            self.iterations is not None and self.iterations < 1
        ):
            raise ConfigError("--members and --iterations must be at least 1")
        if self.crop_px is not None and (self.crop_px < 16 or self.crop_px % 8):
            raise ConfigError(
                f"--crop {self.crop_px}: use a multiple of 8, at least 16 "
                "(the U-Net pools three times)"
            )
        if self.filters is not None and self.filters < 1:
            raise ConfigError(f"--filters {self.filters}: must be at least 1")
        if not 0.0 <= self.tolerance < 1.0:
            raise ConfigError(f"--tolerance {self.tolerance}: an F1 difference in [0, 1)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: must be at least 1")
        if self.label_crop_share is not None and not 0.0 <= self.label_crop_share <= 1.0:
            raise ConfigError(f"--label-crops {self.label_crop_share}: a share in [0, 1]")
        if self.rehearsal_share is not None and not 0.0 <= self.rehearsal_share < 1.0:
            raise ConfigError(
                f"--rehearsal {self.rehearsal_share}: a share of the mini-batch in [0, 1)"
            )

    @property
    def keep_rule(self) -> bool:
        """The active version's threshold and rule, never re-chosen (``--keep-rule``)."""
        return self.rule_choice == "parent"

    @property
    def fine_tune(self) -> bool:
        return self.recipe == "finetune"


@dataclass(frozen=True)
class GateDecision:
    """``promote``: activate the candidate (``mode`` auto: the verdict; never: False; force:
    True); ``would_promote``: the comparison's verdict; ``reasons``: the verdict's grounds,
    one sentence each."""

    def summary(self) -> str:
        """One sentence: what happens and why."""
        why = "; ".join(self.reasons)
        if self.mode == "auto":
            return why
        verdict = "activate" if self.would_promote else "refuse"
        return f"--promote {self.mode} (the comparison alone would {verdict} it: {why})"

    mode: str
    promote: bool
    would_promote: bool
    reasons: tuple[str, ...]
    candidate_mean_f1: float | None
    active_mean_f1: float | None
    judged: tuple[str, ...]  # classes with labels in the test split
    # classes with fewer than the minimum of test labels: judged, but roughly (see reasons)
    small: tuple[str, ...] = ()
    # "mean" and per class: the candidate - active F1 with its bootstrap interval
    uncertainty: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrainResult:
    """What a retrain did: the new version, both evaluations, the gate and the data used."""

    version: str
    directory: Path
    parent: str
    activated: bool
    decision: GateDecision
    candidate: dict[str, Any]
    active: dict[str, Any]
    data: dict[str, Any]
    training: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float | None = None

    @property
    def outcome(self) -> str:
        """``promoted`` or ``candidate`` (kept out)."""
        return "promoted" if self.activated else "candidate"

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "version": self.version,
            "directory": str(self.directory),
            "seconds": self.seconds,
            "parent": self.parent,
            "activated": self.activated,
            "decision": {**asdict(self.decision), "summary": self.decision.summary()},
            "candidate": self.candidate,
            "active": self.active,
            "data": self.data,
            "training": self.training,
            "notes": list(self.notes),
        }


@dataclass
class SkippedRun:
    """A retrain that did not train: no label changed since the active version was trained."""

    parent: str
    reason: str
    notes: list[str] = field(default_factory=list)
    outcome: str = "skipped"
    activated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "version": None,
            "parent": self.parent,
            "activated": False,
            "reason": self.reason,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class LabelledScan:
    """One labelled scan as read from its file: labels in the scan's pixels (row 0 = top)."""

    scan_id: int
    name: str
    split: str
    scan: Scan
    rows: tuple[float, ...]
    cols: tuple[float, ...]
    kinds: tuple[str, ...]
    radius_nm: tuple[float | None, ...]
    exhaustive: bool

    def counts(self) -> dict[str, int]:
        c = Counter(self.kinds)
        return {k: c.get(k, 0) for k in KINDS}

    def truth(self) -> list[TruthPoint]:
        """The labels in nm from the frame's top-left corner (pixel centres)."""
        px, py = self.scan.pixel_size_x_nm, self.scan.pixel_size_y_nm
        return [
            TruthPoint((c + 0.5) * px, (r + 0.5) * py, k)
            for r, c, k in zip(self.rows, self.cols, self.kinds)
        ]


# -- training data ------------------------------------------------------------------------------


def label_radius_nm(
    radius_nm: float | None, kind: str, *, defaults: Mapping[str, float] = DEFAULT_RADIUS_NM
) -> float:
    """The disc radius (nm) a label is drawn with: its own radius clipped to
    ``RADIUS_RANGE`` x the class default (``defaults``), or the default."""
    default = float(defaults.get(kind, DEFAULT_RADIUS_NM[kind]))
    if radius_nm is None or not math.isfinite(radius_nm) or radius_nm <= 0:
        return default
    lo, hi = RADIUS_RANGE
    return float(min(max(radius_nm, lo * default), hi * default))


def partial_label_mask(
    mask: np.ndarray,
    rows: Sequence[float] | np.ndarray,
    cols: Sequence[float] | np.ndarray,
    *,
    radius_px: Sequence[float] | np.ndarray,
    ring_px: float,
) -> np.ndarray:
    """A mask drawn from partial labels -> IGNORE everywhere except within ``ring_px`` beyond
    each marked disc (``rows, cols``: the discs' centres in the mask's pixels)."""
    n = len(rows)
    if n == 0:
        return np.full_like(mask, IGNORE)
    near = (
        circle_mask(
            mask.shape, rows, cols, ["trough"] * n, radius_px=np.asarray(radius_px, float) + ring_px
        )
        > 0
    )
    return np.where(near, mask, IGNORE).astype(np.uint8)


def example_from_labels(
    item: LabelledScan,
    *,
    target_nm: float,
    params: PreprocessParams = PreprocessParams(),
    ring_nm: float = RING_NM,
    default_radius_nm: Mapping[str, float] = DEFAULT_RADIUS_NM,
) -> Example:
    """A labelled scan -> a training Example at ``target_nm`` per pixel (see the module doc
    for radii and partial labels)."""
    scan = item.scan
    radii = [
        label_radius_nm(r, k, defaults=default_radius_nm)
        for r, k in zip(item.radius_nm, item.kinds)
    ]
    ex = example_from_points(
        scan.data,
        pixel_size_nm=(scan.pixel_size_x_nm, scan.pixel_size_y_nm),
        target_nm=target_nm,
        rows=item.rows,
        cols=item.cols,
        kinds=item.kinds,
        radius_nm=radii,
        source=item.name,
        params=params,
    )
    if item.exhaustive:
        return ex
    mapping = Resampling(tuple(scan.data.shape), tuple(ex.image01.shape))
    r, c = mapping.to_resampled(np.asarray(item.rows, float), np.asarray(item.cols, float))
    mask = partial_label_mask(
        ex.mask, r, c, radius_px=np.asarray(radii) / target_nm, ring_px=ring_nm / target_nm
    )
    return Example(ex.image01, mask, ex.source)


def read_recorded_scan(
    path: str, *, channel: str | None, width_nm: float | None, height_nm: float | None
) -> Scan:
    """A recorded scan's file: rendered images (recorded by ``import-image``) at their recorded
    size, .sxm files on their recorded channel."""
    from defectwatch.pipeline.images import IMAGE_SUFFIXES, read_image_as_scan
    from defectwatch.pipeline.scan import read_scan

    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return read_image_as_scan(path, width_nm=width_nm, height_nm=height_nm)
    return read_scan(path, channel=channel or "Z")


def gather_labelled_scans(
    engine: Engine, *, test_share: float = TEST_SHARE, on_note: Note | None = None
) -> list[LabelledScan]:
    """Every labelled scan with its frozen split (new scans are assigned here), read from its
    file. NotEnoughLabelsError below ``MIN_LABELLED_SCANS``; unreadable files are skipped with
    a note."""
    with read_transaction(engine) as session:
        rows = trainable_scans(session=session)
        labels = scan_labels([r.id for r in rows], session=session)
        exhaustive = exhaustive_scan_ids([r.id for r in rows], session=session)
        meta = [(r.id, r.path, r.channel, r.width_nm, r.height_nm) for r in rows]
    if len(meta) < MIN_LABELLED_SCANS:
        raise NotEnoughLabelsError(
            f"{len(meta)} scan(s) are labelled; retraining needs at least {MIN_LABELLED_SCANS} "
            "labelled scans (one or more are held out as the frozen test split). Import labels "
            "with `defectwatch labels import` or accept reviewed scans with `defectwatch "
            "labels accept`; no version was created"
        )
    with write_transaction(engine) as session:
        splits = assign_splits([m[0] for m in meta], session=session, test_share=test_share)
    out = []
    for scan_id, path, channel, width_nm, height_nm in meta:
        try:
            scan = read_recorded_scan(path, channel=channel, width_nm=width_nm, height_nm=height_nm)
        except (DefectwatchError, OSError) as exc:
            _note(on_note, f"{path}: skipped, cannot read it ({exc})")
            continue
        labs = [lab for lab in labels.get(scan_id, []) if lab.kind in CLASS_INDEX]
        out.append(
            LabelledScan(
                scan_id=scan_id,
                name=Path(path).name,
                split=splits[scan_id],
                scan=scan,
                rows=tuple(lab.row for lab in labs),
                cols=tuple(lab.col for lab in labs),
                kinds=tuple(lab.kind for lab in labs),
                radius_nm=tuple(lab.radius_nm for lab in labs),
                exhaustive=scan_id in exhaustive,
            )
        )
    return out


def data_summary(
    items: Sequence[LabelledScan], *, default_radius_nm: Mapping[str, float] = DEFAULT_RADIUS_NM
) -> dict[str, Any]:
    """Scans and labels per kind in each split, exhaustive vs partial label sets."""
    out: dict[str, Any] = {
        "source": "labels in the record",
        "label_radius": (
            f"label radius clipped to {RADIUS_RANGE[0]:g}-{RADIUS_RANGE[1]:g} x the class default "
            f"{dict(default_radius_nm)} nm"
        ),
        "partial_labels": f"IGNORE beyond {RING_NM:g} nm of a mark",
    }
    for split in ("train", "test"):
        chosen = [i for i in items if i.split == split]
        counts: Counter[str] = Counter()
        for i in chosen:
            counts.update(i.counts())
        out[split] = {
            "scans": len(chosen),
            "labels": {k: counts.get(k, 0) for k in KINDS},
            "exhaustive_scans": sum(i.exhaustive for i in chosen),
            "partial_scans": sum(not i.exhaustive for i in chosen),
            "scan_names": [i.name for i in chosen],
        }
    return out


# -- evaluation and the gate --------------------------------------------------------------------


def evaluation_metrics(report: Any) -> dict[str, Any]:
    """The figures kept with a version from an evaluation `Report`: per kind precision,
    recall, F1, AP and counts; mean F1 and object mAP over the kinds; the paper's pixel-level
    mAP, mean AUROC and mean F1."""
    from defectwatch.pipeline.pixel_metrics import jsonable

    objects = report.objects
    kinds = {}
    for kind in KINDS:
        s = objects["kinds"].get(kind, {})
        kinds[kind] = {
            k: s.get(k)
            for k in ("precision", "recall", "f1", "ap", "tp", "fp", "fn", "localisation_nm")
        }
    f1s = [v["f1"] for k, v in kinds.items() if _has_truth(v)]
    aps = [v["ap"] for k, v in kinds.items() if _has_truth(v) and v["ap"] is not None]
    pixels = report.pixels
    return jsonable(
        {
            "kinds": kinds,
            "mean_f1": float(np.mean(f1s)) if f1s else None,
            "map": float(np.mean(aps)) if aps else None,
            "pixels": {
                "map": pixels.get("map"),
                "mean_auroc": pixels.get("mean_auroc"),
                "mean_f1": pixels.get("mean_f1"),
            },
            "threshold": report.settings.get("threshold"),
            "scans": objects.get("n_scans"),
        }
    )


def _has_truth(scores: Mapping[str, Any]) -> bool:
    return (scores.get("tp") or 0) + (scores.get("fn") or 0) > 0


def gate(
    candidate: Mapping[str, float | None],
    active: Mapping[str, float | None],
    *,
    tolerance: float = 0.02,
    mode: str = "auto",
    test_labels: Mapping[str, int] | None = None,
    uncertainty: Mapping[str, F1Difference] | None = None,
    min_labels: int = MIN_TEST_LABELS,
) -> GateDecision:
    """Decide whether a candidate replaces the active version.

    ``candidate`` / ``active``: F1 per class on the same test split, None (or NaN) for classes
    without labels there (not judged). ``auto`` promotes only if no judged class's F1 drops by
    more than ``tolerance`` and the mean F1 over judged classes improves or holds; ``never``
    and ``force`` override the verdict (which is still reported as ``would_promote``).

    ``test_labels``: labels per class in the test split; a judged class with fewer than
    ``min_labels`` is judged on what there is (the same rule: its point estimate is the best
    figure there is), but the reasons say so and state ``uncertainty[class]`` (a paired
    bootstrap over test scans of the F1 difference, `compare.bootstrap_f1_difference`;
    ``uncertainty["mean"]`` for the mean F1): a tiny split can neither promote a candidate with
    a claim of improvement it cannot support nor hide that the comparison is rough.
    """
    if mode not in PROMOTE_MODES:
        raise ConfigError(f"promote mode {mode!r}: choose auto, never or force")

    def ok(v: float | None) -> bool:
        return v is not None and math.isfinite(v)

    unc = dict(uncertainty or {})
    judged = tuple(k for k in candidate if ok(candidate.get(k)) and ok(active.get(k)))
    small = tuple(
        k for k in judged if test_labels is not None and int(test_labels.get(k, 0)) < min_labels
    )
    reasons: list[str] = []
    if not judged:
        reasons.append("the test split holds no labelled defects to compare the versions on")
        c_mean = a_mean = None
        verdict = False
    else:
        c_mean = float(np.mean([candidate[k] for k in judged]))
        a_mean = float(np.mean([active[k] for k in judged]))
        for k in judged:
            drop = float(active[k]) - float(candidate[k])  # type: ignore[arg-type]
            if drop > tolerance + 1e-12:
                reasons.append(
                    f"{k} F1 drops from {active[k]:.3f} to {candidate[k]:.3f} "
                    f"(more than the tolerance {tolerance:g})"
                )
        if c_mean < a_mean - 1e-12:
            reasons.append(f"mean F1 {c_mean:.3f} is below the active version's {a_mean:.3f}")
        verdict = not reasons
        if verdict:
            reasons.append(
                f"mean F1 {c_mean:.3f} vs {a_mean:.3f} and no class drops by more "
                f"than {tolerance:g}"
            )
        for k in small:
            n = int(test_labels.get(k, 0)) if test_labels is not None else 0
            spread = f": candidate - active F1 {unc[k].describe()}" if k in unc else ""
            reasons.append(
                f"rough for {k}: only {n} {k} label(s) in the test split (fewer "
                f"than {min_labels}){spread}"
            )
        if small and "mean" in unc:
            m = unc["mean"]
            shown = (
                "the improvement holds in the interval"
                if m.low >= 0
                else "no improvement is established"
                if m.delta >= 0
                else "the candidate is worse"
            )
            reasons.append(
                f"mean F1 difference {m.describe()}: {shown}; label more scans "
                "for a firmer comparison"
            )
    promote = verdict if mode == "auto" else mode == "force"
    return GateDecision(
        mode,
        promote,
        verdict,
        tuple(reasons),
        c_mean,
        a_mean,
        judged,
        small,
        {k: asdict(v) for k, v in unc.items()},
    )


# -- the lock -----------------------------------------------------------------------------------


@contextmanager
def retrain_lock(models_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``models_dir/.retrain.lock`` for the block; RetrainLockedError when another
    process (or another open of the file) holds it. The OS releases it when a process dies."""
    folder = Path(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 300).decode("utf-8", "replace").strip() or "unknown process"
            raise RetrainLockedError(
                f"another retrain is running ({holder}; lock file {path}); wait for it to finish"
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{utcnow().isoformat(timespec='seconds')}".encode(),
        )
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            _unlock(fd)
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]  # Windows only
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]  # Windows only
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


# -- the use case -------------------------------------------------------------------------------


@dataclass
class _Parent:
    """The active version a retrain starts from."""

    name: str
    directory: Path
    config: Any  # pipeline.model.ModelConfig
    states: list[dict[str, Any]]

    @property
    def mask_radius_nm(self) -> dict[str, float]:
        return {
            k: float(v)
            for k, v in self.config.training.get("mask_radius_nm", DEFAULT_RADIUS_NM).items()
        }

    @property
    def params(self) -> PreprocessParams:
        return PreprocessParams.from_dict(self.config.preprocess)

    @property
    def threshold(self) -> float:
        return float(self.config.metrics.get("threshold", DEFAULT_THRESHOLD))


@dataclass
class _Trained:
    """What the training step hands on: members, the recipe as recorded, the detection rule
    chosen for the candidate (None: choose in-sample as the scratch recipe does)."""

    states: list[dict[str, Any]]
    training: dict[str, Any]
    detection: Any = None  # retrain_recipe.DetectionChoice
    validation: list[Any] = field(default_factory=list)


def retrain(
    engine: Engine,
    *,
    models_dir: str | os.PathLike[str],
    options: RetrainOptions = RetrainOptions(),
    on_progress: Progress | None = None,
    on_note: Note | None = None,
    default_dir: Callable[[], Path] | None = None,
) -> RetrainResult | SkippedRun:
    """Train a candidate from the labels in the record, evaluate it beside the active version
    on the frozen test split, save and register it, and activate it if the gate says so; or
    skip (`SkippedRun`) when no label changed since the active version was trained (unless
    ``options.force``). Every run's outcome is recorded (`retrain_runs.record_outcome`).

    Steps: the lock, the parent (active version), the data (`gather_labelled_scans`), the
    training (`_train_finetune` or `_train_scratch`), the candidate's directory, the gate
    (`_judge`), the registration (`_register`).

    ``models_dir``: where the version directory is written (and the lock lives);
    ``on_progress(task, done, total)``: training iterations per member, then evaluation;
    ``on_note(message)``: warnings worth showing (small test split, skipped files);
    ``default_dir``: the shipped default's directory, registered when the registry is empty.
    """
    from defectwatch.service.retrain_runs import (
        current_fingerprint,
        record_outcome,
        unchanged_since,
    )

    options.check()
    device = _check_device(options.device)
    threads = _set_threads(options.threads) if device.type == "cpu" else None
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        _note(on_note, message)

    models = Path(models_dir)
    started, t0 = utcnow(), time.perf_counter()
    with retrain_lock(models):
        parent = _load_parent(engine, default_dir)
        fingerprint = current_fingerprint(engine)
        why = unchanged_since(
            engine,
            active=parent.name,
            active_data=dict(parent.config.data),
            fingerprint=fingerprint,
        )
        if why is not None and not options.force:
            reason = f"{why}; nothing to learn (--force retrains anyway)"
            record_outcome(
                engine,
                "skipped",
                reason=reason,
                started_at=started,
                parent=parent.name,
                recipe=options.recipe,
                fingerprint=fingerprint,
                seconds=round(time.perf_counter() - t0, 1),
            )
            return SkippedRun(parent.name, reason, notes)
        try:
            result = _retrain_locked(
                engine,
                models=models,
                parent=parent,
                options=options,
                device=device,
                fingerprint=fingerprint,
                note=note,
                on_progress=on_progress,
            )
        except DefectwatchError as exc:
            record_outcome(
                engine,
                "failed",
                reason=str(exc),
                started_at=started,
                parent=parent.name,
                recipe=options.recipe,
                fingerprint=fingerprint,
                seconds=round(time.perf_counter() - t0, 1),
            )
            raise
        result.notes = notes
        result.seconds = round(time.perf_counter() - t0, 1)
        result.training["cpu_threads"] = threads
        record_outcome(
            engine,
            result.outcome,
            reason=result.decision.summary(),
            started_at=started,
            version=result.version,
            parent=parent.name,
            recipe=options.recipe,
            fingerprint=fingerprint,
            seconds=result.seconds,
        )
        return result


def cpu_threads(requested: int | None = None) -> int:
    """Torch CPU threads for a retrain: ``requested``, else the cores left idle by the rest of
    the machine (cores minus the 1-minute load average, at least 1, at most torch's default).
    A nightly job shares the PC: OpenMP threads beyond the idle cores spin while descheduled
    (measured on a 2-core machine at load 15: 2 threads 4.6 s per mini-batch, 1 thread 1.1 s)."""
    import torch

    if requested is not None:
        return int(requested)
    default = torch.get_num_threads()
    try:
        idle = (os.cpu_count() or 1) - os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        return default
    return max(1, min(default, math.floor(idle + 0.5)))


def _set_threads(requested: int | None) -> int:
    import torch

    n = cpu_threads(requested)
    torch.set_num_threads(n)
    log.info("training with %d CPU thread(s)", n)
    return n


def _check_device(device: str) -> Any:
    import torch

    from defectwatch.pipeline.training import resolve_device

    try:
        dev = resolve_device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is usable here; use auto or cpu")
    return dev


def _load_parent(engine: Engine, default_dir: Callable[[], Path] | None) -> _Parent:
    """The active version (the shipped default registered on an empty registry), loaded."""
    from defectwatch.pipeline.model import load_version
    from defectwatch.service.ingest import active_model

    kwargs = {"default_dir": default_dir} if default_dir is not None else {}
    name, directory = active_model(engine, **kwargs)
    config, states = load_version(directory)
    return _Parent(name, Path(directory), config, list(states))


def _retrain_locked(
    engine: Engine,
    *,
    models: Path,
    parent: _Parent,
    options: RetrainOptions,
    device: Any,
    fingerprint: str,
    note: Note,
    on_progress: Progress | None,
) -> RetrainResult:
    """The data, training, candidate, gate and registration steps (the lock is held)."""
    items = gather_labelled_scans(engine, test_share=options.test_share, on_note=note)
    train_items = [i for i in items if i.split == "train"]
    test_items = [i for i in items if i.split == "test"]
    if not train_items or not test_items:
        raise NotEnoughLabelsError(
            f"{len(train_items)} training and {len(test_items)} test scan(s) could be read;"
            " both splits need at least one (see the notes above); no version was created"
        )
    if len(test_items) < SMALL_TEST_SPLIT:
        note(
            f"the frozen test split holds only {len(test_items)} scan(s) "
            f"({sum(len(i.kinds) for i in test_items)} labels): the comparison with "
            f"{parent.name} is rough; label more scans"
        )
    spec = _architecture(parent, options)
    train = _train_finetune if options.fine_tune else _train_scratch
    trained = train(
        train_items, parent=parent, options=options, spec=spec, note=note, on_progress=on_progress
    )
    trained.training.update({"device": str(device), "recipe": options.recipe})
    data = data_summary(items, default_radius_nm=parent.mask_radius_nm)
    data["labels_fingerprint"] = fingerprint
    if trained.validation:
        data["validation"] = {
            "scans": len(trained.validation),
            "scan_names": [i.name for i in trained.validation],
            "note": "training-split scans held out to choose the learning "
            "rate, steps and detection rule",
        }
    name = _new_version_name(engine, models, options.version)
    final, metrics, decision, cand_m, act_m = _build_and_judge(
        models,
        name=name,
        parent=parent,
        spec=spec,
        trained=trained,
        data=data,
        train_items=train_items,
        test_items=test_items,
        options=options,
        on_progress=on_progress,
    )
    activated = _register(
        engine,
        name=name,
        directory=final,
        parent=parent.name,
        metrics=metrics,
        members=len(trained.states),
        decision=decision,
        note=note,
    )
    if decision.promote and not activated:
        decision = replace(decision, promote=False)
    log.info(
        "retrained %s from %s: %s",
        name,
        parent.name,
        "activated" if activated else "kept as a candidate",
    )
    return RetrainResult(
        version=name,
        directory=final,
        parent=parent.name,
        activated=activated,
        decision=decision,
        candidate=cand_m,
        active=act_m,
        data=data,
        training=trained.training,
    )


def _architecture(parent: _Parent, options: RetrainOptions) -> Any:
    spec = parent.config.architecture
    if options.filters is not None and options.filters != spec.nb_filters:
        if options.from_active or options.fine_tune:
            how = "--from-active" if options.from_active else "--recipe finetune"
            raise ConfigError(
                f"--filters {options.filters} with {how}: the active version "
                f"{parent.name} has {spec.nb_filters} filters; leave --filters "
                "out or train from scratch (--recipe scratch)"
            )
        spec = replace(spec, nb_filters=options.filters)
    return spec


def _progress_for(
    on_progress: Progress | None, members: int, label: str = "training member"
) -> Callable[[int, int, int, float], None]:
    def progress(member: int, it: int, total: int, _loss: float) -> None:
        if on_progress:
            on_progress(f"{label} {member + 1}/{members}", it, total)

    return progress


def _train_scratch(
    train_items: Sequence[LabelledScan],
    *,
    parent: _Parent,
    options: RetrainOptions,
    spec: Any,
    note: Note,
    on_progress: Progress | None,
) -> _Trained:
    """The paper's recipe: members from random weights (or the active ones with
    ``from_active``) on every training scan; thresholds chosen later, in-sample."""
    import torch

    from defectwatch.pipeline.training import TrainingRecipe, train_ensemble

    examples = [
        example_from_labels(
            i,
            target_nm=float(parent.config.pixel_size_nm),
            params=parent.params,
            default_radius_nm=parent.mask_radius_nm,
        )
        for i in train_items
    ]
    recipe = TrainingRecipe(
        members=options.members or 10,
        iterations=options.iterations or 500,
        batch_size=options.batch_size or 4,
        crop_px=options.crop_px or 256,
        learning_rate=options.learning_rate or 1e-3,
        seed=options.seed,
    )
    t0 = time.perf_counter()
    states = train_ensemble(
        examples,
        spec=spec,
        recipe=recipe,
        device=options.device,
        init_states=parent.states if options.from_active else None,
        on_progress=_progress_for(on_progress, recipe.members),
    )
    training = {
        **recipe.to_dict(),
        "from": f"active version {parent.name}" if options.from_active else "scratch",
        "torch": torch.__version__,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "examples_model_pixels": int(sum(e.image01.size for e in examples)),
        "mask_radius_nm": parent.mask_radius_nm,
        "partial_label_ring_nm": RING_NM,
        "loss": "cross-entropy (IGNORE excluded)",
        "optimizer": "Adam",
    }
    return _Trained(states, training)


def _train_finetune(
    train_items: Sequence[LabelledScan],
    *,
    parent: _Parent,
    options: RetrainOptions,
    spec: Any,
    note: Note,
    on_progress: Progress | None,
) -> _Trained:
    """The nightly recipe (`retrain_recipe`): validation split, positive-unlabelled masks,
    rehearsal, learning rate and steps chosen on validation, every member fine-tuned from its
    parent member, the detection rule chosen on validation."""
    import torch

    from defectwatch.pipeline.inference import Ensemble
    from defectwatch.pipeline.training import (
        TrainingRecipe,
        train_ensemble,
        train_member,
    )
    from defectwatch.service import retrain_recipe as rr

    t_all = time.perf_counter()
    target_nm = float(parent.config.pixel_size_nm)
    radius = parent.mask_radius_nm
    fit_items, val_items = rr.validation_split(train_items)
    if not val_items:
        note(
            f"only {len(train_items)} training scan(s): no validation split, so the learning "
            "rate, steps and detection rule are not chosen (defaults and the parent's rule)"
        )
    members = options.members or min(rr.MEMBERS or len(parent.states), len(parent.states))
    init_states = parent.states[:members] if members <= len(parent.states) else parent.states
    parent_ens = Ensemble(parent.config, init_states, device=options.device)

    def tick(task: str) -> Callable[[int, int], None]:
        return lambda done, total: on_progress(task, done, total) if on_progress else None

    def spare_at(scan: Any) -> float:  # whatever the parent reports, and from 0.5 anyway
        return rr.spare_threshold(parent.config.threshold_for(scan.channel))

    # the lab's examples, with the parent's unlabelled detections spared
    examples, spared = [], 0
    for k, item in enumerate(fit_items):
        ex = example_from_labels(
            item, target_nm=target_nm, params=parent.params, default_radius_nm=radius
        )
        if options.spare_unlabelled and item.exhaustive:
            ex, n = rr.spare_unlabelled(
                ex,
                item,
                parent_ens.predict_scan(item.scan),
                radius_nm=radius,
                target_nm=target_nm,
                threshold=spare_at(item.scan),
            )
            spared += n
        examples.append(ex)
        tick("preparing the lab's scans")(k + 1, len(fit_items))
    share = rr.REHEARSAL_SHARE if options.rehearsal_share is None else options.rehearsal_share
    rehearsal: list[Example] = []
    rehearsal_note = "none"
    if share > 0:
        rehearsal, rehearsal_note = rr.rehearsal_examples(
            parent.config.data,
            n=rr.REHEARSAL_SCANS,
            target_nm=target_nm,
            params=parent.params,
            radius_nm=radius,
            on_progress=on_progress,
        )
    steps = options.iterations or rr.STEPS
    base = TrainingRecipe(
        members=members,
        iterations=steps,
        batch_size=options.batch_size or rr.BATCH,
        crop_px=options.crop_px or rr.CROP_PX,
        learning_rate=options.learning_rate or rr.RATES[0],
        seed=options.seed,
        rehearsal_share=share,
        label_crop_share=(
            rr.LABEL_CROP_SHARE if options.label_crop_share is None else options.label_crop_share
        ),
    )
    val_cases = [
        Case(
            i.name,
            i.scan,
            rr.unlabelled_as_dont_care(
                i.truth(),
                parent_ens.predict_scan(i.scan),
                threshold=spare_at(i.scan),
            )
            if options.pu_validation and options.spare_unlabelled and i.exhaustive
            else i.truth(),
        )
        for i in val_items
    ]
    search: dict[str, Any] = {}
    rate = base.learning_rate
    if val_cases and options.learning_rate is None:
        rate, steps, search = _search(
            examples,
            rehearsal,
            val_cases,
            parent=parent,
            spec=spec,
            base=base,
            device=options.device,
            on_progress=on_progress,
            train_member=train_member,
            grids=_rule_grids(options),
        )
    recipe = replace(base, learning_rate=rate, iterations=steps)
    t0 = time.perf_counter()
    states = train_ensemble(
        examples,
        spec=spec,
        recipe=recipe,
        device=options.device,
        init_states=init_states,
        rehearsal=rehearsal,
        on_progress=_progress_for(on_progress, recipe.members),
    )
    train_s = time.perf_counter() - t0
    detection = None
    if val_cases:
        candidate = Ensemble(
            replace(parent.config, version="candidate"), states, device=options.device
        )
        val_preds = [candidate.predict_scan(c.scan) for c in val_cases]
        detection = rr.choose_detection(
            candidate,
            val_cases,
            parent_threshold=parent.threshold,
            parent_rule=parent.config.report_contrast,
            predictions=val_preds,
            **_rule_grids(options),
        )
        if options.rule_choice == "clear":
            detection, _ = rr.clear_or_parent(
                detection,
                val_cases,
                val_preds,
                parent_threshold=parent.threshold,
                parent_rule=parent.config.report_contrast,
            )
            if detection.basis.startswith("the parent's:"):
                note(f"threshold and report rule: {detection.basis}")
    training = {
        **recipe.to_dict(),
        "from": f"active version {parent.name}",
        "torch": torch.__version__,
        "train_seconds": round(train_s, 1),
        "recipe_seconds": round(time.perf_counter() - t_all, 1),
        "examples_model_pixels": int(sum(e.image01.size for e in examples)),
        "mask_radius_nm": radius,
        "partial_label_ring_nm": RING_NM,
        "rehearsal": rehearsal_note,
        "unlabelled": (
            f"spared: {spared} confident detections of {parent.name} "
            f"(mean probability >= the lower of {rr.SPARE_THRESHOLD} and its own "
            "threshold) with no label "
            f"within {rr.SPARE_MATCH_NM:g} nm made IGNORE on exhaustive "
            "label sets"
            if options.spare_unlabelled
            else "taught as background (exhaustive label sets)"
        ),
        "spared_detections": spared,
        "members_from": f"the first {min(members, len(parent.states))} of "
        f"{parent.name}'s {len(parent.states)} members",
        "search": search
        or (
            "not searched: "
            + (
                "--learning-rate given"
                if options.learning_rate is not None
                else "no validation split"
            )
        ),
        "loss": "cross-entropy (IGNORE excluded)",
        "optimizer": "Adam",
        "rule_choice": options.rule_choice,
        "operating_point": (
            detection.basis or "the best on validation"
            if detection is not None
            else "the parent's (no validation split)"
        ),
    }
    return _Trained(states, training, detection, list(val_items))


def _rule_grids(options: RetrainOptions) -> dict[str, Any]:
    """`retrain_recipe.choose_detection` grids: empty ones (the parent's threshold and rule
    alone) with ``keep_rule``, the recipe's otherwise."""
    return {"thresholds": (), "contrast_grid": {}} if options.keep_rule else {}


def _search(
    examples: Sequence[Example],
    rehearsal: Sequence[Example],
    val_cases: Sequence[Case],
    *,
    parent: _Parent,
    spec: Any,
    base: Any,
    device: str,
    on_progress: Progress | None,
    train_member: Callable[..., Any],
    grids: Mapping[str, Any] | None = None,
) -> tuple[float, int, dict[str, Any]]:
    """One probe member (member 0, from the parent's member 0) per rate in
    `retrain_recipe.RATES`, scored on the validation cases after half and all the steps, each
    at its best detection rule -> (rate, steps, the table)."""
    from defectwatch.pipeline.inference import Ensemble
    from defectwatch.service import retrain_recipe as rr

    def score(state: dict[str, Any]) -> float:
        ens = Ensemble(replace(parent.config, version="probe"), [state], device=device)
        return rr.choose_detection(
            ens,
            val_cases,
            parent_threshold=parent.threshold,
            parent_rule=parent.config.report_contrast,
            **(grids or {}),
        ).mean_f1

    marks = sorted({max(1, base.iterations // 2), base.iterations})
    table: dict[str, float] = {"parent member 0": round(score(parent.states[0]), 4)}
    best: tuple[float, float, int] | None = None
    for rate in rr.RATES:
        found: dict[int, dict[str, Any]] = {}
        train_member(
            examples,
            spec=spec,
            recipe=replace(base, learning_rate=rate, members=1),
            member=0,
            device=device,
            init_state=parent.states[0],
            rehearsal=rehearsal,
            checkpoints=marks,
            on_checkpoint=found.__setitem__,
            on_progress=_progress_for(on_progress, 1, f"choosing: rate {rate:g}, member"),
        )
        for step in marks:
            f1 = score(found[step])
            table[f"rate {rate:g}, {step} steps"] = round(f1, 4)
            if best is None or f1 > best[0] + 1e-9:
                best = (f1, rate, step)
    assert best is not None
    log.info("fine-tuning search on %d validation scans: %s", len(val_cases), table)
    return (
        best[1],
        best[2],
        {
            "validation_mean_f1": table,
            "chosen": {"learning_rate": best[1], "iterations": best[2]},
            "probe": "member 0 alone, each at its best detection rule on the validation scans",
        },
    )


def _build_and_judge(
    models: Path,
    *,
    name: str,
    parent: _Parent,
    spec: Any,
    trained: _Trained,
    data: dict[str, Any],
    train_items: Sequence[LabelledScan],
    test_items: Sequence[LabelledScan],
    options: RetrainOptions,
    on_progress: Progress | None,
) -> tuple[Path, dict[str, Any], GateDecision, dict, dict]:
    """Save the candidate (in a partial directory), give it its detection rule, evaluate it
    and the parent on the test split, judge, write its metrics and move it into place."""
    from defectwatch.pipeline.inference import Ensemble
    from defectwatch.pipeline.model import ModelConfig, save_version, write_metrics
    from defectwatch.service.evaluation import choose_threshold

    pcfg = parent.config
    partial = models / f".{name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    thresholds: dict[str, Any] = {"threshold": parent.threshold}
    if pcfg.metrics.get("threshold_by_channel"):
        thresholds["threshold_by_channel"] = dict(pcfg.metrics["threshold_by_channel"])
    detection = dict(pcfg.detection)  # its report rule, unless chosen on validation
    if trained.detection is not None:
        choice = trained.detection
        thresholds.update(
            {
                "threshold": choice.threshold,
                "threshold_chosen_on": (
                    f"{len(trained.validation)} validation scans of the lab's training split (not "
                    "trained on, not the test split), jointly with the report rule"
                    + (f"; {choice.basis}" if choice.basis else "")
                ),
                "threshold_table": choice.table,
                "validation_f1": choice.f1,
            }
        )
        detection = {**detection, "report_contrast": dict(choice.report_contrast)}
    config = ModelConfig(
        version=name,
        pixel_size_nm=float(pcfg.pixel_size_nm),
        architecture=spec,
        classes=tuple(pcfg.classes),
        preprocess=dict(pcfg.preprocess),
        training=trained.training,
        data=data,
        metrics=dict(thresholds),
        parent=parent.name,
        detection=detection,
    )
    try:
        save_version(partial, config, trained.states)
        candidate = Ensemble.load(partial, device=options.device)
        if trained.detection is None:
            # the scratch recipe: the candidate's own threshold, chosen on the training scans
            # with exhaustive labels (in-sample; partial sets would count unmarked defects as
            # false), never on the test split the gate judges by
            by_channel = thresholds.get("threshold_by_channel", {})
            fit = [i for i in train_items if i.exhaustive and i.scan.channel not in by_channel]
            if fit:
                chosen, table = choose_threshold(
                    candidate, [Case(i.name, i.scan, i.truth()) for i in fit]
                )
                thresholds.update(
                    {
                        "threshold": chosen,
                        "threshold_chosen_on": (
                            f"{len(fit)} training scans with exhaustive labels (in-sample)"
                        ),
                        "threshold_table": {f"{t:.2f}": round(f, 4) for t, f in table.items()},
                    }
                )
                candidate.config.metrics.update(thresholds)
        active = Ensemble(pcfg, parent.states, device=options.device)
        decision, metrics, cand_m, act_m = _judge(
            candidate,
            active,
            parent=parent.name,
            test_items=test_items,
            options=options,
            on_progress=on_progress,
        )
        metrics = {**cand_m, **thresholds, **metrics}
        write_metrics(partial, metrics)
        _calibrate_candidate(partial, candidate, trained=trained, train_items=train_items)
        final = models / name
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final, metrics, decision, cand_m, act_m


def _calibrate_candidate(
    partial: Path, candidate: Any, *, trained: Any, train_items: Sequence[LabelledScan]
) -> None:
    """Give the candidate its own calibration (issue 15), never measured on the test split.

    Fine-tune: on the exhaustively labelled validation scans of the lab's training split (the
    scans its detection rule was chosen on: not trained on, not the test split). Scratch: on
    the exhaustively labelled training scans (in-sample, as its threshold). Without such scans
    the candidate has none and `density` reports it ``uncalibrated`` (raw count, Poisson
    interval) until the lab's reviewed scans calibrate it.
    """
    from defectwatch.pipeline.model import write_calibration
    from defectwatch.service.calibration import calibrate

    if trained.detection is not None:
        items, where = [i for i in trained.validation if i.exhaustive], "validation scans"
    else:
        items, where = [i for i in train_items if i.exhaustive], "training scans (in-sample)"
    if not items:
        log.info("candidate %s: no exhaustively labelled %s to calibrate on", partial.name, where)
        return
    cases = [Case(i.name, i.scan, i.truth()) for i in items]
    calibration = calibrate(
        candidate,
        cases,
        source="lab",
        description=f"{len(items)} exhaustively labelled {where} of the lab's labels",
    )
    write_calibration(partial, calibration.to_json())


def _judge(
    candidate: Any,
    active: Any,
    *,
    parent: str,
    test_items: Sequence[LabelledScan],
    options: RetrainOptions,
    on_progress: Progress | None,
) -> tuple[GateDecision, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Both versions on the frozen test split (each at its own rule), the bootstrap of their
    F1 difference, the gate -> (decision, metrics to store, candidate's, active's figures)."""
    from defectwatch.service.evaluation import evaluate

    cases = [Case(i.name, i.scan, i.truth()) for i in test_items]
    reports, counts = {}, {}
    # each test scan is predicted once per version; what the unlabelled check needs of the
    # predictions (the detections each version reports, the active version's unlabelled
    # ones) is kept on the way
    reported: dict[str, list[list[Any]]] = {"candidate": [], "active": []}
    dont_care: list[list[Any]] = []
    for label, ens in (("candidate", candidate), ("active", active)):

        def eval_progress(done: int, total: int, label: str = label) -> None:
            if on_progress:
                on_progress(f"evaluating {label}", done, total)

        def predictions(ens: Any = ens, label: str = label) -> Iterator[Any]:
            for case in cases:
                found = ens.predict_scan(case.scan)
                reported[label].append(
                    found.defects(threshold=ens.config.threshold_for(case.scan.channel))
                )
                if label == "active" and options.pu_gate:
                    dont_care.append(_unlabelled_dont_care(case, found, active))
                yield found

        report = evaluate(
            ens, cases, on_progress=eval_progress, n_cases=len(cases), predictions=predictions()
        )
        reports[label] = evaluation_metrics(report)
        counts[label] = scan_counts(report.objects["scans"], KINDS)
    cand_m, act_m = reports["candidate"], reports["active"]
    unlabelled: dict[str, Any] | None = None
    if options.pu_gate:
        unlabelled = _unlabelled_dont_care_scores(cases, dont_care, reported)
    n_labels = Counter(k for i in test_items for k in i.kinds)
    judged = [j for j, k in enumerate(KINDS) if _has_truth(cand_m["kinds"][k])]
    uncertainty: dict[str, F1Difference] = {}
    for j in judged:
        uncertainty[KINDS[j]] = bootstrap_f1_difference(
            counts["active"][:, j], counts["candidate"][:, j]
        )
    if judged:
        uncertainty["mean"] = bootstrap_f1_difference(
            counts["active"][:, judged], counts["candidate"][:, judged]
        )
    decision = gate(
        {k: cand_m["kinds"][k]["f1"] if _has_truth(cand_m["kinds"][k]) else None for k in KINDS},
        {k: act_m["kinds"][k]["f1"] for k in KINDS},
        tolerance=options.tolerance,
        mode=options.promote,
        test_labels={k: n_labels.get(k, 0) for k in KINDS},
        uncertainty=uncertainty,
        min_labels=options.min_test_labels,
    )
    if unlabelled is not None:
        decision = _with_unlabelled_check(decision, unlabelled, tolerance=options.tolerance)
    metrics = {
        "test_split": {
            "scans": len(test_items),
            "labels": sum(n_labels.values()),
            "labels_by_kind": {k: n_labels.get(k, 0) for k in KINDS},
            "scan_names": [i.name for i in test_items],
        },
        "compared_with": {"version": parent, **act_m},
        "gate": {**asdict(decision), "summary": decision.summary()},
    }
    if unlabelled is not None:
        metrics["gate"]["unlabelled_dont_care"] = unlabelled
    return decision, metrics, cand_m, act_m


def _unlabelled_dont_care(case: Case, found: Any, active: Any) -> list[Any]:
    """``case``'s labels plus a "don't care" point at each of the active version's unlabelled
    detections (``found``: its `Prediction`; from its spare threshold,
    `retrain_recipe.unlabelled_as_dont_care`)."""
    from defectwatch.service import retrain_recipe as rr

    at = rr.spare_threshold(active.config.threshold_for(case.scan.channel))
    return rr.unlabelled_as_dont_care(case.labels, found, threshold=at)


def _unlabelled_dont_care_scores(
    cases: Sequence[Case],
    truths: Sequence[Sequence[Any]],
    reported: Mapping[str, Sequence[Sequence[Any]]],
) -> dict[str, Any]:
    """Both versions' F1 per kind on the test ``cases`` with ``truths`` (their labels and the
    active version's unlabelled detections as "don't care", `_unlabelled_dont_care`), from the
    defects each version ``reported`` on each case: a candidate gains nothing there by
    reporting less than the active version where no label is, and loses for what it adds."""
    out: dict[str, Any] = {}
    for label, found in reported.items():
        ev = ObjectEvaluation(kinds=KINDS)
        for case, truth, defects in zip(cases, truths, found):
            ev.add(defects, truth, area_nm2=case.scan.acquired_area_nm2, radius_nm=1.0)
        scores = ev.scores()
        out[label] = {k: (scores[k].f1 if scores[k].tp + scores[k].fn > 0 else None) for k in KINDS}
    out["dont_care"] = sum(not t.visible for truth in truths for t in truth)
    return out


def _with_unlabelled_check(
    decision: GateDecision, unlabelled: Mapping[str, Any], *, tolerance: float
) -> GateDecision:
    """``decision`` (the gate on the test split as labelled), refused as well when the same
    rule fails with the active version's unlabelled detections as "don't care"
    (`_unlabelled_dont_care_scores`). Labels are often incomplete: scored as labelled, a
    candidate that stops reporting real, unlabelled defects looks more precise, and would pass."""
    check = gate(unlabelled["candidate"], unlabelled["active"], tolerance=tolerance)
    if not decision.judged or check.would_promote or not check.judged:
        return decision
    # judged without test_labels, a failing check's reasons are its drops and its mean alone
    why = (
        "with the active version's unlabelled detections as don't care (labels may be "
        f"incomplete): {'; '.join(check.reasons)}"
    )
    # a passing verdict's first reason is its "mean F1 ... and no class drops" sentence (`gate`)
    reasons = (why, *decision.reasons[1:]) if decision.would_promote else (*decision.reasons, why)
    return replace(decision, would_promote=False, promote=decision.mode == "force", reasons=reasons)


def _register(
    engine: Engine,
    *,
    name: str,
    directory: Path,
    parent: str,
    metrics: dict[str, Any],
    members: int,
    decision: GateDecision,
    note: Note,
) -> bool:
    """Register the candidate; activate it if the gate said so and the version it was compared
    with is still the active one (``force`` activates regardless). Returns whether it is
    active."""
    with write_transaction(engine) as session:
        current = active_version(session=session)
        activate = decision.promote
        if activate and decision.mode == "auto" and current is not None and current.name != parent:
            note(
                f"the active version changed from {parent} to {current.name} while training; "
                f"{name} stays a candidate (activate it with `defectwatch models activate "
                f"{name}` after checking)"
            )
            activate = False
        register_version(
            name,
            session=session,
            directory=str(directory),
            parent=parent,
            metrics=metrics,
            members=members,
            activate=activate,
        )
    return activate


def _new_version_name(engine: Engine, models: Path, wanted: str | None) -> str:
    """``wanted`` (ConfigError if taken) or ``retrain-YYYYMMDD-HHMMSS`` (UTC), suffixed
    ``-2``, ``-3``... if that is taken."""
    with read_transaction(engine) as session:
        taken = {v.name for v in list_versions(session=session)}
    if wanted is not None:
        if wanted in taken or (models / wanted).exists():
            raise ConfigError(f"model version {wanted!r} already exists; pick another name")
        return wanted
    base = f"retrain-{utcnow():%Y%m%d-%H%M%S}"
    name, k = base, 1
    while name in taken or (models / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


def _note(on_note: Note | None, message: str) -> None:
    """Hand a warning to the caller (e.g. the CLI prints it), else log it as a warning."""
    if on_note:
        log.info("%s", message)
        on_note(message)
    else:
        log.warning("%s", message)
