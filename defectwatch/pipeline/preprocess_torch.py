"""`preprocess.prepare` in torch: batches of scans flattened, equalised and resampled on a device.

The same steps as the numpy/OpenCV path (`defectwatch.pipeline.preprocess`), one batch of
same-shaped frames (B, ny, nx) at a time, so that on a GPU a scan goes to the device once and
its model input (and the valid mask) stays there for the ensemble:

- plane + line fits from per-line sums (closed-form normal equations, float64), strong
  features masked (1 px gaussian, exact per-line and per-frame medians, cross dilation) and
  refitted, as `preprocess.flatten`;
- resampling as one pair of matrix products with the weights OpenCV's ``cv2.resize`` uses
  (read off its response to unit impulses, so area averaging and bicubic match it);
- NaN-aware gaussian with OpenCV's kernel and mirrored borders;
- CLAHE as OpenCV computes it (per-tile 2**bits-bin histograms, integer clip limit, its
  residual redistribution, rounded LUTs, bilinear interpolation between tiles). kornia's
  ``equalize_clahe`` was compared and not used: it always bins into 256 levels and clips
  differently, so against the 16-bit OpenCV CLAHE the shipped model was trained with it
  differs by 0.11 on average (max 0.29) on a [0, 1] image.

Outputs agree with the numpy path to float32 rounding in every step; where CLAHE's
redistribution jumps (see ``docs/benchmarks-preprocess.md``) a rounding-level difference of
the input can move one tile's output, as it does between two runs of the numpy path on
inputs that differ by one float32 ulp.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from defectwatch.pipeline.preprocess import PreprocessParams, Resampling, clahe_grid

__all__ = ["enhance", "flatten", "nan_gaussian", "prepare", "prepare_batch", "resample"]


# -- medians and percentiles (numpy's definitions, NaN ignored) --------------------------------


def _nanmedian(a: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``np.nanmedian`` along ``dim`` (the mean of the two middle values; NaN where none)."""
    a = a.movedim(dim, -1)
    finite = torch.isfinite(a)
    n = finite.sum(-1, keepdim=True)
    s = torch.sort(torch.where(finite, a, torch.full_like(a, float("inf"))), dim=-1).values
    lo = torch.gather(s, -1, ((n - 1).clamp(min=0)) // 2)
    hi = torch.gather(s, -1, (n // 2).clamp(max=a.shape[-1] - 1))
    med = (lo + hi) / 2
    return torch.where(n > 0, med, torch.full_like(med, float("nan"))).squeeze(-1)


def _frame_nanmedian(a: torch.Tensor) -> torch.Tensor:
    """Median of each frame's finite values: (B, ...) -> (B,)."""
    return _nanmedian(a.reshape(a.shape[0], -1))


def _frame_percentiles(a: torch.Tensor, q: Sequence[float]) -> torch.Tensor:
    """``np.percentile`` (linear) of each frame's finite values: (B, ...) -> (B, len(q)),
    NaN for a frame without any."""
    flat = a.reshape(a.shape[0], -1)
    finite = torch.isfinite(flat)
    n = finite.sum(-1)
    s = torch.sort(torch.where(finite, flat, torch.full_like(flat, float("inf"))), -1).values
    out = []
    for p in q:
        pos = (n - 1).clamp(min=0).double() * (p / 100.0)
        i0 = pos.floor().long()
        i1 = (i0 + 1).clamp(max=(n - 1).clamp(min=0))
        frac = pos - i0.double()
        v0 = torch.gather(s, 1, i0[:, None])[:, 0].double()
        v1 = torch.gather(s, 1, i1[:, None])[:, 0].double()
        v = v0 + (v1 - v0) * frac
        out.append(torch.where(n > 0, v, torch.full_like(v, float("nan"))))
    return torch.stack(out, dim=1)


# -- flattening --------------------------------------------------------------------------------


def _axis(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float64, device=device) / max(n - 1, 1) * 2 - 1


def _line_sums(
    z: torch.Tensor, ok: torch.Tensor, n_powers: int, n_moments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per line: ``s[..., k] = sum x**k``, ``t[..., k] = sum z x**k`` over ``ok`` (float64)."""
    x = _axis(z.shape[-1], z.device)
    powers = torch.stack([x**k for k in range(n_powers)], dim=1)  # (nx, P)
    w = ok.to(torch.float64)
    s = w @ powers
    t = (
        torch.where(ok, z, torch.zeros((), dtype=z.dtype, device=z.device)).to(torch.float64)
        @ powers[:, :n_moments]
    )
    return s, t


def _plane(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares planes (B, 3) from line sums, and whether each frame had >= 3 px."""
    y = _axis(s.shape[1], s.device)
    n, sx, sxx = s[..., 0], s[..., 1], s[..., 2]
    tz, txz = t[..., 0], t[..., 1]
    ata = torch.stack(
        [
            torch.stack([n.sum(1), sx.sum(1), (y * n).sum(1)], -1),
            torch.stack([sx.sum(1), sxx.sum(1), (y * sx).sum(1)], -1),
            torch.stack([(y * n).sum(1), (y * sx).sum(1), (y * y * n).sum(1)], -1),
        ],
        dim=1,
    )
    atz = torch.stack([tz.sum(1), txz.sum(1), (y * tz).sum(1)], -1)
    enough = n.sum(1) >= 3
    # minimum-norm solution (as lstsq on the pixels) where the plane is underdetermined
    abc = (torch.linalg.pinv(ata) @ atz[..., None])[..., 0]
    return torch.where(enough[:, None], abc, torch.zeros_like(abc)), enough


def _line_polynomials(z: torch.Tensor, *, order: int, exclude: torch.Tensor | None) -> torch.Tensor:
    """Per line the polynomial (B, ny, max(order, 1) + 1) that `preprocess.flatten`'s plane
    correction and line fit subtract together (see `preprocess._line_polynomials`)."""
    b, ny, nx = z.shape
    k = order + 1
    n_powers = max(2 * order + 2, 3)
    finite = torch.isfinite(z)
    ok = finite if exclude is None else finite & ~exclude
    s, t = _line_sums(z, ok, n_powers, order + 2)
    abc, enough_px = _plane(s, t)
    if exclude is not None and not bool(enough_px.all()):
        s_f, t_f = _line_sums(z, finite, n_powers, order + 2)
        abc_f, _ = _plane(s_f, t_f)
        abc = torch.where(enough_px[:, None], abc, abc_f)
    y = _axis(ny, z.device)
    offset = abc[:, :1] + abc[:, 2:3] * y  # (B, ny)
    slope = abc[:, 1:2].expand(b, ny)
    poly = torch.zeros((b, ny, max(order, 1) + 1), dtype=torch.float64, device=z.device)
    poly[..., 0], poly[..., 1] = offset, slope
    tt = t[..., :k] - (offset[..., None] * s[..., :k] + slope[..., None] * s[..., 1 : k + 1])
    counts = s[..., 0]
    enough = counts >= order + 2
    idx = torch.arange(k, device=z.device)
    ata = s[..., idx[:, None] + idx[None, :]] + 1e-12 * torch.eye(
        k, dtype=torch.float64, device=z.device
    )
    eye = torch.eye(k, dtype=torch.float64, device=z.device).expand_as(ata)
    ata = torch.where(enough[..., None, None], ata, eye)
    coef = torch.linalg.solve(ata, torch.where(enough[..., None], tt, 0.0)[..., None])[..., 0]
    poly[..., :k] += torch.where(enough[..., None], coef, 0.0)
    # lines too short for the fit: their median (unmasked pixels, else all finite ones)
    short = ~enough & (finite.sum(-1) > 0)
    if bool(short.any()):
        bi, ri = torch.nonzero(short, as_tuple=True)
        x = _axis(nx, z.device)
        lines = z[bi, ri].to(torch.float64) - (poly[bi, ri, :1] + poly[bi, ri, 1:2] * x)
        keep = torch.isfinite(lines)
        if exclude is not None:
            unmasked = keep & ~exclude[bi, ri]
            keep = torch.where(unmasked.any(-1, keepdim=True), unmasked, keep)
        med = _nanmedian(torch.where(keep, lines, torch.full_like(lines, float("nan"))))
        poly[bi, ri, 0] += med
    return poly


def _subtract_lines(z: torch.Tensor, poly: torch.Tensor) -> torch.Tensor:
    x = _axis(z.shape[-1], z.device)
    basis = torch.stack([x**k for k in range(poly.shape[-1])])  # (K, nx)
    return (z.to(torch.float64) - poly @ basis).to(torch.float32)


def _cross_dilate(mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """Binary dilation by the 3 x 3 cross, ``iterations`` times (outside the frame: False)."""
    m = mask[:, None].to(torch.float32)
    for _ in range(iterations):
        m = torch.maximum(
            F.max_pool2d(m, (3, 1), stride=1, padding=(1, 0)),
            F.max_pool2d(m, (1, 3), stride=1, padding=(0, 1)),
        )
    return m[:, 0] > 0


def strong_feature_mask(z: torch.Tensor, *, sigma: float = 3.0, dilate_px: int = 3) -> torch.Tensor:
    """`preprocess.strong_feature_mask` for a batch (B, ny, nx) -> bool (B, ny, nx)."""
    dev = nan_gaussian(z, sigma_px=1.0)
    finite = torch.isfinite(dev)
    dev = dev - _nanmedian(dev)[..., None]
    absdev = dev.abs()
    row_sigma = 1.4826 * _nanmedian(absdev)  # (B, ny)
    flat = dev.reshape(dev.shape[0], -1)
    med = _frame_nanmedian(flat)
    floor = 0.5 * 1.4826 * _frame_nanmedian((flat - med[:, None]).abs())  # (B,)
    floor = torch.nan_to_num(floor, nan=0.0)[:, None]
    row_sigma = torch.fmax(torch.where(torch.isnan(row_sigma), floor, row_sigma), floor)
    active = (row_sigma > 0).any(-1) & finite.flatten(1).any(-1)  # (B,)
    mask = torch.nan_to_num(absdev, nan=0.0) > (sigma * row_sigma)[..., None]
    mask &= active[:, None, None]
    if dilate_px > 0:
        mask = _cross_dilate(mask, int(dilate_px))
    return mask


def flatten(
    z: torch.Tensor,
    *,
    order: int = 2,
    mask_sigma: float = 3.0,
    mask_dilate_px: int = 3,
    passes: int = 3,
) -> torch.Tensor:
    """`preprocess.flatten` for a batch (B, ny, nx) of float32 frames on any device."""
    z = _batch(z)
    out = _subtract_lines(z, _line_polynomials(z, order=order, exclude=None))
    if mask_sigma <= 0:
        return out
    for _ in range(max(passes, 0)):
        exclude = strong_feature_mask(out, sigma=mask_sigma, dilate_px=mask_dilate_px)
        too_much = exclude.to(torch.float32).mean(-1) > 0.6
        exclude &= ~too_much[..., None]
        out = _subtract_lines(z, _line_polynomials(z, order=order, exclude=exclude))
    return out


# -- filters -----------------------------------------------------------------------------------


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a line of ``n`` padded by ``pad`` on each side, OpenCV's BORDER_REFLECT
    (``cba|abcd|dcb``), repeated for pads beyond the line."""
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    i = torch.remainder(i, 2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


@functools.lru_cache(maxsize=16)
def _gaussian_kernel(sigma_px: float) -> np.ndarray:
    """OpenCV's float32 gaussian kernel for a float32 image (size from 4 sigma)."""
    ksize = int(round(sigma_px * 4 * 2 + 1)) | 1
    return cv2.getGaussianKernel(ksize, sigma_px, cv2.CV_32F).ravel()


def _blur(a: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable gaussian of a batch (B, H, W), mirrored borders, as ``cv2.GaussianBlur``.

    Taps summed in float32 one shifted slice at a time (not a convolution: cuDNN may run
    float32 convolutions in TF32, which would cost three decimal digits)."""
    kernel = [float(v) for v in _gaussian_kernel(float(sigma_px))]
    r = len(kernel) // 2
    _, h, w = a.shape
    x = a[:, :, _reflect_index(w, r, a.device)]  # (B, H, W + 2r)
    out = kernel[0] * x[:, :, 0:w]
    for i in range(1, len(kernel)):
        out += kernel[i] * x[:, :, i : i + w]
    x = out[:, _reflect_index(h, r, a.device), :]  # (B, H + 2r, W)
    out = kernel[0] * x[:, 0:h]
    for i in range(1, len(kernel)):
        out += kernel[i] * x[:, i : i + h]
    return out


def nan_gaussian(z: torch.Tensor, *, sigma_px: float) -> torch.Tensor:
    """`preprocess.nan_gaussian` for a batch: NaN pixels neither count nor spread."""
    z = _batch(z)
    if sigma_px <= 0:
        return z.clone()
    valid = torch.isfinite(z)
    num = _blur(torch.where(valid, z, torch.zeros_like(z)), sigma_px)
    if bool(valid.all()):
        return num
    den = _blur(valid.to(torch.float32), sigma_px)
    out = num / den
    return torch.where(valid, out, torch.full_like(out, float("nan")))


@functools.lru_cache(maxsize=32)
def _resize_weights(n_in: int, n_out: int, interpolation: int) -> np.ndarray:
    """(n_out, n_in) float32: OpenCV's 1-D resampling weights, read off its response to unit
    impulses (``cv2.resize`` is separable for area, linear and cubic interpolation)."""
    eye = np.eye(n_in, dtype=np.float32)
    return np.ascontiguousarray(cv2.resize(eye, (n_out, n_in), interpolation=interpolation).T)


@functools.lru_cache(maxsize=32)
def _resize_weights_on(
    n_in: int, n_out: int, interpolation: int, device: torch.device
) -> torch.Tensor:
    """`_resize_weights` kept on ``device`` (uploaded once per shape, not per batch)."""
    return torch.from_numpy(_resize_weights(n_in, n_out, interpolation)).to(device, torch.float64)


def _resize(a: torch.Tensor, shape_out: tuple[int, int], interpolation: int) -> torch.Tensor:
    # float64 products: a float32 matmul may run in TF32 on a GPU (allow_tf32 / "high"
    # matmul precision), three decimal digits short of OpenCV's float32
    wy = _resize_weights_on(a.shape[1], shape_out[0], interpolation, a.device)
    wx = _resize_weights_on(a.shape[2], shape_out[1], interpolation, a.device)
    return (wy @ a.to(torch.float64) @ wx.T).to(torch.float32)


def resample(
    z: torch.Tensor, *, pixel_size_nm: tuple[float, float], target_nm: float
) -> tuple[torch.Tensor, Resampling]:
    """`preprocess.resample` for a batch of frames with one pixel size (B, ny, nx)."""
    z = _batch(z)
    _, ny, nx = z.shape
    px, py = pixel_size_nm
    out_nx = max(1, int(round(nx * px / target_nm)))
    out_ny = max(1, int(round(ny * py / target_nm)))
    mapping = Resampling((ny, nx), (out_ny, out_nx))
    if (out_ny, out_nx) == (ny, nx):
        return z.clone(), mapping
    shrinking = out_nx * out_ny < nx * ny
    if shrinking and (out_nx > nx or out_ny > ny):
        # OpenCV's INTER_AREA then is not area averaging on both axes: resample on the host
        from defectwatch.pipeline import preprocess as host

        frames = [
            host.resample(f, pixel_size_nm=pixel_size_nm, target_nm=target_nm)[0]
            for f in z.cpu().numpy()
        ]
        return torch.from_numpy(np.stack(frames)).to(z.device), mapping
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    valid = torch.isfinite(z)
    if bool(valid.all()):
        return _resize(z, (out_ny, out_nx), interp), mapping
    fill = torch.nan_to_num(_frame_nanmedian(z), nan=0.0)[:, None, None]
    num = _resize(torch.where(valid, z, fill), (out_ny, out_nx), interp)
    cover = _resize(
        valid.to(torch.float32), (out_ny, out_nx), cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    return torch.where(cover < 0.5, torch.full_like(num, float("nan")), num), mapping


def clahe(
    image01: torch.Tensor,
    *,
    clip_limit: float = 2.0,
    tiles: int = 8,
    bits: int = 16,
    max_tile_px: int = 0,
) -> torch.Tensor:
    """`preprocess.clahe` (OpenCV's CLAHE) for a batch (B, H, W) in [0, 1] without NaN."""
    image01 = _batch(image01)
    if clip_limit <= 0:
        return image01.to(torch.float32)
    top = (1 << bits) - 1
    hist_size = 256 if bits <= 8 else 65536
    q = torch.clamp(torch.round(image01 * top), 0, top).to(torch.int64)
    b, h, w = q.shape
    tiles_x, tiles_y = clahe_grid((h, w), tiles=tiles, max_tile_px=max_tile_px)
    # OpenCV pads the bottom/right (reflect 101) to a whole number of tiles
    pad_y = (tiles_y - h % tiles_y) % tiles_y
    pad_x = (tiles_x - w % tiles_x) % tiles_x
    ext = q
    if pad_x or pad_y:
        ext = F.pad(q[:, None].to(torch.float32), (0, pad_x, 0, pad_y), mode="reflect")
        ext = ext[:, 0].to(torch.int64)
    th, tw = (h + pad_y) // tiles_y, (w + pad_x) // tiles_x
    n_tiles = tiles_y * tiles_x
    tile_area = th * tw
    # one histogram per tile, in chunks of frames to bound memory (B * tiles * bins int32)
    out = torch.empty((b, h, w), dtype=torch.float32, device=q.device)
    per_chunk = max(1, (1 << 27) // (n_tiles * hist_size))
    limit = max(int(clip_limit * tile_area / hist_size), 1)
    lut_scale = np.float32(hist_size - 1) / np.float32(tile_area)
    bins = torch.arange(hist_size, device=q.device)
    for c0 in range(0, b, per_chunk):
        e = ext[c0 : c0 + per_chunk]
        nb = e.shape[0]
        tile_of = (
            e.view(nb, tiles_y, th, tiles_x, tw)
            .permute(0, 1, 3, 2, 4)
            .reshape(nb, n_tiles, tile_area)
        )
        hist = torch.zeros((nb, n_tiles, hist_size), dtype=torch.int32, device=q.device)
        hist.scatter_add_(2, tile_of, torch.ones_like(tile_of, dtype=torch.int32))
        clipped = (hist - limit).clamp(min=0).sum(-1, keepdim=True)
        hist = hist.clamp(max=limit)
        batch = clipped // hist_size
        residual = clipped - batch * hist_size
        hist += batch.to(torch.int32)
        step = torch.clamp(hist_size // residual.clamp(min=1), min=1)
        bump = (residual > 0) & (bins % step == 0) & (bins // step < residual)
        hist += bump.to(torch.int32)
        cum = torch.cumsum(hist, dim=-1, dtype=torch.int32).to(torch.float32)
        lut = torch.clamp(torch.round(cum * float(lut_scale)), 0, top)  # (nb, T, bins)
        out[c0 : c0 + nb] = _interpolate_luts(
            lut, q[c0 : c0 + nb], tiles_x, tiles_y, th, tw, hist_size, top
        )
    return out / top


def _interpolate_luts(
    lut: torch.Tensor,
    q: torch.Tensor,
    tiles_x: int,
    tiles_y: int,
    th: int,
    tw: int,
    hist_size: int,
    top: int,
) -> torch.Tensor:
    """Bilinear blend of the four nearest tiles' LUTs at every pixel, in OpenCV's float32
    arithmetic (tile centres at half a tile), rounded to the nearest level."""
    nb, h, w = q.shape
    dev = q.device

    def axis(n: int, size: int, count: int):
        inv = np.float32(1.0) / np.float32(size)
        f = torch.arange(n, device=dev, dtype=torch.float32) * float(inv) - 0.5
        i1 = torch.floor(f)
        a = f - i1
        i1 = i1.to(torch.int64)
        return i1.clamp(min=0), (i1 + 1).clamp(max=count - 1), a

    y1, y2, ya = axis(h, th, tiles_y)
    x1, x2, xa = axis(w, tw, tiles_x)
    flat = lut.reshape(nb, -1)

    def pick(ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
        index = ((ty[:, None] * tiles_x + tx[None, :]) * hist_size)[None] + q
        return torch.gather(flat, 1, index.reshape(nb, -1)).reshape(nb, h, w)

    xa, ya = xa[None, None, :], ya[None, :, None]
    res = (pick(y1, x1) * (1 - xa) + pick(y1, x2) * xa) * (1 - ya) + (
        pick(y2, x1) * (1 - xa) + pick(y2, x2) * xa
    ) * ya
    return torch.clamp(torch.round(res), 0, top)


def to_unit_range(
    z: torch.Tensor, *, percentiles: tuple[float, float] = (0.0, 100.0), fill: float = 0.5
) -> torch.Tensor:
    """`preprocess.to_unit_range` for a batch: each frame's own percentile range -> [0, 1]."""
    z = _batch(z)
    valid = torch.isfinite(z)
    p = _frame_percentiles(z, percentiles).to(torch.float32)
    lo, hi = p[:, 0, None, None], p[:, 1, None, None]
    ok = hi > lo  # False also for NaN (no valid pixel)
    out = torch.clamp((z - lo) / torch.where(ok, hi - lo, torch.ones_like(hi)), 0.0, 1.0)
    return torch.where(ok & valid, out, torch.full_like(out, fill))


def enhance(z: torch.Tensor, params: PreprocessParams = PreprocessParams()) -> torch.Tensor:
    """`preprocess.enhance` for a batch: gaussian, robust scaling, CLAHE, per-frame [0, 1]."""
    z = _batch(z)
    valid = torch.isfinite(z)
    some = valid.flatten(1).any(-1)[:, None, None]
    partial = some & ~valid.flatten(1).all(-1)[:, None, None]
    smooth = nan_gaussian(z, sigma_px=params.smooth_sigma_px)
    scaled = to_unit_range(smooth, percentiles=params.clip_percentiles)
    med = _frame_nanmedian(torch.where(valid, scaled, torch.full_like(scaled, float("nan"))))
    scaled = torch.where(partial & ~valid, med[:, None, None], scaled)
    out = clahe(
        scaled,
        clip_limit=params.clahe_clip_limit,
        tiles=params.clahe_tiles,
        bits=params.clahe_bits,
        max_tile_px=params.clahe_max_tile_px,
    )
    inf = torch.full_like(out, float("inf"))
    lo = torch.where(valid, out, inf).flatten(1).min(-1).values[:, None, None]
    hi = torch.where(valid, out, -inf).flatten(1).max(-1).values[:, None, None]
    stretch = some & (hi > lo)
    out = torch.where(
        stretch, torch.clamp((out - lo) / torch.where(stretch, hi - lo, 1.0), 0.0, 1.0), out
    )
    med = _frame_nanmedian(torch.where(valid, out, torch.full_like(out, float("nan"))))
    return torch.where(partial & ~valid, med[:, None, None], out).to(torch.float32)


# -- the whole preparation ---------------------------------------------------------------------


def _batch(z: torch.Tensor) -> torch.Tensor:
    if z.ndim != 3:
        raise ValueError(f"expected a batch of frames (B, ny, nx), got shape {tuple(z.shape)}")
    return z if z.dtype == torch.float32 else z.to(torch.float32)


def prepare_batch(
    frames: torch.Tensor | np.ndarray | Sequence[np.ndarray],
    *,
    pixel_size_nm: tuple[float, float],
    target_nm: float | None,
    params: PreprocessParams = PreprocessParams(),
    device: str | torch.device = "cpu",
    keep_flat: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, Resampling, torch.Tensor | None]:
    """Same-shaped raw frames (B, ny, nx, SI units, one pixel size ``(x, y)`` nm) ->
    ``(image01, valid, resampling, flat)`` on ``device``, as `preprocess.prepare` for each.

    ``image01``: (B, H, W) float32 in [0, 1] at ``target_nm`` per pixel (the frames' own when
    None); ``valid``: (B, H, W) bool; ``flat``: (B, ny, nx) float32 flattened frames (where
    defect contrast is measured) when ``keep_flat``, else None. The frames go to the device
    once; everything after runs there.
    """
    if isinstance(frames, torch.Tensor):
        z = frames.to(device=device, dtype=torch.float32)
    else:
        if not isinstance(frames, np.ndarray):
            shapes = {np.shape(f) for f in frames}
            if len(shapes) != 1:
                raise ValueError(
                    f"a batch needs frames of one shape, got {sorted(shapes)}: "
                    "group scans by shape (and pixel size) first"
                )
            frames = np.stack(list(frames))
        z = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(device)
    if z.ndim == 2:
        z = z[None]
    flat = flatten(
        _batch(z),
        order=params.line_order,
        mask_sigma=params.mask_sigma,
        mask_dilate_px=params.mask_dilate_px,
        passes=params.mask_passes,
    )
    if target_nm is None:
        shape = (int(flat.shape[1]), int(flat.shape[2]))
        resampled, mapping = flat, Resampling(shape, shape)
    else:
        resampled, mapping = resample(flat, pixel_size_nm=pixel_size_nm, target_nm=target_nm)
    valid = torch.isfinite(resampled)
    image01 = enhance(resampled, params)
    return image01, valid, mapping, (flat if keep_flat else None)


def prepare(
    z: np.ndarray,
    *,
    pixel_size_nm: tuple[float, float],
    target_nm: float | None,
    params: PreprocessParams = PreprocessParams(),
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, Resampling]:
    """`preprocess.prepare` of one frame (ny, nx) computed in torch on ``device``; numpy out."""
    image01, valid, mapping, _ = prepare_batch(
        np.asarray(z)[None],
        pixel_size_nm=pixel_size_nm,
        target_nm=target_nm,
        params=params,
        device=device,
    )
    return image01[0].cpu().numpy(), valid[0].cpu().numpy(), mapping
