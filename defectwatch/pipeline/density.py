"""Defect densities per kind over the acquired area, with exact 95% Poisson intervals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from scipy import stats

from defectwatch.domain import Defect, Density

NM2_PER_CM2 = 1e14


def poisson_ci95(count: int) -> tuple[float, float]:
    """Exact (Garwood) 95% interval for the mean of a Poisson count."""
    low = 0.0 if count == 0 else float(stats.chi2.ppf(0.025, 2 * count) / 2)
    high = float(stats.chi2.ppf(0.975, 2 * count + 2) / 2)
    return low, high


def density(count: int, area_nm2: float, *, kind: str = "total") -> Density:
    """``count`` defects on ``area_nm2`` -> per cm^2 with its 95% interval (0 area -> 0)."""
    if area_nm2 <= 0:
        return Density(kind, count, 0.0, 0.0, 0.0, 0.0)
    per = NM2_PER_CM2 / area_nm2
    low, high = poisson_ci95(count)
    return Density(kind, count, area_nm2, count * per, low * per, high * per)


def densities(
    defects: Iterable[Defect], area_nm2: float, *, kinds: Sequence[str] = ("trough", "peak")
) -> dict[str, Density]:
    """Densities per kind and in total (``"total"``) over ``area_nm2`` (the acquired area)."""
    counts = {k: 0 for k in kinds}
    for d in defects:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    out = {k: density(n, area_nm2, kind=k) for k, n in counts.items()}
    out["total"] = density(sum(counts.values()), area_nm2, kind="total")
    return out
