"""``inspect`` and ``simulate``: what a scan file holds, and simulated scans to try things on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from defectwatch.errors import DefectwatchError
from defectwatch.service.cli.common import _fail, _progress, out


def inspect(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="One or more scan files (.sxm, .sm4, MATRIX *_mtrx, Createc .dat, .gwy)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    channel: Annotated[str, typer.Option(help="Channel to check (Z, Current, ...).")] = "Z",
) -> None:
    """Show what each scan file holds: size, pixels, bias, setpoint, date, acquired share."""
    from defectwatch.service.scans import scan_summary

    table = Table(
        "file",
        "pixels",
        "size nm",
        "nm/px",
        "dir",
        "angle",
        "bias V",
        "setpoint",
        "recorded",
        "acquired",
        "feedback",
        "channels",
    )
    table.columns[0].no_wrap = True
    failed = 0
    for path in files:
        try:
            s = scan_summary(path, channel=channel)
        except DefectwatchError as exc:
            failed += 1
            _fail(str(exc))
            continue
        if as_json:
            print(json.dumps(s), flush=True)
            continue
        table.add_row(
            Path(s["path"]).name,
            f"{s['nx']}x{s['ny']}",
            f"{s['width_nm']:.4g}x{s['height_nm']:.4g}",
            "x".join(f"{v:.3g}" for v in s["pixel_size_nm"]),
            s["scan_dir"],
            f"{s['angle_deg']:.4g}",
            _num(s["bias_v"]),
            _num(s["setpoint_a"], "A"),
            (s["recorded_at"] or "-").replace("T", " "),
            f"{s['acquired_fraction']:.0%}",
            "const height" if s["constant_height"] else "const current",
            _channels(s["channels"]),
        )
    if not as_json and table.row_count:
        out.print(table)
    if failed:
        raise typer.Exit(1)


def _channels(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{', '.join(names[:3])} +{len(names) - 3}"


def _num(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value:.4g}{(' ' + unit) if unit else ''}"


def simulate(
    outdir: Annotated[Path, typer.Argument(help="Folder to write .sxm, truth .csv (and .png).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scans.")] = 4,
    material: Annotated[str, typer.Option(help="wse2 or mose2.")] = "wse2",
    mode: Annotated[str, typer.Option(help="stm or cafm.")] = "stm",
    size_nm: Annotated[float, typer.Option("--size-nm", min=1.0, help="Frame width, nm.")] = 50.0,
    pixels: Annotated[int, typer.Option(min=16, max=8192, help="Pixels per side.")] = 512,
    density: Annotated[
        float | None,
        typer.Option(help="Defects per cm^2 (default: drawn log-uniform in 1e10-1e13 per scan)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of scan 0; scan i uses seed + i.")] = 0,
    preview: Annotated[
        bool, typer.Option(help="Also write a PNG: flattened scan + truth.")
    ] = False,
    clean: Annotated[
        bool, typer.Option(help="No artifacts (tilt, noise, tip changes...).")
    ] = False,
    clusters: Annotated[
        bool,
        typer.Option(
            help="Add clusters of bright adsorbate blobs (STM), each blob a labelled peak."
        ),
    ] = False,
    broad: Annotated[
        bool,
        typer.Option(
            help="Widen every scan by the broadened families (shapes, halos, sombrero rings, "
            "lattice and moire, 2-D 1/f and line noise, tips and ghosts, drift, quantised)."
        ),
    ] = False,
    family: Annotated[
        list[str] | None,
        typer.Option(
            "--family",
            help="Widen every scan by this broadened family only (repeat for several): "
            "shapes, halos, rings, lattice, noise, line_noise, tips, drift, quantised.",
        ),
    ] = None,
) -> None:
    """Write realistic simulated STM / C-AFM scans with their ground truth."""
    from defectwatch.pipeline.simulate import BROAD_FAMILIES
    from defectwatch.service.simulation import write_simulated_scans

    material = material.lower()
    mode = mode.lower()
    if material not in ("wse2", "mose2"):
        _fail(f"--material {material!r}: choose wse2 or mose2")
        raise typer.Exit(1)
    if mode not in ("stm", "cafm"):
        _fail(f"--mode {mode!r}: choose stm or cafm")
        raise typer.Exit(1)
    families = tuple(dict.fromkeys(f.lower() for f in family or ()))
    unknown = [f for f in families if f not in BROAD_FAMILIES]
    if unknown:
        _fail(f"--family {unknown[0]!r}: choose from {', '.join(BROAD_FAMILIES)}")
        raise typer.Exit(1)
    if families and broad:
        _fail("--broad widens by every family; give it or --family, not both")
        raise typer.Exit(1)
    if density is not None and not (1e8 <= density <= 1e14):
        _fail(f"--density {density:g}: expected defects per cm^2 between 1e8 and 1e14")
        raise typer.Exit(1)
    with _progress() as bar:
        task = bar.add_task("simulating", total=n)
        written = write_simulated_scans(
            outdir,
            n=n,
            material=material,
            mode=mode,
            size_nm=size_nm,
            pixels=pixels,
            density_per_cm2=density,
            seed=seed,
            preview=preview,
            artifacts=not clean,
            clusters=clusters,
            broad=families or broad,
            on_progress=lambda done, total: bar.update(task, completed=done),
        )
    for w in written:
        extra = f" + {w.preview.name}" if w.preview else ""
        out.print(f"{w.sxm}  ({w.defects} defects, {w.visible} visible){extra}", highlight=False)
