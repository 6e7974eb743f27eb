"""Use case: write simulated scans to disk as an instrument would, with their ground truth.

For scan ``i`` of a run with ``seed`` the simulator is seeded with ``seed + i``, so any one
scan can be reproduced alone (``--n 1 --seed S+i``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from defectwatch.pipeline.preprocess import enhance, flatten
from defectwatch.pipeline.render import Mark, draw_marks, side_by_side, write_png
from defectwatch.pipeline.simulate import SimulatedScan, TruthDefect, simulate
from defectwatch.pipeline.sxm import write_sxm

TRUTH_COLUMNS = ("row", "col", "x_nm", "y_nm", "kind", "subtype", "visible", "contrast")
UNITS = {"Z": "m", "Current": "A"}


@dataclass(frozen=True)
class WrittenScan:
    sxm: Path
    truth_csv: Path
    preview: Path | None
    defects: int
    visible: int


def write_truth_csv(path: Path, truth: list[TruthDefect]) -> None:
    """Ground truth CSV: ``row, col, x_nm, y_nm, kind, subtype, visible, contrast`` (one row a
    defect; contrast empty where it was not measured)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(TRUTH_COLUMNS)
        for d in truth:
            w.writerow(
                [
                    f"{d.row:.2f}",
                    f"{d.col:.2f}",
                    f"{d.x_nm:.3f}",
                    f"{d.y_nm:.3f}",
                    d.kind,
                    d.subtype,
                    int(d.visible),
                    f"{d.contrast:.3f}" if np.isfinite(d.contrast) else "",
                ]
            )


def read_truth_csv(path: str | Path) -> list[TruthDefect]:
    """Read a ground truth CSV written by `write_truth_csv` (files without the contrast column,
    written before it existed, read as contrast unknown)."""
    with open(path, newline="") as fh:
        return [
            TruthDefect(
                float(r["row"]),
                float(r["col"]),
                float(r["x_nm"]),
                float(r["y_nm"]),
                r["kind"],
                r["subtype"],
                r["visible"] in ("1", "True", "true"),
                float(r.get("contrast") or "nan"),
            )
            for r in csv.DictReader(fh)
        ]


def preview_picture(sim: SimulatedScan) -> np.ndarray:
    """BGR picture: the flattened analysis channel, bare and with the truth overlaid."""
    r = sim.recipe
    z = sim.images[(sim.analysis_channel, "forward")].astype(np.float64)
    image = enhance(flatten(z))
    px = r.width_nm / r.nx
    title = (
        f"{r.material} {r.mode} {r.width_nm:g} nm {r.nx} px  "
        f"{r.density_per_cm2:.2g} cm-2  seed {r.seed}"
    )
    bare = draw_marks(image, [], pixel_size_nm=px, title=title)
    marks = [Mark(d.row, d.col, d.kind, d.visible) for d in sim.truth]
    marked = draw_marks(
        image,
        marks,
        pixel_size_nm=px,
        radius_nm=max(1.0, 3 * px),
        title="truth: cyan trough, magenta peak, grey not visible",
    )
    return side_by_side([bare, marked])


def write_simulated_scans(
    outdir: str | Path,
    *,
    n: int = 1,
    material: str = "wse2",
    mode: str = "stm",
    size_nm: float = 50.0,
    pixels: int = 512,
    density_per_cm2: float | None = None,
    seed: int = 0,
    preview: bool = False,
    prefix: str | None = None,
    artifacts: bool = True,
    clusters: bool = False,
    broad: bool | tuple[str, ...] = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[WrittenScan]:
    """Simulate ``n`` scans into ``outdir``: ``.sxm`` + truth ``.csv`` (+ ``.png`` preview);
    ``broad``: the broadened families (`simulate.BROAD_FAMILIES`; True: all)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    pretty = {"wse2": "WSe2", "mose2": "MoSe2"}.get(material, material)
    stem = prefix or f"{pretty}-sim_{mode}_{size_nm:g}nm"
    start = datetime(2021, 11, 18, 12, 0, 0)
    written: list[WrittenScan] = []
    for i in range(n):
        sim = simulate(
            seed + i,
            material=material,
            mode=mode,
            size_nm=size_nm,
            pixels=pixels,
            density_per_cm2=density_per_cm2,
            artifacts=artifacts,
            clusters=clusters,
            broad=broad,
        )
        r = sim.recipe
        base = out / f"{stem}_{seed + i:04d}"
        when = start + timedelta(minutes=7 * (seed + i))
        recipe = json.dumps(r.to_dict(), separators=(",", ":"))
        write_sxm(
            base.with_suffix(".sxm"),
            images=sim.images,
            units=UNITS,
            width_m=r.width_nm * 1e-9,
            height_m=r.height_nm * 1e-9,
            scan_dir=r.scan_dir,
            angle_deg=r.angle_deg,
            bias_v=r.bias_v,
            setpoint_a=r.setpoint_a,
            rec_date=when.strftime("%d.%m.%Y"),
            rec_time=when.strftime("%H:%M:%S"),
            line_time_s=0.5 * pixels / 512,
            comment=[
                f"defectwatch simulator: {material} {mode}, seed {r.seed}",
                f"analysis channel: {sim.analysis_channel}",
            ],
            extra_tags={"defectwatch>simulator recipe": recipe},
        )
        write_truth_csv(base.with_suffix(".csv"), sim.truth)
        png = None
        if preview:
            png = base.with_suffix(".png")
            write_png(png, preview_picture(sim))
        written.append(
            WrittenScan(
                base.with_suffix(".sxm"),
                base.with_suffix(".csv"),
                png,
                len(sim.truth),
                sum(d.visible for d in sim.truth),
            )
        )
        if on_progress:
            on_progress(i + 1, n)
    return written
