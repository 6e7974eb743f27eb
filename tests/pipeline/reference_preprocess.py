"""Today's preprocessing (defectwatch before issue 20), kept verbatim as the reference the
fast numpy and torch paths are pinned against (tests/pipeline/test_preprocess_equivalence.py)
and timed against (benchmarks/preprocess.py). Not used by the package.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from scipy import ndimage

from defectwatch.pipeline.preprocess import PreprocessParams, Resampling


def _valid(z: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    valid = np.isfinite(z)
    if exclude is not None:
        valid &= ~exclude
    return valid


def plane_correct(z: np.ndarray, *, exclude: np.ndarray | None = None) -> np.ndarray:
    """Subtract the least-squares plane fitted to the valid pixels. ``z``: (ny, nx)."""
    z = np.asarray(z, dtype=np.float64)
    valid = _valid(z, exclude)
    if valid.sum() < 3:
        valid = np.isfinite(z)
        if valid.sum() < 3:
            return z.astype(np.float32)
    ny, nx = z.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    yy = yy / max(ny - 1, 1) * 2 - 1
    xx = xx / max(nx - 1, 1) * 2 - 1
    a = np.stack([np.ones(valid.sum()), xx[valid], yy[valid]], axis=1)
    coef, *_ = np.linalg.lstsq(a, z[valid], rcond=None)
    return (z - (coef[0] + coef[1] * xx + coef[2] * yy)).astype(np.float32)


def flatten_lines(
    z: np.ndarray, *, order: int = 2, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Subtract from every line its own polynomial of ``order`` fitted to its valid pixels.

    Lines with too few valid pixels for the fit fall back to subtracting their median; lines
    with none (or only NaN) are left as they are. ``z``: (ny, nx).
    """
    z = np.asarray(z, dtype=np.float64)
    ny, nx = z.shape
    valid = _valid(z, exclude)
    finite = np.isfinite(z)
    x = np.linspace(-1.0, 1.0, nx)
    basis = np.stack([x**k for k in range(order + 1)], axis=1)  # (nx, k)
    w = valid.astype(np.float64)
    zf = np.where(valid, z, 0.0)
    ata = np.einsum("rc,ci,cj->rij", w, basis, basis)
    atz = np.einsum("rc,ci->ri", w * zf, basis)
    counts = w.sum(axis=1)
    enough = counts >= order + 2
    coef = np.zeros((ny, order + 1))
    if enough.any():
        coef[enough] = np.linalg.solve(
            ata[enough] + 1e-12 * np.eye(order + 1), atz[enough][..., None]
        )[..., 0]
    out = z - coef @ basis.T
    for r in np.flatnonzero(~enough):
        pool = z[r][valid[r]] if valid[r].any() else z[r][finite[r]]
        if pool.size:
            out[r] = z[r] - np.median(pool)
    return out.astype(np.float32)


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation of the finite values (0 if none)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def strong_feature_mask(z: np.ndarray, *, sigma: float = 3.0, dilate_px: int = 3) -> np.ndarray:
    """True where a flattened image departs from its line's median by > ``sigma`` robust sigmas.

    Judged line by line (each line's own spread, floored at half the image's), on an image
    smoothed by one pixel, so a whole line left offset by a poor fit is not itself a feature
    while a deep trough or a tall peak within a line is.
    """
    smooth = nan_gaussian(z, sigma_px=1.0)
    finite = np.isfinite(smooth)
    if not finite.any():
        return np.zeros(z.shape, dtype=bool)
    filled = np.where(finite, smooth, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN lines
        dev = filled - np.nanmedian(filled, axis=1, keepdims=True)
        row_sigma = 1.4826 * np.nanmedian(np.abs(dev), axis=1, keepdims=True)
    floor = 0.5 * robust_sigma(dev)
    row_sigma = np.fmax(np.nan_to_num(row_sigma, nan=floor), floor)
    if not np.any(row_sigma > 0):
        return np.zeros(z.shape, dtype=bool)
    mask = np.abs(np.nan_to_num(dev, nan=0.0)) > sigma * row_sigma
    if dilate_px > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=int(dilate_px))
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
    """
    out = flatten_lines(plane_correct(z), order=order)
    if mask_sigma <= 0:
        return out
    for _ in range(max(passes, 0)):
        exclude = strong_feature_mask(out, sigma=mask_sigma, dilate_px=mask_dilate_px)
        # a mask that swallows most of a line would leave it unfitted: cap it per line
        too_much = exclude.mean(axis=1) > 0.6
        exclude[too_much] = False
        out = flatten_lines(plane_correct(z, exclude=exclude), order=order, exclude=exclude)
    return out


def nan_gaussian(z: np.ndarray, *, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing by normalised convolution: NaN pixels neither count nor spread."""
    z = np.asarray(z, dtype=np.float32)
    if sigma_px <= 0:
        return z.copy()
    valid = np.isfinite(z)
    num = cv2.GaussianBlur(
        np.where(valid, z, 0).astype(np.float32), (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT
    )
    den = cv2.GaussianBlur(
        valid.astype(np.float32), (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~valid] = np.nan
    return out


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
    fill = float(np.nanmedian(z)) if valid.any() else 0.0
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
    ny, nx = q.shape

    def count(n: int) -> int:
        wanted = max(tiles, -(-n // max_tile_px)) if max_tile_px > 0 else tiles
        return max(1, min(wanted, n))

    grid = (count(nx), count(ny))
    out = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=grid).apply(q)
    return out.astype(np.float32) / top


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
        scaled[~valid] = float(np.median(scaled[valid]))
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
            out[~valid] = float(np.median(out[valid]))
    return out.astype(np.float32)


def prepare(
    z: np.ndarray,
    *,
    pixel_size_nm: tuple[float, float],
    target_nm: float | None,
    params: PreprocessParams = PreprocessParams(),
) -> tuple[np.ndarray, np.ndarray, Resampling]:
    """A raw image (ny, nx, SI units) -> ``(image01, valid, resampling)`` for a model.

    ``image01``: float32 in [0, 1] at ``target_nm`` per pixel (the scan's own pixels when
    None); ``valid``: bool, False where nothing was acquired.
    """
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
