"""`defectwatch process` and `defectwatch evaluate`: the detection commands."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from defectwatch.errors import DefectwatchError
from defectwatch.service.cli import _fail, _progress, app, out


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def result_json(path: Path, detected, model: str) -> dict[str, Any]:
    """The JSON object `process --json` prints for one scan that worked."""
    scan, det = detected.scan, detected.detection
    return {
        "path": str(path), "status": "ok", "error": None, "nx": scan.nx, "ny": scan.ny,
        "width_nm": scan.width_nm, "height_nm": scan.height_nm,
        "pixel_size_nm": [scan.pixel_size_x_nm, scan.pixel_size_y_nm],
        "acquired_fraction": scan.acquired_fraction, "model": model,
        "defects": [{"row": round(d.row, 2), "col": round(d.col, 2),
                     "x_nm": round(d.x_nm, 4), "y_nm": round(d.y_nm, 4), "kind": d.kind,
                     "confidence": round(d.confidence, 4),
                     "uncertainty": round(d.uncertainty, 4),
                     "area_nm2": round(d.area_nm2, 4)} for d in det.defects],
        "density_per_cm2": {k: v.per_cm2 for k, v in det.densities.items()},
        "density_ci95_per_cm2": {k: [v.ci95_low_per_cm2, v.ci95_high_per_cm2]
                                 for k, v in det.densities.items()},
        "seconds": round(det.seconds, 3),
    }


def failed_json(path: Path, error: str) -> dict[str, Any]:
    return {"path": str(path), "status": "failed", "error": error, "nx": None, "ny": None,
            "width_nm": None, "height_nm": None, "pixel_size_nm": None,
            "acquired_fraction": None, "model": None, "defects": [],
            "density_per_cm2": {}, "density_ci95_per_cm2": {}}


@app.command()
def process(
    paths: Annotated[list[Path], typer.Argument(help="Scan files (.sxm) or folders of them.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per scan per line.")
                       ] = False,
    overlay: Annotated[Path | None, typer.Option(
        help="Write a PNG per scan here: defects marked beside the uncertainty map.")] = None,
    channel: Annotated[str, typer.Option(help="Channel to analyse (Z, Current, ...).")] = "Z",
    model: Annotated[Path | None, typer.Option(
        help="Model version directory (default: the shipped ensemble).")] = None,
    threshold: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Mean-probability threshold (default: the model's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    fast: Annotated[bool, typer.Option(help="Channels-last (+ fp16 on CUDA) inference.")
                    ] = False,
) -> None:
    """Find the defects in scans: coordinates, confidence, uncertainty, densities."""
    from defectwatch.service.detection import detect_scan, load_ensemble
    from defectwatch.pipeline.scan import read_scan
    from defectwatch.service.pictures import write_overlay

    files = _expand(paths)
    if not files:
        _fail("no .sxm files found in " + ", ".join(str(p) for p in paths))
        raise typer.Exit(1)
    ensemble = load_ensemble(model, device=device, fast=fast)
    table = Table("file", "px", "nm", "troughs", "peaks", "density cm^-2 (95% CI)",
                  "mean conf", "s")
    failed = 0
    with _progress() as bar:
        task = bar.add_task("detecting", total=len(files))
        for k, path in enumerate(files):
            try:
                scan = read_scan(path, channel=channel)
                detected = detect_scan(scan, ensemble=ensemble, threshold=threshold)
            except DefectwatchError as exc:
                failed += 1
                if as_json:
                    print(json.dumps(failed_json(path, str(exc))), flush=True)
                else:
                    _fail(str(exc))
                bar.update(task, completed=k + 1)
                continue
            det = detected.detection
            if overlay is not None:
                write_overlay(overlay / f"{path.stem}.png", detected.prediction, det.defects,
                              title=path.name)
            if as_json:
                print(json.dumps(result_json(path, detected, ensemble.version)), flush=True)
            else:
                tot = det.densities["total"]
                conf = (sum(d.confidence for d in det.defects) / len(det.defects)
                        if det.defects else float("nan"))
                table.add_row(path.name, f"{scan.nx}x{scan.ny}", f"{scan.width_nm:.4g}",
                              str(det.densities["trough"].count),
                              str(det.densities["peak"].count),
                              f"{tot.per_cm2:.3g} ({tot.ci95_low_per_cm2:.2g}-"
                              f"{tot.ci95_high_per_cm2:.2g})", f"{conf:.2f}",
                              f"{det.seconds:.2f}")
            bar.update(task, completed=k + 1)
    if not as_json and table.row_count:
        out.print(table)
        if overlay is not None:
            out.print(f"overlays written to {overlay}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders -> their .sxm files (case-insensitive), sorted."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix.lower() == ".sxm")
        else:
            files.append(p)
    return files
