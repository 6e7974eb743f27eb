"""Training an ensemble the paper's way, with AtomAI's traps handled.

Each member: an ``atomai.nets.Unet`` from its own seed, cross-entropy (IGNORE pixels excluded),
Adam 1e-3, random crops of the examples (no flips or rotations by default), the weights of the
last iterates averaged, then BatchNorm statistics recomputed for the averaged weights (AtomAI's
``swa=True`` skips that step). Inputs are the examples' ``image01``: normalised per image exactly
as inference normalises them. Reproducible from ``seed`` on one device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from defectwatch.pipeline.labels import IGNORE
from defectwatch.pipeline.model import UnetSpec, build_member, resolve_device  # noqa: F401  (re-exported)
from defectwatch.pipeline.training_data import Example

log = logging.getLogger(__name__)

# on_progress(member, iteration, iterations, loss): member counts from 0
TrainingProgress = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class TrainingRecipe:
    """The paper's recipe as the default; ``iterations`` counts mini-batches per member."""

    members: int = 10
    iterations: int = 500
    batch_size: int = 4
    crop_px: int = 256
    learning_rate: float = 1e-3
    average_last: float = 0.2  # share of the last iterations whose weights are averaged
    bn_batches: int = 16  # batches used to recompute BatchNorm statistics after averaging
    flips: bool = False
    seed: int = 0
    # forward passes under bf16 autocast (weights, optimiser and BatchNorm statistics stay
    # float32): ~2x faster per step on CPUs with AMX / AVX512-BF16, several times slower on
    # CPUs without them
    bf16: bool = False
    # share of every mini-batch drawn from the rehearsal examples (simulated scans from the
    # parent version's own training distribution) when fine-tuning: 0 without rehearsal
    rehearsal_share: float = 0.0
    # share of the training scans each member draws its crops from (its own seeded subset, so
    # members see different scans: diversity is what an ensemble is for); 1: every member all
    member_scans_share: float = 1.0
    # share of the lab's crops centred (give or take a quarter crop) on a labelled defect, its
    # kind drawn uniformly among the kinds labelled: rare kinds (a night's 40 peaks against 300
    # troughs) are seen as often as common ones; 0: crops anywhere, in proportion to area
    label_crop_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingRecipe:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class CropSampler:
    """Random ``crop_px`` squares from examples chosen in proportion to their area; examples
    smaller than a crop are reflect-padded (their mask padded with IGNORE). ``label_share`` of
    the crops (0-1) are instead centred, give or take a quarter crop, on a labelled pixel of a
    class drawn uniformly among the labelled classes (rare classes seen as often as common
    ones); with 0 no extra random numbers are drawn, so earlier recipes are reproduced."""

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        crop_px: int,
        rng: np.random.Generator,
        flips: bool = False,
        label_share: float = 0.0,
    ):
        if not examples:
            raise ValueError("no training examples")
        if not 0.0 <= label_share <= 1.0:
            raise ValueError(f"label crop share must lie in [0, 1], got {label_share!r}")
        self.examples = [self._pad(e, crop_px) for e in examples]
        areas = np.array([e.image01.size for e in self.examples], float)
        self.p = areas / areas.sum()
        self.crop = crop_px
        self.rng = rng
        self.flips = flips
        self.label_share = label_share
        # per class (1, 2, ...): (example index, row, col) of every labelled pixel
        self.labelled: dict[int, np.ndarray] = {}
        if label_share > 0:
            found: dict[int, list[np.ndarray]] = {}
            for i, e in enumerate(self.examples):
                for cls in np.unique(e.mask):
                    if cls <= 0 or cls == IGNORE:
                        continue
                    r, c = np.nonzero(e.mask == cls)
                    found.setdefault(int(cls), []).append(
                        np.stack([np.full(r.size, i), r, c], axis=1)
                    )
            self.labelled = {k: np.concatenate(v) for k, v in sorted(found.items())}

    def _origin(self) -> tuple[Example, int, int]:
        """A crop's example and top-left corner: around a labelled pixel of a uniformly drawn
        class (``label_share`` of the time, when any is labelled), else anywhere."""
        if self.labelled and self.rng.random() < self.label_share:
            classes = list(self.labelled)
            pts = self.labelled[classes[int(self.rng.integers(len(classes)))]]
            i, pr, pc = (int(v) for v in pts[int(self.rng.integers(len(pts)))])
            e = self.examples[i]
            h, w = e.image01.shape
            jitter = self.crop // 4
            r = pr - self.crop // 2 + int(self.rng.integers(-jitter, jitter + 1))
            c = pc - self.crop // 2 + int(self.rng.integers(-jitter, jitter + 1))
            return e, int(np.clip(r, 0, h - self.crop)), int(np.clip(c, 0, w - self.crop))
        e = self.examples[self.rng.choice(len(self.examples), p=self.p)]
        h, w = e.image01.shape
        r = int(self.rng.integers(0, h - self.crop + 1))
        c = int(self.rng.integers(0, w - self.crop + 1))
        return e, r, c

    @staticmethod
    def _pad(e: Example, crop: int) -> Example:
        h, w = e.image01.shape
        ph, pw = max(0, crop - h), max(0, crop - w)
        if ph == 0 and pw == 0:
            return e
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        return Example(
            np.pad(e.image01, pad, mode="reflect"),
            np.pad(e.mask, pad, constant_values=IGNORE),
            e.source,
        )

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, 1, crop, crop) float32 images and (n, crop, crop) int64 targets."""
        xs = np.empty((n, 1, self.crop, self.crop), np.float32)
        ys = np.empty((n, self.crop, self.crop), np.int64)
        for i in range(n):
            e, r, c = self._origin()
            img = e.image01[r : r + self.crop, c : c + self.crop]
            msk = e.mask[r : r + self.crop, c : c + self.crop]
            if self.flips:
                k = int(self.rng.integers(0, 4))
                img, msk = np.rot90(img, k), np.rot90(msk, k)
            xs[i, 0] = img
            ys[i] = msk
        ys[ys == IGNORE] = -100  # torch's ignore_index
        return xs, ys


class MixedSampler:
    """Mini-batches of which ``round(share * n)`` crops come from ``rehearsal`` (simulated
    scans the parent version was trained on: it keeps what it knew) and the rest from the
    lab's ``examples``; plain `CropSampler` batches when ``rehearsal`` is empty."""

    def __init__(
        self,
        examples: Sequence[Example],
        rehearsal: Sequence[Example],
        *,
        share: float,
        crop_px: int,
        rng: np.random.Generator,
        flips: bool = False,
        label_share: float = 0.0,
    ):
        if not 0.0 <= share < 1.0:
            raise ValueError(f"rehearsal share must lie in [0, 1), got {share!r}")
        self.lab = CropSampler(
            examples, crop_px=crop_px, rng=rng, flips=flips, label_share=label_share
        )
        self.sim = (
            CropSampler(rehearsal, crop_px=crop_px, rng=rng, flips=flips)
            if rehearsal and share > 0
            else None
        )
        self.share = share

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, 1, crop, crop) float32 images and (n, crop, crop) int64 targets."""
        n_sim = 0 if self.sim is None else min(n - 1, round(self.share * n))
        if n_sim <= 0:
            return self.lab.batch(n)
        xl, yl = self.lab.batch(n - n_sim)
        xs, ys = self.sim.batch(n_sim)  # type: ignore[union-attr]
        return np.concatenate([xl, xs]), np.concatenate([yl, ys])


# on_checkpoint(step, state): a member's weights (BatchNorm recomputed) after ``step`` batches
Checkpoint = Callable[[int, dict[str, Any]], None]


def train_member(
    examples: Sequence[Example],
    *,
    spec: UnetSpec,
    recipe: TrainingRecipe,
    member: int = 0,
    device: str = "auto",
    init_state: dict | None = None,
    on_progress: TrainingProgress | None = None,
    rehearsal: Sequence[Example] = (),
    checkpoints: Sequence[int] = (),
    on_checkpoint: Checkpoint | None = None,
) -> dict[str, Any]:
    """Train one member (seed ``recipe.seed + member``) -> its averaged state dict (CPU).

    ``rehearsal``: examples mixed into every mini-batch (``recipe.rehearsal_share`` of it);
    ``checkpoints``: steps after which ``on_checkpoint(step, state)`` receives a copy of the
    current (not averaged) weights with BatchNorm statistics recomputed for them, e.g. to
    choose the number of steps on a validation split."""
    import copy

    import torch
    from torch.optim.swa_utils import AveragedModel

    dev = resolve_device(device)
    seed = recipe.seed + member
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 104729])
    if recipe.member_scans_share < 1.0 and len(examples) > 1:
        k = max(1, int(round(recipe.member_scans_share * len(examples))))
        chosen = np.random.default_rng([seed, 15485863]).choice(len(examples), k, replace=False)
        examples = [examples[i] for i in sorted(chosen)]
    model = build_member(spec)
    if init_state is not None:
        model.load_state_dict(init_state)
    # channels-last: these small convolutions train about twice as fast in it on CPU
    model.to(dev).train()
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    sampler = MixedSampler(
        examples,
        rehearsal,
        share=recipe.rehearsal_share,
        crop_px=recipe.crop_px,
        rng=rng,
        flips=recipe.flips,
        label_share=recipe.label_crop_share,
    )
    marks = {int(c) for c in checkpoints}
    start_avg = int(round(recipe.iterations * (1.0 - recipe.average_last)))
    averaged = AveragedModel(model)
    n_avg = 0
    for it in range(recipe.iterations):
        xs, ys = sampler.batch(recipe.batch_size)
        x = torch.from_numpy(xs).to(dev).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(ys).to(dev)
        if bool((y == -100).all()):
            continue
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=recipe.bf16):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        opt.step()
        if it >= start_avg:
            averaged.update_parameters(model)
            n_avg += 1
        if on_progress:
            on_progress(member, it + 1, recipe.iterations, float(loss.detach()))
        if on_checkpoint is not None and it + 1 in marks:
            snap = copy.deepcopy(model)
            _recompute_batchnorm(snap, sampler, recipe, dev)
            on_checkpoint(
                it + 1,
                {
                    k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                    for k, v in snap.state_dict().items()
                },
            )
            model.train()
    final = averaged.module if n_avg else model
    _recompute_batchnorm(final, sampler, recipe, dev)
    return {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in final.state_dict().items()
    }


def _recompute_batchnorm(
    model, sampler: CropSampler | MixedSampler, recipe: TrainingRecipe, dev
) -> None:
    """Running BatchNorm statistics for the (averaged) weights: a cumulative average over
    ``recipe.bn_batches`` fresh training batches."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for _ in range(recipe.bn_batches):
            xs, _ = sampler.batch(recipe.batch_size)
            model(torch.from_numpy(xs).to(dev).contiguous(memory_format=torch.channels_last))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def train_ensemble(
    examples: Sequence[Example],
    *,
    spec: UnetSpec = UnetSpec(),
    recipe: TrainingRecipe = TrainingRecipe(),
    device: str = "auto",
    init_states: Sequence[dict] | None = None,
    on_progress: TrainingProgress | None = None,
    on_member: Callable[[int, dict[str, Any]], None] | None = None,
    rehearsal: Sequence[Example] = (),
) -> list[dict[str, Any]]:
    """``recipe.members`` members, each from its own seed -> their state dicts (CPU).

    ``init_states``: member k starts from ``init_states[k % len]`` (fine-tuning);
    ``rehearsal``: see `train_member`; ``on_member(k, state)`` is called as each member
    finishes (e.g. to checkpoint it).
    """
    states = []
    for k in range(recipe.members):
        init = init_states[k % len(init_states)] if init_states else None
        states.append(
            train_member(
                examples,
                spec=spec,
                recipe=recipe,
                member=k,
                device=device,
                init_state=init,
                on_progress=on_progress,
                rehearsal=rehearsal,
            )
        )
        if on_member:
            on_member(k, states[-1])
        log.info("member %d/%d trained", k + 1, recipe.members)
    return states
