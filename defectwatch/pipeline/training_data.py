"""Training examples: a model-ready image and its class mask, from simulations or labels.

An example lives at the model's pixel size: images are prepared exactly as inference prepares
them (`preprocess.prepare`), so training and inference see the same normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from defectwatch.pipeline.labels import DEFAULT_RADIUS_NM, IGNORE, circle_mask
from defectwatch.pipeline.preprocess import PreprocessParams, flatten, prepare
from defectwatch.pipeline.simulate import BROAD_FAMILIES, SimulatedScan, simulate


@dataclass(frozen=True)
class Example:
    """``image01``: (H, W) float32 in [0, 1]; ``mask``: (H, W) uint8 class index or IGNORE;
    ``source``: the scan it came from (splits are by scan, never by crop)."""

    image01: np.ndarray
    mask: np.ndarray
    source: str


def example_from_points(
    z: np.ndarray,
    *,
    pixel_size_nm: tuple[float, float],
    target_nm: float,
    rows: Sequence[float],
    cols: Sequence[float],
    kinds: Sequence[str],
    ignore: Sequence[bool] | None = None,
    radius_nm: Sequence[float] | None = None,
    source: str = "",
    params: PreprocessParams = PreprocessParams(),
) -> Example:
    """A raw image (ny, nx) plus point labels in its pixels -> an Example at ``target_nm``."""
    image01, valid, mapping = prepare(
        z, pixel_size_nm=pixel_size_nm, target_nm=target_nm, params=params
    )
    base = np.where(valid, 0, IGNORE).astype(np.uint8)
    r, c = mapping.to_resampled(np.asarray(rows, float), np.asarray(cols, float))
    radii = (
        np.asarray(radius_nm, float)
        if radius_nm is not None
        else np.array([DEFAULT_RADIUS_NM[k] for k in kinds], float)
    ) / target_nm
    mask = circle_mask(image01.shape, r, c, kinds, radius_px=radii, ignore=ignore, base=base)
    return Example(image01, mask, source)


def spare_detections(
    mask: np.ndarray,
    rows: Sequence[float] | np.ndarray,
    cols: Sequence[float] | np.ndarray,
    *,
    radius_px: Sequence[float] | np.ndarray | float,
) -> np.ndarray:
    """Positive-unlabelled masks: background pixels (0) within ``radius_px`` of each point
    (``rows, cols``: e.g. confident detections of the parent version that no label marks, in
    the mask's pixels) become IGNORE, so a defect the labeller left out is not taught as
    background; labelled discs and IGNORE stay as they are. (H, W) uint8 in, a copy out."""
    n = len(rows)
    if n == 0:
        return mask.copy()
    near = circle_mask(mask.shape, rows, cols, ["trough"] * n, radius_px=radius_px) > 0
    return np.where(near & (mask == 0), IGNORE, mask).astype(np.uint8)


def exported_render(
    z: np.ndarray, rng: np.random.Generator, params: PreprocessParams = PreprocessParams()
) -> np.ndarray:
    """What a lab's exported picture of a raw image (ny, nx) holds: flattened, sometimes
    smoothed, contrast-stretched with clipped tails, 8-bit, JPEG-compressed; float32 grey
    levels 0-255 (NaN where nothing was acquired). Real frames often reach us only like this
    (the paper's own data are such renders)."""
    flat = flatten(
        z,
        order=params.line_order,
        mask_sigma=params.mask_sigma,
        mask_dilate_px=params.mask_dilate_px,
        passes=params.mask_passes,
    )
    valid = np.isfinite(flat)
    if not valid.any():
        return flat.astype(np.float32)
    filled: np.ndarray = np.where(valid, flat, np.median(flat[valid])).astype(np.float32)
    if rng.random() < 0.5:
        filled = cv2.GaussianBlur(filled, (0, 0), float(rng.uniform(0.3, 1.2)))
    lo, hi = np.percentile(filled[valid], [rng.uniform(0.0, 2.0), 100.0 - rng.uniform(0.0, 2.0)])
    grey = np.clip((filled - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0)
    u8 = np.rint(grey * 255.0).astype(np.uint8)
    _, jpeg = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))])
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    assert decoded is not None  # a JPEG OpenCV just encoded
    out = decoded.astype(np.float32)
    out[~valid] = np.nan
    return out


def example_from_simulation(
    sim: SimulatedScan,
    *,
    target_nm: float,
    source: str = "",
    params: PreprocessParams = PreprocessParams(),
    radius_nm: dict[str, float] | None = None,
    render_rng: np.random.Generator | None = None,
) -> Example:
    """A simulated scan's analysis channel (forward) and truth -> an Example; defects too
    faint to see are IGNORE, not background. With ``render_rng`` the image first goes through
    `exported_render`, as if the lab had sent a picture instead of the .sxm file."""
    z = sim.images[(sim.analysis_channel, "forward")]
    if render_rng is not None:
        z = exported_render(z, render_rng, params)
    t = sim.truth
    return example_from_points(
        z,
        pixel_size_nm=sim.recipe.pixel_size_nm,
        target_nm=target_nm,
        rows=[d.row for d in t],
        cols=[d.col for d in t],
        kinds=[d.kind for d in t],
        ignore=[not d.visible for d in t],
        source=source or f"sim-{sim.recipe.seed}",
        params=params,
        radius_nm=[(radius_nm or DEFAULT_RADIUS_NM)[d.kind] for d in t],
    )


@dataclass(frozen=True)
class SimulationMix:
    """How training scans are drawn: wide on purpose (materials, modes, sizes, pixel sizes)."""

    material_weights: tuple[tuple[str, float], ...] = (("wse2", 0.65), ("mose2", 0.35))
    cafm_share: float = 0.15
    size_nm: tuple[float, float] = (10.0, 100.0)  # log-uniform frame size
    pixel_size_nm: tuple[float, float] = (0.04, 0.25)  # log-uniform source pixel size
    max_model_px: int = 768  # frames larger than this at the model's pixel size are cropped
    artifacts_share: float = 0.9
    density_per_cm2: tuple[float, float] = (1e11, 2e13)  # log-uniform; most crops hold defects
    render_share: float = 0.3  # scans seen as an exported 8-bit JPEG picture (`exported_render`)
    cluster_share: float = 0.0  # STM scans with adsorbate clusters (`simulate(clusters=True)`)
    # scans widened by the broadened families (`simulate(broad=...)`, issue 15); each family is
    # drawn into such a scan with probability `broad_family_p`, so scans see different subsets
    broad_share: float = 0.0
    broad_family_p: float = 0.5
    # families never drawn (leave-one-family-out: train without them, score on them)
    broad_exclude: tuple[str, ...] = ()

    def draw(self, rng: np.random.Generator, *, target_nm: float) -> dict:
        names, weights = zip(*self.material_weights)
        material = str(rng.choice(names, p=np.asarray(weights) / sum(weights)))
        mode = "cafm" if rng.random() < self.cafm_share else "stm"
        lo, hi = np.log(self.size_nm)
        size = float(np.exp(rng.uniform(lo, min(hi, np.log(self.max_model_px * target_nm)))))
        plo, phi = np.log(self.pixel_size_nm)
        px = float(np.exp(rng.uniform(plo, phi)))
        pixels = int(np.clip(round(size / px / 8) * 8, 64, 1024))
        dlo, dhi = np.log(self.density_per_cm2)
        draw = {
            "material": material,
            "mode": mode,
            "size_nm": round(size, 2),
            "pixels": pixels,
            "density_per_cm2": float(np.exp(rng.uniform(dlo, dhi))),
            "artifacts": bool(rng.random() < self.artifacts_share),
        }
        if self.cluster_share > 0:  # drawn only then: mixes without clusters stay as they were
            draw["clusters"] = bool(rng.random() < self.cluster_share)
        if self.broad_share > 0:  # likewise: mixes without broadened scans stay as they were
            picked = rng.random(len(BROAD_FAMILIES)) < self.broad_family_p
            families = tuple(
                f
                for f, on in zip(BROAD_FAMILIES, picked, strict=True)
                if on and f not in self.broad_exclude
            )
            if rng.random() < self.broad_share and families:
                draw["broad"] = families
        return draw


def simulated_examples(
    seeds: Sequence[int],
    *,
    target_nm: float,
    mix: SimulationMix = SimulationMix(),
    params: PreprocessParams = PreprocessParams(),
    radius_nm: dict[str, float] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[Example]:
    """One Example per seed (scan ``seed`` is reproducible on its own)."""
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng([seed, 7919])
        draw = mix.draw(rng, target_nm=target_nm)
        sim = simulate(int(seed), **draw)
        render = rng.random() < mix.render_share
        yield example_from_simulation(
            sim,
            target_nm=target_nm,
            params=params,
            source=f"sim-{seed}",
            radius_nm=radius_nm,
            render_rng=rng if render else None,
        )
        if on_progress:
            on_progress(i + 1, len(seeds))
