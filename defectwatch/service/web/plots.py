"""A sample's density series as SVG geometry (drawn by ``sample.html``): per-scan points,
the running estimate as a line and its 95% interval as a band, one colour per kind."""

from __future__ import annotations

import math
from typing import Any

COLOURS = {"trough": "#00b8d9", "peak": "#d63bd6", "total": "#444444"}


def _nice_max(v: float) -> float:
    if v <= 0 or not math.isfinite(v):
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.5, 2, 3, 5, 7.5, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def density_plot(
    series: dict[str, Any],
    *,
    width: int = 760,
    height: int = 280,
    kinds: tuple[str, ...] = ("trough", "peak"),
) -> dict[str, Any] | None:
    """Coordinates for the plot, or None when the sample has no processed scan."""
    n = series.get("n", 0)
    if not n:
        return None
    left, right, top, bottom = 70, 12, 12, 36
    w, h = width - left - right, height - top - bottom
    xs = series["x"]
    values: list[float] = []
    for k in kinds:
        d = series["kinds"][k]
        values += [v for v in d["density_per_cm2"] if v is not None]
        values += [v for v in d["running_ci95_per_cm2"][1] if v is not None]
    values.sort()
    # the axis covers the intervals and all but the most extreme per-scan points
    y_max = _nice_max(values[int(0.98 * (len(values) - 1))] if values else 1.0)

    def px(i: int) -> float:
        return left + (0.5 if n == 1 else (xs[i] - 1) / (n - 1)) * w

    def py(v: float) -> float:
        return top + h - min(v, y_max) / y_max * h

    layers = []
    for k in kinds:
        d = series["kinds"][k]
        pts = [
            (px(i), py(v), series["scan_ids"][i])
            for i, v in enumerate(d["density_per_cm2"])
            if v is not None
        ]
        run = [(px(i), py(v)) for i, v in enumerate(d["running_per_cm2"]) if v is not None]
        lo, hi = d["running_ci95_per_cm2"]
        band_top = [(px(i), py(v)) for i, v in enumerate(hi) if v is not None]
        band_bottom = [(px(i), py(v)) for i, v in enumerate(lo) if v is not None]
        band = band_top + band_bottom[::-1]
        layers.append(
            {
                "kind": k,
                "colour": COLOURS[k],
                "points": [{"x": f"{x:.1f}", "y": f"{y:.1f}", "scan_id": s} for x, y, s in pts],
                "line": " ".join(f"{x:.1f},{y:.1f}" for x, y in run),
                "band": " ".join(f"{x:.1f},{y:.1f}" for x, y in band),
                "last": d["running_per_cm2"][-1],
                "last_ci": [d["running_ci95_per_cm2"][0][-1], d["running_ci95_per_cm2"][1][-1]],
            }
        )
    ticks = [
        {"y": f"{py(y_max * f):.1f}", "label": f"{y_max * f:.3g}"}
        for f in (0, 0.25, 0.5, 0.75, 1.0)
    ]
    xticks = [
        {"x": f"{px(i):.1f}", "label": str(xs[i])} for i in sorted({0, len(xs) // 2, len(xs) - 1})
    ]
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "w": w,
        "h": h,
        "bottom_y": top + h,
        "layers": layers,
        "yticks": ticks,
        "xticks": xticks,
        "binned": series.get("binned", False),
        "n": n,
    }
