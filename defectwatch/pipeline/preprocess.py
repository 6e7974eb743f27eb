"""Preprocessing as in Smalley et al.: plane, quadratic line flattening, gaussian, CLAHE.

Every function is pure and NaN-aware: pixels that are NaN (lines not acquired in an aborted
scan) and pixels in an optional ``exclude`` mask take no part in any fit, and stay NaN.
`PreprocessParams` records every parameter so a model version can pin them in its config.

Order used by `prepare`: flatten on the scan's own lines (plane, line fit, mask strong features,
fit again) -> resample to the model's pixel size -> gaussian -> CLAHE -> [0, 1] float32.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class PreprocessParams:
    """Every parameter of `prepare`; stored in a model's config.json."""

    line_order: int = 2  # polynomial order of the line-by-line fit (2 = the paper's quadratic)
    mask_sigma: float = 3.0  # strong features beyond this many robust sigmas are excluded
    mask_dilate_px: int = 3  # ... grown by this many pixels; mask_sigma <= 0 turns masking off
    mask_passes: int = 3  # flatten, mask, flatten again (passes of masking)
    smooth_sigma_px: float = 1.0  # gaussian sigma in model pixels; 0 turns smoothing off
    clip_percentiles: tuple[float, float] = (0.1, 99.9)  # robust range mapped to CLAHE input
    clahe_clip_limit: float = 2.0  # OpenCV clipLimit (the paper: 2.0); 0 turns CLAHE off
    clahe_tiles: int = 8  # tiles per side (the paper: 8x8) ...
    # ... or more, so that no tile is wider than this many pixels (0: never more). The shipped
    # model trained on frames of <= 768 model pixels, i.e. tiles of <= 96 px; with 8 tiles a
    # 2048 px frame got 256 px tiles, too flat a contrast: trough recall fell from 0.97 to 0.06
    clahe_max_tile_px: int = 96
    clahe_bits: int = 16  # CLAHE on 8- or 16-bit images (the paper used 8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessParams:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown preprocessing parameters {sorted(unknown)}")
        out = dict(values)
        # a version written before the key existed was trained with a fixed tile count
        out.setdefault("clahe_max_tile_px", 0)
        if "clip_percentiles" in out:
            out["clip_percentiles"] = tuple(out["clip_percentiles"])
        return cls(**out)


@dataclass(frozen=True)
class Resampling:
    """Exact pixel-centre mapping between an original frame and its resampled copy.

    A resampled pixel centre ``r`` lies at original coordinate ``(r + 0.5) * scale - 0.5``
    (OpenCV's convention), with ``scale = original size / resampled size`` per axis.
    """

    shape_in: tuple[int, int]  # (ny, nx) of the original
    shape_out: tuple[int, int]  # (ny, nx) after resampling

    @property
    def scale_row(self) -> float:
        return self.shape_in[0] / self.shape_out[0]

    @property
    def scale_col(self) -> float:
        return self.shape_in[1] / self.shape_out[1]

    def to_original(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Resampled (row, col) -> original (row, col), float pixels."""
        rows = (np.asarray(rows, dtype=float) + 0.5) * self.scale_row - 0.5
        cols = (np.asarray(cols, dtype=float) + 0.5) * self.scale_col - 0.5
        return rows, cols

    def to_resampled(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Original (row, col) -> resampled (row, col), float pixels."""
        rows = (np.asarray(rows, dtype=float) + 0.5) / self.scale_row - 0.5
        cols = (np.asarray(cols, dtype=float) + 0.5) / self.scale_col - 0.5
        return rows, cols


# rows per block when a frame is summed or evaluated in float64: 256 x 2048 px = 4 MB per
# temporary, whatever the frame's size
_BLOCK_ROWS = 256


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency; without it BLAS keeps its threads
        return None
    return ThreadpoolController()


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run the thin matrix products of the line sums (k = 3-6 columns) on one BLAS thread:
    a BLAS thread team gains nothing on them and, on a busy machine, waits for its threads
    (measured 3-4x slower with two threads while other processes held the cores)."""
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


def _valid(z: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    valid = np.isfinite(z)
    if exclude is not None:
        valid &= ~exclude
    return valid


def _axis(n: int) -> np.ndarray:
    """Pixel centres mapped onto [-1, 1] (the first pixel at -1; a single pixel at -1)."""
    return np.arange(n, dtype=np.float64) / max(n - 1, 1) * 2 - 1


@dataclass(frozen=True)
class _LineSums:
    """Per line (ny rows): ``s[r, k] = sum of x**k`` and ``t[r, k] = sum of z * x**k`` over the
    line's fitted pixels, ``finite[r]``: its count of finite pixels. float64."""

    s: np.ndarray  # (ny, 2 * order + 2)
    t: np.ndarray  # (ny, order + 2)
    finite: np.ndarray  # (ny,)


def _line_sums(z: np.ndarray, *, order: int, exclude: np.ndarray | None) -> _LineSums:
    """The sums of every line's normal equations, in one pass over ``z`` (ny, nx), any dtype.

    Blocks of rows go through float64 (BLAS matrix products): no per-line Python and no
    temporary larger than `_BLOCK_ROWS` lines. Powers run to ``2 * order + 1`` so a plane
    (1, x, y) can be fitted from the same sums for any ``order`` >= 0.
    """
    ny, nx = z.shape
    x = _axis(nx)
    powers = np.stack([x**k for k in range(max(2 * order + 2, 3))], axis=1)  # (nx, ...)
    s = np.empty((ny, powers.shape[1]))
    t = np.empty((ny, order + 2))
    finite = np.empty(ny)
    moments = np.asfortranarray(powers[:, : order + 2])
    with _one_blas_thread():
        for r0 in range(0, ny, _BLOCK_ROWS):
            r1 = min(r0 + _BLOCK_ROWS, ny)
            block = z[r0:r1].astype(np.float64)
            ok = np.isfinite(block)
            finite[r0:r1] = ok.sum(axis=1)
            if exclude is not None:
                ok &= ~exclude[r0:r1]
            if ok.all():
                s[r0:r1] = powers.sum(axis=0)
            else:
                block[~ok] = 0.0
                s[r0:r1] = ok.astype(np.float64) @ powers
            t[r0:r1] = block @ moments
    return _LineSums(s, t, finite)


def _plane_from_sums(sums: _LineSums) -> np.ndarray | None:
    """Least-squares plane ``(a, b, c)`` of ``a + b x + c y`` from line sums (None: < 3 px)."""
    ny = sums.s.shape[0]
    y = _axis(ny)
    n, sx, sxx = sums.s[:, 0], sums.s[:, 1], sums.s[:, 2]
    tz, txz = sums.t[:, 0], sums.t[:, 1]
    if n.sum() < 3:
        return None
    ata = np.array(
        [
            [n.sum(), sx.sum(), (y * n).sum()],
            [sx.sum(), sxx.sum(), (y * sx).sum()],
            [(y * n).sum(), (y * sx).sum(), (y * y * n).sum()],
        ]
    )
    atz = np.array([tz.sum(), txz.sum(), (y * tz).sum()])
    # minimum-norm solution, as lstsq on the pixels gives when the plane is underdetermined
    # (all valid pixels on one line or one column)
    return np.linalg.lstsq(ata, atz, rcond=None)[0]


def _line_polynomials(
    z: np.ndarray, *, order: int, exclude: np.ndarray | None, plane: bool
) -> np.ndarray:
    """Per line, the polynomial (ny, max(order, 1) + 1) in x subtracted by
    ``flatten_lines(plane_correct(z, exclude=exclude), order=order, exclude=exclude)``:
    the plane (when ``plane``) plus the line's own fit of what the plane leaves."""
    ny, nx = z.shape
    k = order + 1
    sums = _line_sums(z, order=order, exclude=exclude)
    abc = None
    if plane:
        abc = _plane_from_sums(sums)
        if abc is None and exclude is not None:  # too few unmasked pixels: all finite ones
            abc = _plane_from_sums(_line_sums(z, order=order, exclude=None))
    out = np.zeros((ny, max(order, 1) + 1))
    t = sums.t[:, :k].copy()
    if abc is not None:
        a, b, c = abc
        offset = a + c * _axis(ny)  # the plane on each line: offset + b x
        out[:, 0], out[:, 1] = offset, b
        # the line sums of (z - plane)
        t -= offset[:, None] * sums.s[:, :k] + b * sums.s[:, 1 : k + 1]
    counts = sums.s[:, 0]
    enough = counts >= order + 2
    if enough.any():
        idx = np.add.outer(np.arange(k), np.arange(k))
        ata = sums.s[enough][:, idx] + 1e-12 * np.eye(k)
        out[enough, :k] += np.linalg.solve(ata, t[enough][..., None])[..., 0]
    # lines too short for the fit: their median (of the unmasked pixels, else of the finite)
    short = np.flatnonzero(~enough & (sums.finite > 0))
    if short.size:
        x = _axis(nx)
        for r in short:
            line = z[r].astype(np.float64) - (out[r, 0] + out[r, 1] * x)
            keep = np.isfinite(line)
            if exclude is not None and (keep & ~exclude[r]).any():
                keep &= ~exclude[r]
            out[r, 0] += np.median(line[keep])
    return out


def _subtract_lines(z: np.ndarray, poly: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``z - poly(x)`` line by line, evaluated in float64 blocks, stored float32 (``out``)."""
    ny, nx = z.shape
    if out is None:
        out = np.empty((ny, nx), dtype=np.float32)
    x = _axis(nx)
    basis = np.stack([x**k for k in range(poly.shape[1])])  # (k, nx)
    with _one_blas_thread():
        for r0 in range(0, ny, _BLOCK_ROWS):
            r1 = min(r0 + _BLOCK_ROWS, ny)
            block = z[r0:r1].astype(np.float64)
            block -= poly[r0:r1] @ basis
            out[r0:r1] = block
    return out


def plane_correct(z: np.ndarray, *, exclude: np.ndarray | None = None) -> np.ndarray:
    """Subtract the least-squares plane fitted to the valid pixels. ``z``: (ny, nx).

    Fitted from per-line sums (`_line_sums`): one pass over the frame, no coordinate grids.
    """
    z = np.asarray(z)
    sums = _line_sums(z, order=0, exclude=exclude)
    abc = _plane_from_sums(sums)
    if abc is None and exclude is not None:
        abc = _plane_from_sums(_line_sums(z, order=0, exclude=None))
    if abc is None:
        return z.astype(np.float32)
    a, b, c = abc
    poly = np.stack([a + c * _axis(z.shape[0]), np.full(z.shape[0], b)], axis=1)
    return _subtract_lines(z, poly)


def flatten_lines(
    z: np.ndarray, *, order: int = 2, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Subtract from every line its own polynomial of ``order`` fitted to its valid pixels.

    Lines with too few valid pixels for the fit fall back to subtracting their median; lines
    with none (or only NaN) are left as they are. ``z``: (ny, nx). Every line is fitted at
    once from its sums (closed-form normal equations); returns float32.
    """
    z = np.asarray(z)
    poly = _line_polynomials(z, order=order, exclude=exclude, plane=False)
    return _subtract_lines(z, poly)


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation of the finite values (0 if none)."""
    v = values[np.isfinite(values)]  # a copy: reordered below
    if v.size == 0:
        return 0.0
    med = _median(v)
    np.abs(np.subtract(v, med, out=v), out=v)
    return float(1.4826 * _median(v))


def _median(v: np.ndarray) -> Any:
    """``np.median`` of a 1-D array without NaN, exactly, in a few vectorised passes.

    The middle ranks are bracketed from a sorted sample of 8192 values (a seeded draw, so
    the same every time; ranks +-300 around the middle, ~7 binomial sigmas), the values below
    the bracket counted, and only those inside it partitioned: 2-5x faster than
    introselect over millions of values. A bracket that misses falls back to ``np.median``.
    """
    n = v.size
    if n < 65536:
        return np.median(v)
    m, d = 8192, 300
    sample = np.sort(v[np.random.default_rng(n).integers(0, n, m)])
    k_lo, k_hi = (n - 1) // 2, n // 2
    j = int(round(k_lo / n * m))
    lo, hi = sample[max(j - d, 0)], sample[min(j + d, m - 1)]
    below = int(np.count_nonzero(v < lo))
    inside = v[(v >= lo) & (v <= hi)]
    a, b = k_lo - below, k_hi - below
    if a < 0 or b >= inside.size:
        return np.median(v)
    if a == b:
        return np.partition(inside, a)[a]
    part = np.partition(inside, [a, b])
    return np.mean(part[[a, b]])


def _row_nanmedian(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=1)`` (all-NaN lines: NaN, no warning), one partition for all
    fully finite lines; only lines that are partly NaN take a loop."""
    finite = np.isfinite(a)
    counts = finite.sum(axis=1)
    out = np.full(a.shape[0], np.nan, dtype=np.result_type(a.dtype, np.float32))
    full = counts == a.shape[1]
    if full.all():
        return np.median(a, axis=1)
    if full.any():
        out[full] = np.median(a[full], axis=1, overwrite_input=True)
    for r in np.flatnonzero(~full & (counts > 0)):
        out[r] = np.median(a[r][finite[r]])
    return out


def strong_feature_mask(z: np.ndarray, *, sigma: float = 3.0, dilate_px: int = 3) -> np.ndarray:
    """True where a flattened image departs from its line's median by > ``sigma`` robust sigmas.

    Judged line by line (each line's own spread, floored at half the image's), on an image
    smoothed by one pixel, so a whole line left offset by a poor fit is not itself a feature
    while a deep trough or a tall peak within a line is.
    """
    dev = nan_gaussian(z, sigma_px=1.0)  # float32, NaN where z is; becomes the deviation
    if not np.isfinite(dev).any():
        return np.zeros(z.shape, dtype=bool)
    dev -= _row_nanmedian(dev)[:, None]
    absdev = np.abs(dev)
    row_sigma = 1.4826 * _row_nanmedian(absdev)
    floor = 0.5 * robust_sigma(dev)
    del dev
    row_sigma = np.fmax(np.nan_to_num(row_sigma, nan=floor), floor)
    if not np.any(row_sigma > 0):
        return np.zeros(z.shape, dtype=bool)
    np.nan_to_num(absdev, copy=False, nan=0.0)
    mask = absdev > (sigma * row_sigma)[:, None]
    del absdev
    if dilate_px > 0 and mask.any():
        # dilation by the 3 x 3 cross, ``dilate_px`` times (= scipy's binary_dilation)
        cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
        mask = cv2.dilate(mask.view(np.uint8), cross, iterations=int(dilate_px)).view(bool)
    return mask


def flatten(
    z: np.ndarray,
    *,
    order: int = 2,
    mask_sigma: float = 3.0,
    mask_dilate_px: int = 3,
    passes: int = 3,
) -> np.ndarray:
    """Plane correction + line flattening, re-done with strong features masked out.

    Masking keeps deep troughs and tall peaks from dragging their lines' fits, which would leave
    bright/dark streaks beside them. Returns float32, NaN where ``z`` is NaN.

    The plane and every line's fit come from per-line sums in one pass over ``z`` (float64
    blocks, closed-form normal equations, no per-line Python); a refit with a mask re-sums
    ``z`` under the mask without copying it and overwrites the same float32 result.
    """
    z = np.asarray(z)
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float32)
    out = _subtract_lines(z, _line_polynomials(z, order=order, exclude=None, plane=True))
    if mask_sigma <= 0:
        return out
    for _ in range(max(passes, 0)):
        exclude = strong_feature_mask(out, sigma=mask_sigma, dilate_px=mask_dilate_px)
        # a mask that swallows most of a line would leave it unfitted: cap it per line
        too_much = exclude.mean(axis=1) > 0.6
        exclude[too_much] = False
        poly = _line_polynomials(z, order=order, exclude=exclude, plane=True)
        _subtract_lines(z, poly, out=out)
    return out


def nan_gaussian(z: np.ndarray, *, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing by normalised convolution: NaN pixels neither count nor spread.

    OpenCV's separable float32 blur, mirrored borders (``BORDER_REFLECT``); a frame without
    NaN needs no second blur of the weights (they blur to one everywhere). (ny, nx) float32.
    """
    z = np.asarray(z, dtype=np.float32)
    if sigma_px <= 0:
        return z.copy()
    valid = np.isfinite(z)
    if valid.all():
        out = cv2.GaussianBlur(z, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
        den = _blurred_one(float(sigma_px))
        if den != 1.0:
            np.divide(out, np.float32(den), out=out)
        return out
    num = cv2.GaussianBlur(
        np.where(valid, z, np.float32(0)), (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT
    )
    den = cv2.GaussianBlur(
        valid.view(np.uint8).astype(np.float32), (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(num, den, out=num)
    num[~valid] = np.nan
    return num


@functools.lru_cache(maxsize=16)
def _blurred_one(sigma_px: float) -> float:
    """What OpenCV's float32 blur makes of a frame of ones (its kernel's float32 sum)."""
    ones = np.ones((8, 8), dtype=np.float32)
    return float(cv2.GaussianBlur(ones, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)[4, 4])


def resample(
    z: np.ndarray, *, pixel_size_nm: tuple[float, float], target_nm: float
) -> tuple[np.ndarray, Resampling]:
    """Resample ``z`` (ny, nx) with pixel size ``(x, y)`` nm to square pixels of ``target_nm``.

    Area averaging when shrinking, bicubic when enlarging; NaN lines stay NaN (a resampled pixel
    is NaN when less than half of what it covers was acquired).
    """
    z = np.asarray(z, dtype=np.float32)
    ny, nx = z.shape
    px, py = pixel_size_nm
    out_nx = max(1, int(round(nx * px / target_nm)))
    out_ny = max(1, int(round(ny * py / target_nm)))
    mapping = Resampling((ny, nx), (out_ny, out_nx))
    if (out_ny, out_nx) == (ny, nx):
        return z.copy(), mapping
    shrinking = out_nx * out_ny < nx * ny
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    valid = np.isfinite(z)
    if valid.all():
        return cv2.resize(z, (out_nx, out_ny), interpolation=interp), mapping
    fill = float(_median(z[valid])) if valid.any() else 0.0
    num = cv2.resize(
        np.where(valid, z, fill).astype(np.float32), (out_nx, out_ny), interpolation=interp
    )
    cover = cv2.resize(
        valid.astype(np.float32),
        (out_nx, out_ny),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    num[cover < 0.5] = np.nan
    return num, mapping


def clahe(
    image01: np.ndarray,
    *,
    clip_limit: float = 2.0,
    tiles: int = 8,
    bits: int = 16,
    max_tile_px: int = 0,
) -> np.ndarray:
    """OpenCV CLAHE on an image already in [0, 1] (no NaN); returns float32 in [0, 1].

    ``tiles`` per side, or more along an axis where a tile would be wider than
    ``max_tile_px`` pixels (when > 0), so local contrast is judged over the same physical
    extent in large frames as in small ones.
    """
    if clip_limit <= 0:
        return image01.astype(np.float32)
    top = (1 << bits) - 1
    dtype = np.uint16 if bits > 8 else np.uint8
    q = np.clip(np.rint(image01 * top), 0, top).astype(dtype)
    grid = clahe_grid(q.shape, tiles=tiles, max_tile_px=max_tile_px)
    out = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=grid).apply(q)
    return out.astype(np.float32) / top


def clahe_grid(shape: tuple[int, int], *, tiles: int = 8, max_tile_px: int = 0) -> tuple[int, int]:
    """CLAHE tiles ``(along x, along y)`` for an image of ``shape`` (ny, nx): ``tiles`` per
    side, or more where a tile would be wider than ``max_tile_px`` (when > 0)."""

    def count(n: int) -> int:
        wanted = max(tiles, -(-n // max_tile_px)) if max_tile_px > 0 else tiles
        return max(1, min(wanted, n))

    return count(shape[1]), count(shape[0])


def to_unit_range(
    z: np.ndarray, *, percentiles: tuple[float, float] = (0.0, 100.0), fill: float = 0.5
) -> np.ndarray:
    """Map the valid pixels' ``percentiles`` range to [0, 1] (clipped); NaN -> ``fill``."""
    z = np.asarray(z, dtype=np.float32)
    valid = np.isfinite(z)
    if not valid.any():
        return np.full(z.shape, fill, dtype=np.float32)
    lo, hi = np.percentile(z[valid], percentiles)
    if not hi > lo:
        out = np.full(z.shape, fill, dtype=np.float32)
        return out
    out = np.clip((z - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out[~valid] = fill
    return out


def enhance(z: np.ndarray, params: PreprocessParams = PreprocessParams()) -> np.ndarray:
    """Flattened heights -> model input: gaussian, robust scaling, CLAHE, per-image [0, 1].

    Pixels that were not acquired take the image median, so they carry no structure.
    """
    valid = np.isfinite(z)
    smooth = nan_gaussian(z, sigma_px=params.smooth_sigma_px)
    scaled = to_unit_range(smooth, percentiles=params.clip_percentiles)
    if valid.any() and not valid.all():
        scaled[~valid] = float(_median(scaled[valid]))
    out = clahe(
        scaled,
        clip_limit=params.clahe_clip_limit,
        tiles=params.clahe_tiles,
        bits=params.clahe_bits,
        max_tile_px=params.clahe_max_tile_px,
    )
    if valid.any():
        lo, hi = float(out[valid].min()), float(out[valid].max())
        if hi > lo:
            out = np.clip((out - lo) / (hi - lo), 0.0, 1.0)
        if not valid.all():
            out[~valid] = float(_median(out[valid]))
    return out.astype(np.float32)


def prepare(
    z: np.ndarray,
    *,
    pixel_size_nm: tuple[float, float],
    target_nm: float | None,
    params: PreprocessParams = PreprocessParams(),
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray, Resampling]:
    """A raw image (ny, nx, SI units) -> ``(image01, valid, resampling)`` for a model.

    ``image01``: float32 in [0, 1] at ``target_nm`` per pixel (the scan's own pixels when
    None); ``valid``: bool, False where nothing was acquired. ``device``: None (default) runs
    numpy/OpenCV on the CPU; a torch device ("cpu", "cuda") runs the same steps in torch
    (`preprocess_torch`, for batches of scans on a GPU: `preprocess_torch.prepare_batch`).
    """
    if device is not None:
        from defectwatch.pipeline import preprocess_torch

        return preprocess_torch.prepare(
            z, pixel_size_nm=pixel_size_nm, target_nm=target_nm, params=params, device=device
        )
    return prepare_flat(
        flatten_with(z, params), pixel_size_nm=pixel_size_nm, target_nm=target_nm, params=params
    )


def flatten_with(z: np.ndarray, params: PreprocessParams = PreprocessParams()) -> np.ndarray:
    """`flatten` with the line order and feature masking of ``params``; (ny, nx) as ``z``."""
    return flatten(
        z,
        order=params.line_order,
        mask_sigma=params.mask_sigma,
        mask_dilate_px=params.mask_dilate_px,
        passes=params.mask_passes,
    )


def prepare_flat(
    flat: np.ndarray,
    *,
    pixel_size_nm: tuple[float, float],
    target_nm: float | None,
    params: PreprocessParams = PreprocessParams(),
) -> tuple[np.ndarray, np.ndarray, Resampling]:
    """`prepare` after the flattening: resample, gaussian, CLAHE (same returns)."""
    if target_nm is None:
        resampled, mapping = flat, Resampling(flat.shape, flat.shape)
    else:
        resampled, mapping = resample(flat, pixel_size_nm=pixel_size_nm, target_nm=target_nm)
    valid = np.isfinite(resampled)
    return enhance(resampled, params), valid, mapping
