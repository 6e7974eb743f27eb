"""A classical baseline detector to compare the ensemble with: flatten + Laplacian-of-Gaussian
blobs, peaks on the image and troughs on its negative.

The blob search is `skimage.feature.blob_log`'s (scale-normalised LoG cube over linearly spaced
sigmas, local maxima in 3 x 3 x 3, overlapping blobs pruned), computed here once per image for
both signs and keeping each blob's response; where two blobs overlap the stronger one stays
(blob_log keeps the larger). The tests check it finds what blob_log finds.

The flattened image (plane + line fit with strong features masked, as `preprocess.flatten`) is
put in units of its robust spread (1.4826 MAD), so thresholds mean the same on every scan: a
threshold is the least scale-normalised LoG response ``-s^2 * LoG_s(image)`` of a blob, and a
Gaussian bump of amplitude A spreads at the matching scale gives a response of A / 2.

What it returns, as `defectwatch.domain.Defect`:

- ``confidence = r / (r + 1)`` with ``r`` the blob's response (robust-spread units): monotone in
  the response, so AP ranks by response, 0.5 at r = 1; it is not a probability and does not
  depend on the threshold, so confidences compare across scans and settings;
- ``uncertainty = NaN``: a single classical detector has no ensemble spread; NaN says "not
  applicable" rather than claiming certainty (write it as null in JSON);
- ``area_nm2`` = pi (sqrt(2) sigma)^2, the blob's LoG radius.

`tune_baseline` grid-searches the LoG scale range and a threshold per kind on labelled cases,
maximising the mean over kinds of the pooled object F1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from defectwatch.domain import KINDS, Defect, Scan
from defectwatch.pipeline.metrics import Label, object_scores
from defectwatch.pipeline.preprocess import flatten, robust_sigma

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineParams:
    """Every parameter of the baseline (thresholds in robust-spread units, scales in nm)."""

    trough_threshold: float = 1.0
    peak_threshold: float = 1.0
    min_sigma_nm: float = 0.4  # LoG scales; a blob of radius R answers best at sigma R / sqrt(2)
    max_sigma_nm: float = 1.6
    num_sigma: int = 5
    overlap: float = 0.5  # blob_log's pruning of overlapping blobs
    flatten: bool = True  # False when the image is already flattened (e.g. a render)
    line_order: int = 2

    def threshold(self, kind: str) -> float:
        return self.trough_threshold if kind == "trough" else self.peak_threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BaselineParams:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown baseline parameters {sorted(unknown)}")
        return cls(**values)


def normalise(image: np.ndarray, *, params: BaselineParams = BaselineParams()) -> np.ndarray:
    """(ny, nx) raw image -> flattened float64 in robust-spread units around its median, with
    pixels that were not acquired (NaN) set to 0."""
    z = np.asarray(image, dtype=np.float32)
    if params.flatten:
        z = flatten(z, order=params.line_order)
    z = z.astype(np.float64)
    finite = np.isfinite(z)
    if not finite.any():
        return np.zeros(z.shape)
    z = z - np.median(z[finite])
    s = robust_sigma(z)
    if not s > 0:
        s = float(np.std(z[finite])) or 1.0
    z /= s
    z[~finite] = 0.0
    return z


def _sigmas_px(params: BaselineParams, pixel_size_nm: tuple[float, float]) -> np.ndarray:
    px = 0.5 * (pixel_size_nm[0] + pixel_size_nm[1])
    lo = max(params.min_sigma_nm / px, 0.5)
    hi = max(params.max_sigma_nm / px, lo)
    return np.linspace(lo, hi, max(int(params.num_sigma), 1))


def scale_space(z: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """(S, ny, nx) float32 scale-normalised LoG responses ``-s^2 * LoG_s(z)`` (bright blobs
    positive), the cube `skimage.feature.blob_log` builds.

    Computed in Fourier space on the image mirrored by 4 sigma at its edges (as scipy's
    ``reflect`` mode), one forward transform for all scales: several times faster than
    spatial filtering at the large scales real defects need, and equal to it to within the
    sampling of the kernel.
    """
    from scipy import fft

    z = np.asarray(z, dtype=np.float64)
    ny, nx = z.shape
    pad = int(math.ceil(4.0 * float(np.max(sigmas))))
    zp = np.pad(z, pad, mode="symmetric")
    shape = zp.shape
    spectrum = fft.rfft2(zp)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    k2 = ky**2 + kx**2
    cube = np.empty((len(sigmas), ny, nx), dtype=np.float32)
    for i, s in enumerate(np.asarray(sigmas, dtype=float)):
        transfer = 4.0 * math.pi**2 * k2 * s**2 * np.exp(-2.0 * math.pi**2 * s**2 * k2)
        out = fft.irfft2(spectrum * transfer, s=shape)
        cube[i] = out[pad : pad + ny, pad : pad + nx]
    return cube


def _local_max_3d(cube: np.ndarray) -> np.ndarray:
    """Maximum over each voxel's 3 x 3 x 3 neighbourhood (edges repeated)."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    flat = np.stack([cv2.dilate(c, kernel, borderType=cv2.BORDER_REPLICATE) for c in cube])
    out = flat.copy()
    out[1:] = np.maximum(out[1:], flat[:-1])
    out[:-1] = np.maximum(out[:-1], flat[1:])
    return out


def _circle_overlap(r1: np.ndarray, r2: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Intersection area of circles of radii r1, r2 at distance d over the smaller's area."""
    r1, r2, d = np.broadcast_arrays(
        np.asarray(r1, float), np.asarray(r2, float), np.asarray(d, float)
    )
    small = np.minimum(r1, r2)
    out = np.zeros(d.shape)
    inside = d <= np.abs(r1 - r2)
    out[inside] = 1.0
    part = ~inside & (d < r1 + r2)
    if part.any():
        a, b, dd = r1[part], r2[part], d[part]
        c1 = np.clip((dd**2 + a**2 - b**2) / (2 * dd * a), -1, 1)
        c2 = np.clip((dd**2 + b**2 - a**2) / (2 * dd * b), -1, 1)
        area = (
            a**2 * np.arccos(c1)
            + b**2 * np.arccos(c2)
            - 0.5
            * np.sqrt(np.clip((-dd + a + b) * (dd + a - b) * (dd - a + b) * (dd + a + b), 0, None))
        )
        out[part] = area / (np.pi * small[part] ** 2)
    return out


def blobs_from_cube(
    cube: np.ndarray, sigmas: np.ndarray, *, threshold: float, overlap: float = 0.5
) -> np.ndarray:
    """(K, 4) rows ``row, col, sigma_px, response``, strongest first: the local maxima of the
    scale space (3 x 3 x 3 neighbourhood, as `skimage.feature.blob_log`) above ``threshold``,
    with a blob dropped when more than ``overlap`` of the smaller one's area (radius sqrt(2)
    sigma) lies inside a stronger kept blob."""
    cube = np.ascontiguousarray(cube, dtype=np.float32)
    idx = np.argwhere((cube > threshold) & (cube == _local_max_3d(cube)))
    if len(idx) == 0:
        return np.zeros((0, 4))
    resp = cube[idx[:, 0], idx[:, 1], idx[:, 2]].astype(float)
    order = np.argsort(-resp, kind="stable")
    idx, resp = idx[order], resp[order]
    rows, cols = idx[:, 1].astype(float), idx[:, 2].astype(float)
    radii = np.sqrt(2.0) * np.asarray(sigmas, dtype=float)[idx[:, 0]]
    keep = np.ones(len(idx), dtype=bool)
    if overlap < 1.0 and len(idx) > 1:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.stack([rows, cols], axis=1))
        pairs = tree.query_pairs(2.0 * float(radii.max()), output_type="ndarray")
        if len(pairs):
            pairs = np.sort(pairs, axis=1)  # (stronger, weaker): blobs are sorted strongest first
            i, j = pairs[:, 0], pairs[:, 1]
            d = np.hypot(rows[i] - rows[j], cols[i] - cols[j])
            pairs = pairs[_circle_overlap(radii[i], radii[j], d) > overlap]
            pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
            starts = np.searchsorted(pairs[:, 0], np.arange(len(idx) + 1))
            for a in np.unique(pairs[:, 0]):
                if keep[a]:
                    keep[pairs[starts[a] : starts[a + 1], 1]] = False
    out = np.stack([rows, cols, radii / np.sqrt(2.0), resp], axis=1)
    return out[keep]


def _valid2d(valid: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    v = np.asarray(valid, dtype=bool)
    if v.ndim == 1:
        v = np.repeat(v[:, None], shape[1], axis=1)
    if v.shape != shape:
        raise ValueError(f"valid {v.shape} does not fit the image {shape}")
    return v


def _to_defects(
    blobs: np.ndarray, kind: str, pixel_size_nm: tuple[float, float], valid: np.ndarray
) -> list[Defect]:
    px, py = pixel_size_nm
    out = []
    for row, col, sigma, response in blobs:
        r, c = int(row), int(col)
        if not valid[r, c]:
            continue
        radius_nm2 = 2.0 * sigma**2 * px * py
        out.append(
            Defect(
                float(row),
                float(col),
                float((col + 0.5) * px),
                float((row + 0.5) * py),
                kind,
                float(response / (response + 1.0)),
                float("nan"),
                float(math.pi * radius_nm2),
            )
        )
    return out


def detect_baseline(
    image: np.ndarray,
    *,
    pixel_size_nm: tuple[float, float],
    params: BaselineParams = BaselineParams(),
    valid: np.ndarray | None = None,
) -> list[Defect]:
    """Troughs and peaks found as LoG blobs, sorted by confidence (highest first).

    ``image``: (ny, nx) raw heights (any unit; NaN where not acquired); ``pixel_size_nm``:
    (x, y); ``valid``: (ny, nx) or (ny,) bool, False where nothing was acquired.
    """
    z = normalise(image, params=params)
    valid2d = _valid2d(valid, z.shape) & np.isfinite(np.asarray(image, dtype=np.float32))
    sigmas = _sigmas_px(params, pixel_size_nm)
    cube = scale_space(z, sigmas)
    found: list[Defect] = []
    for kind, sign in (("peak", 1.0), ("trough", -1.0)):
        blobs = blobs_from_cube(
            sign * cube, sigmas, threshold=params.threshold(kind), overlap=params.overlap
        )
        found += _to_defects(blobs, kind, pixel_size_nm, valid2d)
    found.sort(key=lambda d: -d.confidence)
    return found


def detect_baseline_scan(scan: Scan, *, params: BaselineParams = BaselineParams()) -> list[Defect]:
    """`detect_baseline` on a scan's data, pixel size and acquired rows."""
    return detect_baseline(
        scan.data,
        pixel_size_nm=(scan.pixel_size_x_nm, scan.pixel_size_y_nm),
        params=params,
        valid=scan.acquired_rows,
    )


@dataclass(frozen=True)
class BaselineCase:
    """One labelled image to tune on: raw (ny, nx) image, its pixel size (x, y) nm, its labels
    in nm (objects with ``x_nm, y_nm, kind, visible``), and the acquired pixels."""

    image: np.ndarray
    pixel_size_nm: tuple[float, float]
    labels: Sequence[Label]
    valid: np.ndarray | None = None
    name: str = ""


@dataclass(frozen=True)
class TuneResult:
    """The best parameters, their mean pooled F1 over kinds, the F1 per kind, and every
    setting tried (``table``: rows of sigma range, kind, threshold, tp, fp, fn, f1)."""

    params: BaselineParams
    score: float
    f1: dict[str, float]
    table: tuple[dict[str, float | str], ...]


DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.geomspace(0.1, 10.0, 16), 3))
DEFAULT_SIGMA_RANGES_NM = ((0.3, 1.0), (0.4, 1.6), (0.6, 2.5), (1.0, 4.0), (1.5, 6.0))


def tune_baseline(
    cases: Sequence[BaselineCase],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    sigma_ranges_nm: Sequence[tuple[float, float]] = DEFAULT_SIGMA_RANGES_NM,
    radius_nm: float = 1.0,
    base: BaselineParams = BaselineParams(),
    kinds: Sequence[str] = KINDS,
    on_progress: Callable[[int, int], None] | None = None,
) -> TuneResult:
    """Grid search of the LoG scale range and a threshold per kind, maximising the mean over
    ``kinds`` of the object F1 pooled over ``cases`` (matching within ``radius_nm``).

    Blobs are found once per case and scale range at the lowest threshold; higher thresholds
    keep those whose response reaches them (the same as running `blob_log` again, except that
    overlap pruning saw the weaker blobs too). ``on_progress(done, total)`` is called after each
    case and scale range.
    """
    if not cases:
        raise ValueError("tune_baseline needs at least one labelled case")
    ths = np.sort(np.asarray(thresholds, dtype=float))
    normalised = [normalise(c.image, params=base) for c in cases]
    total, done = len(sigma_ranges_nm) * len(cases), 0
    table: list[dict[str, float | str]] = []
    best: tuple[float, BaselineParams, dict[str, float]] | None = None
    for lo, hi in sigma_ranges_nm:
        params = replace(base, min_sigma_nm=float(lo), max_sigma_nm=float(hi))
        counts = {k: np.zeros((len(ths), 3), dtype=np.int64) for k in kinds}
        for case, z in zip(cases, normalised):
            valid2d = _valid2d(case.valid, z.shape) & np.isfinite(
                np.asarray(case.image, dtype=np.float32)
            )
            sigmas = _sigmas_px(params, case.pixel_size_nm)
            cube = scale_space(z, sigmas)
            for kind in kinds:
                sign = 1.0 if kind == "peak" else -1.0
                blobs = blobs_from_cube(
                    sign * cube, sigmas, threshold=float(ths[0]), overlap=params.overlap
                )
                # strongest first, so each threshold keeps a prefix of the detections
                preds = _to_defects(blobs, kind, case.pixel_size_nm, valid2d)
                responses = blobs[valid2d[blobs[:, 0].astype(int), blobs[:, 1].astype(int)], 3]
                for i, th in enumerate(ths):
                    n_keep = int(np.count_nonzero(responses >= th))
                    s = object_scores(
                        preds[:n_keep], case.labels, radius_nm=radius_nm, kinds=(kind,)
                    )[kind]
                    counts[kind][i] += (s.tp, s.fp, s.fn)
            done += 1
            if on_progress is not None:
                on_progress(done, total)
        best_f1: dict[str, float] = {}
        best_th: dict[str, float] = {}
        for kind in kinds:
            f1s = []
            for th, (tp, fp, fn) in zip(ths, counts[kind]):
                f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
                f1s.append(f1)
                table.append(
                    {
                        "min_sigma_nm": float(lo),
                        "max_sigma_nm": float(hi),
                        "kind": kind,
                        "threshold": float(th),
                        "tp": int(tp),
                        "fp": int(fp),
                        "fn": int(fn),
                        "f1": float(f1),
                    }
                )
            j = int(np.argmax(f1s))  # the lowest threshold among ties
            best_f1[kind], best_th[kind] = f1s[j], float(ths[j])
        score = float(np.mean([best_f1[k] for k in kinds]))
        chosen: dict[str, Any] = {f"{k}_threshold": best_th[k] for k in kinds}
        candidate = replace(params, **chosen)
        log.debug("baseline sigma %.2f-%.2f nm: F1 %s", lo, hi, best_f1)
        if best is None or score > best[0]:
            best = (score, candidate, best_f1)
    assert best is not None
    log.info("baseline tuned on %d cases: %s, mean F1 %.3f", len(cases), best[1], best[0])
    return TuneResult(best[1], best[0], best[2], tuple(table))
