"""How sure is a comparison of two detectors on a few test scans? A paired bootstrap over
scans of the difference in pooled object F1.

Both detectors are scored on the same scans; a resample draws scans with replacement and pools
each detector's TP / FP / FN over the drawn scans, so scan-to-scan variation (one crowded frame
dominating a split) shows in the interval, and the pairing cancels what both share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class F1Difference:
    """``delta``: pooled F1 of B minus A on the scans as they are; ``low, high``: the
    ``level`` percentile interval of that difference over ``resamples`` bootstrap resamples of
    the ``scans``; ``p_worse``: share of resamples in which B is worse than A."""

    delta: float
    low: float
    high: float
    p_worse: float
    level: float
    resamples: int
    scans: int

    def describe(self) -> str:
        return (
            f"{self.delta:+.3f} ({self.level:.0%} interval {self.low:+.3f} to "
            f"{self.high:+.3f} over {self.resamples} bootstrap resamples of the "
            f"{self.scans} test scans)"
        )


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def bootstrap_f1_difference(
    a: np.ndarray, b: np.ndarray, *, resamples: int = 2000, level: float = 0.9, seed: int = 0
) -> F1Difference:
    """``a``, ``b``: (n_scans, 3) TP, FP, FN of detectors A and B per scan (one kind, or
    (n_scans, K, 3) for K kinds, whose F1s are averaged, kinds without truth in a resample
    left out). Returns B - A (`F1Difference`)."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    if a.shape != b.shape or a.shape[-1] != 3 or a.ndim not in (2, 3):
        raise ValueError(
            f"expected two (n, 3) or (n, K, 3) count arrays, got {a.shape} and {b.shape}"
        )
    if a.ndim == 2:
        a, b = a[:, None, :], b[:, None, :]
    n = a.shape[0]
    rng = np.random.default_rng(seed)
    idx = np.vstack([np.arange(n)[None, :], rng.integers(0, n, size=(resamples, n))])

    def mean_f1(x: np.ndarray) -> np.ndarray:
        pooled = x[idx].sum(axis=1)  # (R+1, K, 3)
        truth = pooled[..., 0] + pooled[..., 2] > 0
        f1 = np.where(truth, _f1(pooled[..., 0], pooled[..., 1], pooled[..., 2]), np.nan)
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.where(truth, f1, np.nan), axis=1) if f1.shape[1] > 1 else f1[:, 0]

    with np.errstate(invalid="ignore", divide="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            d = mean_f1(b) - mean_f1(a)
    delta, boot = float(d[0]), d[1:]
    boot = boot[np.isfinite(boot)]
    if not boot.size:
        return F1Difference(delta, float("nan"), float("nan"), float("nan"), level, 0, n)
    lo, hi = np.percentile(boot, [50 * (1 - level), 100 - 50 * (1 - level)])
    return F1Difference(
        delta, float(lo), float(hi), float(np.mean(boot < 0)), level, int(boot.size), n
    )


def scan_counts(scans: Sequence[dict], kinds: Sequence[str]) -> np.ndarray:
    """(n_scans, K, 3) TP, FP, FN per scan and kind from an evaluation summary's ``scans``."""
    out = np.zeros((len(scans), len(kinds), 3))
    for i, s in enumerate(scans):
        for j, k in enumerate(kinds):
            sc = s["scores"].get(k) or {}
            out[i, j] = (sc.get("tp") or 0, sc.get("fp") or 0, sc.get("fn") or 0)
    return out
