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
from defectwatch.db.splits import (TEST_SHARE, assign_splits, exhaustive_scan_ids,
                                   scan_labels, trainable_scans)
from defectwatch.domain import Scan
from defectwatch.errors import ConfigError, DefectwatchError
from defectwatch.pipeline.labels import CLASS_INDEX, DEFAULT_RADIUS_NM, IGNORE, circle_mask
from defectwatch.pipeline.metrics import TruthPoint
from defectwatch.pipeline.preprocess import PreprocessParams, Resampling
from defectwatch.pipeline.training_data import Example, example_from_points
from defectwatch.service.evaluation import Case

log = logging.getLogger(__name__)

KINDS = ("trough", "peak")
MIN_LABELLED_SCANS = 4
SMALL_TEST_SPLIT = 3  # fewer test scans than this: the comparison is rough (a warning)
RING_NM = 1.0  # partial labels: background taught this far beyond each marked disc
RADIUS_RANGE = (0.5, 1.0)  # label radius clipped to these multiples of the class default
LOCK_NAME = ".retrain.lock"
PROMOTE_MODES = ("auto", "never", "force")
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
    """What ``defectwatch retrain`` can change. ``filters``: U-Net width (None: the active
    version's); ``crop_px``: training crop side in model pixels (a multiple of 8);
    ``tolerance``: largest F1 drop of one class the gate accepts; ``version``: the new
    version's name (default ``retrain-<UTC time>``)."""

    members: int = 10
    iterations: int = 500
    from_active: bool = False
    device: str = "auto"
    promote: str = "auto"
    filters: int | None = None
    crop_px: int = 256
    batch_size: int = 4
    learning_rate: float = 1e-3
    seed: int = 0
    tolerance: float = 0.02
    test_share: float = TEST_SHARE
    version: str | None = None

    def check(self) -> None:
        """ConfigError naming the first unusable value."""
        if self.promote not in PROMOTE_MODES:
            raise ConfigError(f"--promote {self.promote!r}: choose auto, never or force")
        if self.members < 1 or self.iterations < 1:
            raise ConfigError("--members and --iterations must be at least 1")
        if self.crop_px < 16 or self.crop_px % 8:
            raise ConfigError(f"--crop {self.crop_px}: use a multiple of 8, at least 16 "
                              "(the U-Net pools three times)")
        if self.filters is not None and self.filters < 1:
            raise ConfigError(f"--filters {self.filters}: must be at least 1")
        if not 0.0 <= self.tolerance < 1.0:
            raise ConfigError(f"--tolerance {self.tolerance}: an F1 difference in [0, 1)")


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

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "directory": str(self.directory),
                "parent": self.parent, "activated": self.activated,
                "decision": {**asdict(self.decision), "summary": self.decision.summary()},
                "candidate": self.candidate,
                "active": self.active, "data": self.data, "training": self.training,
                "notes": list(self.notes)}


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
        return [TruthPoint((c + 0.5) * px, (r + 0.5) * py, k)
                for r, c, k in zip(self.rows, self.cols, self.kinds)]


# -- training data ------------------------------------------------------------------------------

def label_radius_nm(radius_nm: float | None, kind: str, *,
                    defaults: Mapping[str, float] = DEFAULT_RADIUS_NM) -> float:
    """The disc radius (nm) a label is drawn with: its own radius clipped to
    ``RADIUS_RANGE`` x the class default (``defaults``), or the default."""
    default = float(defaults.get(kind, DEFAULT_RADIUS_NM[kind]))
    if radius_nm is None or not math.isfinite(radius_nm) or radius_nm <= 0:
        return default
    lo, hi = RADIUS_RANGE
    return float(min(max(radius_nm, lo * default), hi * default))


def partial_label_mask(mask: np.ndarray, rows: Sequence[float], cols: Sequence[float], *,
                       radius_px: Sequence[float], ring_px: float) -> np.ndarray:
    """A mask drawn from partial labels -> IGNORE everywhere except within ``ring_px`` beyond
    each marked disc (``rows, cols``: the discs' centres in the mask's pixels)."""
    n = len(rows)
    if n == 0:
        return np.full_like(mask, IGNORE)
    near = circle_mask(mask.shape, rows, cols, ["trough"] * n,
                       radius_px=np.asarray(radius_px, float) + ring_px) > 0
    return np.where(near, mask, IGNORE).astype(np.uint8)


def example_from_labels(item: LabelledScan, *, target_nm: float,
                        params: PreprocessParams = PreprocessParams(),
                        ring_nm: float = RING_NM,
                        default_radius_nm: Mapping[str, float] = DEFAULT_RADIUS_NM) -> Example:
    """A labelled scan -> a training Example at ``target_nm`` per pixel (see the module doc
    for radii and partial labels)."""
    scan = item.scan
    radii = [label_radius_nm(r, k, defaults=default_radius_nm)
             for r, k in zip(item.radius_nm, item.kinds)]
    ex = example_from_points(scan.data, pixel_size_nm=(scan.pixel_size_x_nm,
                                                       scan.pixel_size_y_nm),
                             target_nm=target_nm, rows=item.rows, cols=item.cols,
                             kinds=item.kinds, radius_nm=radii, source=item.name,
                             params=params)
    if item.exhaustive:
        return ex
    mapping = Resampling(tuple(scan.data.shape), tuple(ex.image01.shape))
    r, c = mapping.to_resampled(np.asarray(item.rows, float), np.asarray(item.cols, float))
    mask = partial_label_mask(ex.mask, r, c, radius_px=np.asarray(radii) / target_nm,
                              ring_px=ring_nm / target_nm)
    return Example(ex.image01, mask, ex.source)


def read_recorded_scan(path: str, *, channel: str | None, width_nm: float | None,
                       height_nm: float | None) -> Scan:
    """A recorded scan's file: rendered images (recorded by ``import-image``) at their recorded
    size, .sxm files on their recorded channel."""
    from defectwatch.pipeline.images import IMAGE_SUFFIXES, read_image_as_scan
    from defectwatch.pipeline.scan import read_scan

    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return read_image_as_scan(path, width_nm=width_nm, height_nm=height_nm)
    return read_scan(path, channel=channel or "Z")


def gather_labelled_scans(engine: Engine, *, test_share: float = TEST_SHARE,
                          on_note: Note | None = None) -> list[LabelledScan]:
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
            "labels accept`; no version was created")
    with write_transaction(engine) as session:
        splits = assign_splits([m[0] for m in meta], session=session, test_share=test_share)
    out = []
    for scan_id, path, channel, width_nm, height_nm in meta:
        try:
            scan = read_recorded_scan(path, channel=channel, width_nm=width_nm,
                                      height_nm=height_nm)
        except (DefectwatchError, OSError) as exc:
            _note(on_note, f"{path}: skipped, cannot read it ({exc})")
            continue
        labs = [lab for lab in labels.get(scan_id, []) if lab.kind in CLASS_INDEX]
        out.append(LabelledScan(
            scan_id=scan_id, name=Path(path).name, split=splits[scan_id], scan=scan,
            rows=tuple(lab.row for lab in labs), cols=tuple(lab.col for lab in labs),
            kinds=tuple(lab.kind for lab in labs),
            radius_nm=tuple(lab.radius_nm for lab in labs),
            exhaustive=scan_id in exhaustive))
    return out


def data_summary(items: Sequence[LabelledScan], *,
                 default_radius_nm: Mapping[str, float] = DEFAULT_RADIUS_NM) -> dict[str, Any]:
    """Scans and labels per kind in each split, exhaustive vs partial label sets."""
    out: dict[str, Any] = {"source": "labels in the record", "label_radius": (
        f"label radius clipped to {RADIUS_RANGE[0]:g}-{RADIUS_RANGE[1]:g} x the class default "
        f"{dict(default_radius_nm)} nm"),
        "partial_labels": f"IGNORE beyond {RING_NM:g} nm of a mark"}
    for split in ("train", "test"):
        chosen = [i for i in items if i.split == split]
        counts = Counter()
        for i in chosen:
            counts.update(i.counts())
        out[split] = {"scans": len(chosen), "labels": {k: counts.get(k, 0) for k in KINDS},
                      "exhaustive_scans": sum(i.exhaustive for i in chosen),
                      "partial_scans": sum(not i.exhaustive for i in chosen),
                      "scan_names": [i.name for i in chosen]}
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
        kinds[kind] = {k: s.get(k) for k in ("precision", "recall", "f1", "ap", "tp", "fp",
                                            "fn", "localisation_nm")}
    f1s = [v["f1"] for k, v in kinds.items() if _has_truth(v)]
    aps = [v["ap"] for k, v in kinds.items() if _has_truth(v) and v["ap"] is not None]
    pixels = report.pixels
    return jsonable({
        "kinds": kinds,
        "mean_f1": float(np.mean(f1s)) if f1s else None,
        "map": float(np.mean(aps)) if aps else None,
        "pixels": {"map": pixels.get("map"), "mean_auroc": pixels.get("mean_auroc"),
                   "mean_f1": pixels.get("mean_f1")},
        "threshold": report.settings.get("threshold"),
        "scans": objects.get("n_scans"),
    })


def _has_truth(scores: Mapping[str, Any]) -> bool:
    return (scores.get("tp") or 0) + (scores.get("fn") or 0) > 0


def gate(candidate: Mapping[str, float | None], active: Mapping[str, float | None], *,
         tolerance: float = 0.02, mode: str = "auto") -> GateDecision:
    """Decide whether a candidate replaces the active version.

    ``candidate`` / ``active``: F1 per class on the same test split, None (or NaN) for classes
    without labels there (not judged). ``auto`` promotes only if no judged class's F1 drops by
    more than ``tolerance`` and the mean F1 over judged classes improves or holds; ``never``
    and ``force`` override the verdict (which is still reported as ``would_promote``).
    """
    if mode not in PROMOTE_MODES:
        raise ConfigError(f"promote mode {mode!r}: choose auto, never or force")

    def ok(v: float | None) -> bool:
        return v is not None and math.isfinite(v)

    judged = tuple(k for k in candidate if ok(candidate.get(k)) and ok(active.get(k)))
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
                reasons.append(f"{k} F1 drops from {active[k]:.3f} to {candidate[k]:.3f} "
                               f"(more than the tolerance {tolerance:g})")
        if c_mean < a_mean - 1e-12:
            reasons.append(f"mean F1 {c_mean:.3f} is below the active version's {a_mean:.3f}")
        verdict = not reasons
        if verdict:
            reasons.append(f"mean F1 {c_mean:.3f} vs {a_mean:.3f} and no class drops by more "
                           f"than {tolerance:g}")
    promote = verdict if mode == "auto" else mode == "force"
    return GateDecision(mode, promote, verdict, tuple(reasons), c_mean, a_mean, judged)


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
            raise RetrainLockedError(f"another retrain is running ({holder}; lock file {path}); "
                                     "wait for it to finish")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{utcnow().isoformat(timespec='seconds')}".encode())
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
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
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
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


# -- the use case -------------------------------------------------------------------------------

def retrain(engine: Engine, *, models_dir: str | os.PathLike[str],
            options: RetrainOptions = RetrainOptions(),
            on_progress: Progress | None = None, on_note: Note | None = None,
            default_dir: Callable[[], Path] | None = None) -> RetrainResult:
    """Train a candidate from the labels in the record, evaluate it beside the active version
    on the frozen test split, save and register it, and activate it if the gate says so.

    ``models_dir``: where the version directory is written (and the lock lives);
    ``on_progress(task, done, total)``: training iterations per member, then evaluation;
    ``on_note(message)``: warnings worth showing (small test split, skipped files);
    ``default_dir``: the shipped default's directory, registered when the registry is empty.
    """
    import torch

    from defectwatch.pipeline.inference import Ensemble
    from defectwatch.pipeline.model import (ModelConfig, load_version, save_version,
                                            write_metrics)
    from defectwatch.pipeline.training import TrainingRecipe, resolve_device, train_ensemble
    from defectwatch.service.evaluation import choose_threshold, evaluate
    from defectwatch.service.ingest import active_model

    options.check()
    try:
        device = resolve_device(options.device)
    except RuntimeError:
        raise ConfigError(f"--device {options.device!r}: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {options.device}: no CUDA GPU is usable here; use auto "
                          "or cpu")
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        _note(on_note, message)

    models = Path(models_dir)
    with retrain_lock(models):
        kwargs = {"default_dir": default_dir} if default_dir is not None else {}
        parent, parent_dir = active_model(engine, **kwargs)
        parent_cfg, parent_states = load_version(parent_dir)
        items = gather_labelled_scans(engine, test_share=options.test_share, on_note=note)
        train_items = [i for i in items if i.split == "train"]
        test_items = [i for i in items if i.split == "test"]
        if not train_items or not test_items:
            raise NotEnoughLabelsError(
                f"{len(train_items)} training and {len(test_items)} test scan(s) could be read;"
                " both splits need at least one (see the notes above); no version was created")
        n_test_labels = sum(len(i.kinds) for i in test_items)
        if len(test_items) < SMALL_TEST_SPLIT:
            note(f"the frozen test split holds only {len(test_items)} scan(s) "
                 f"({n_test_labels} labels): the comparison with {parent} is rough; label "
                 "more scans")

        spec = parent_cfg.architecture
        if options.filters is not None and options.filters != spec.nb_filters:
            if options.from_active:
                raise ConfigError(f"--filters {options.filters} with --from-active: the active "
                                  f"version {parent} has {spec.nb_filters} filters; leave "
                                  "--filters out or train from scratch")
            spec = replace(spec, nb_filters=options.filters)
        params = PreprocessParams.from_dict(parent_cfg.preprocess)
        target_nm = float(parent_cfg.pixel_size_nm)
        mask_radius = {k: float(v) for k, v in parent_cfg.training.get(
            "mask_radius_nm", DEFAULT_RADIUS_NM).items()}
        examples = [example_from_labels(i, target_nm=target_nm, params=params,
                                        default_radius_nm=mask_radius) for i in train_items]
        recipe = TrainingRecipe(members=options.members, iterations=options.iterations,
                                batch_size=options.batch_size, crop_px=options.crop_px,
                                learning_rate=options.learning_rate, seed=options.seed)

        def progress(member: int, it: int, total: int, _loss: float) -> None:
            if on_progress:
                on_progress(f"training member {member + 1}/{recipe.members}", it, total)

        t0 = time.perf_counter()
        states = train_ensemble(examples, spec=spec, recipe=recipe, device=options.device,
                                init_states=parent_states if options.from_active else None,
                                on_progress=progress)
        train_s = time.perf_counter() - t0

        name = _new_version_name(engine, models, options.version)
        partial = models / f".{name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        thresholds = {"threshold": float(parent_cfg.metrics.get("threshold", DEFAULT_THRESHOLD))}
        if parent_cfg.metrics.get("threshold_by_channel"):
            thresholds["threshold_by_channel"] = dict(parent_cfg.metrics["threshold_by_channel"])
        data = data_summary(items, default_radius_nm=mask_radius)
        training = {**recipe.to_dict(), "from": f"active version {parent}" if
                    options.from_active else "scratch", "device": str(device),
                    "torch": torch.__version__, "train_seconds": round(train_s, 1),
                    "examples_model_pixels": int(sum(e.image01.size for e in examples)),
                    "mask_radius_nm": mask_radius, "partial_label_ring_nm": RING_NM,
                    "loss": "cross-entropy (IGNORE excluded)", "optimizer": "Adam"}
        config = ModelConfig(version=name, pixel_size_nm=target_nm, architecture=spec,
                             classes=tuple(parent_cfg.classes),
                             preprocess=dict(parent_cfg.preprocess), training=training,
                             data=data, metrics=dict(thresholds), parent=parent,
                             detection=dict(parent_cfg.detection))  # its report rule
        try:
            save_version(partial, config, states)
            candidate = Ensemble.load(partial, device=options.device)
            # the candidate's own threshold: the parent's was calibrated for the parent's
            # probabilities, a retrained version's are not the same. Chosen on the training
            # scans with exhaustive labels (partial sets would count unmarked defects as false),
            # never on the test split the gate judges by.
            by_channel = thresholds.get("threshold_by_channel", {})
            fit = [i for i in train_items if i.exhaustive and i.scan.channel not in by_channel]
            if fit:
                chosen, table = choose_threshold(
                    candidate, [Case(i.name, i.scan, i.truth()) for i in fit])
                thresholds.update({"threshold": chosen, "threshold_chosen_on": (
                    f"{len(fit)} training scans with exhaustive labels (in-sample)"),
                    "threshold_table": {f"{t:.2f}": round(f, 4) for t, f in table.items()}})
                candidate.config.metrics.update(thresholds)
            active = Ensemble(parent_cfg, parent_states, device=options.device)
            cases = [Case(i.name, i.scan, i.truth()) for i in test_items]
            reports = {}
            for label, ens in (("candidate", candidate), ("active", active)):
                def eval_progress(done: int, total: int, label: str = label) -> None:
                    if on_progress:
                        on_progress(f"evaluating {label}", done, total)

                # each version at its own thresholds
                reports[label] = evaluation_metrics(evaluate(
                    ens, cases, on_progress=eval_progress, n_cases=len(cases)))
            cand_m, act_m = reports["candidate"], reports["active"]
            decision = gate({k: cand_m["kinds"][k]["f1"] if _has_truth(cand_m["kinds"][k])
                             else None for k in KINDS},
                            {k: act_m["kinds"][k]["f1"] for k in KINDS},
                            tolerance=options.tolerance, mode=options.promote)
            metrics = {**cand_m, **thresholds,
                       "test_split": {"scans": len(test_items), "labels": n_test_labels,
                                      "scan_names": [i.name for i in test_items]},
                       "compared_with": {"version": parent, **act_m},
                       "gate": {**asdict(decision), "summary": decision.summary()}}
            write_metrics(partial, metrics)
            final = models / name
            partial.rename(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

        activated = _register(engine, name=name, directory=final, parent=parent,
                              metrics=metrics, members=len(states), decision=decision,
                              note=note)
        if decision.promote and not activated:
            decision = replace(decision, promote=False)
        log.info("retrained %s from %s: %s", name, parent,
                 "activated" if activated else "kept as a candidate")
        return RetrainResult(version=name, directory=final, parent=parent, activated=activated,
                             decision=decision, candidate=cand_m, active=act_m, data=data,
                             training=training, notes=notes)


def _register(engine: Engine, *, name: str, directory: Path, parent: str,
              metrics: dict[str, Any], members: int, decision: GateDecision,
              note: Note) -> bool:
    """Register the candidate; activate it if the gate said so and the version it was compared
    with is still the active one (``force`` activates regardless). Returns whether it is
    active."""
    with write_transaction(engine) as session:
        current = active_version(session=session)
        activate = decision.promote
        if activate and decision.mode == "auto" and current is not None \
                and current.name != parent:
            note(f"the active version changed from {parent} to {current.name} while training; "
                 f"{name} stays a candidate (activate it with `defectwatch models activate "
                 f"{name}` after checking)")
            activate = False
        register_version(name, session=session, directory=str(directory), parent=parent,
                         metrics=metrics, members=members, activate=activate)
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
