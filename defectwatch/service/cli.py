"""The `defectwatch` command line: a thin layer over the use cases.

Errors a user can cause come out as one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from defectwatch.errors import DefectwatchError
from defectwatch.service.logging_setup import configure_logging

app = typer.Typer(
    help="defectwatch: find and count point defects in STM scans of 2D semiconductors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
log = logging.getLogger(__name__)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                                help="Log debug detail to stderr.")] = False
          ) -> None:
    configure_logging(logging.DEBUG if verbose else logging.WARNING)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


@app.command()
def inspect(
    files: Annotated[list[Path], typer.Argument(help="One or more .sxm files.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    channel: Annotated[str, typer.Option(help="Channel to check (Z, Current, ...).")] = "Z",
) -> None:
    """Show what each scan file holds: size, pixels, bias, setpoint, date, acquired share."""
    from defectwatch.service.scans import scan_summary

    table = Table("file", "pixels", "size nm", "nm/px", "dir", "angle", "bias V", "setpoint",
                  "recorded", "acquired", "feedback", "channels")
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
            Path(s["path"]).name, f"{s['nx']}x{s['ny']}",
            f"{s['width_nm']:.4g}x{s['height_nm']:.4g}",
            "x".join(f"{v:.3g}" for v in s["pixel_size_nm"]), s["scan_dir"],
            f"{s['angle_deg']:.4g}", _num(s["bias_v"]), _num(s["setpoint_a"], "A"),
            (s["recorded_at"] or "-").replace("T", " "), f"{s['acquired_fraction']:.0%}",
            "const height" if s["constant_height"] else "const current", _channels(s["channels"]))
    if not as_json and table.row_count:
        out.print(table)
    if failed:
        raise typer.Exit(1)


def _channels(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{', '.join(names[:3])} +{len(names) - 3}"


def _num(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value:.4g}{(' ' + unit) if unit else ''}"


@app.command()
def simulate(
    outdir: Annotated[Path, typer.Argument(help="Folder to write .sxm, truth .csv (and .png).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scans.")] = 4,
    material: Annotated[str, typer.Option(help="wse2 or mose2.")] = "wse2",
    mode: Annotated[str, typer.Option(help="stm or cafm.")] = "stm",
    size_nm: Annotated[float, typer.Option("--size-nm", min=1.0, help="Frame width, nm.")] = 50.0,
    pixels: Annotated[int, typer.Option(min=16, max=8192, help="Pixels per side.")] = 512,
    density: Annotated[float | None, typer.Option(
        help="Defects per cm^2 (default: drawn log-uniform in 1e10-1e13 per scan).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of scan 0; scan i uses seed + i.")] = 0,
    preview: Annotated[bool, typer.Option(help="Also write a PNG: flattened scan + truth.")
                       ] = False,
    clean: Annotated[bool, typer.Option(help="No artifacts (tilt, noise, tip changes...).")
                     ] = False,
) -> None:
    """Write realistic simulated STM / C-AFM scans with their ground truth."""
    from defectwatch.service.simulation import write_simulated_scans

    material = material.lower()
    mode = mode.lower()
    if material not in ("wse2", "mose2"):
        _fail(f"--material {material!r}: choose wse2 or mose2")
        raise typer.Exit(1)
    if mode not in ("stm", "cafm"):
        _fail(f"--mode {mode!r}: choose stm or cafm")
        raise typer.Exit(1)
    if density is not None and not (1e8 <= density <= 1e14):
        _fail(f"--density {density:g}: expected defects per cm^2 between 1e8 and 1e14")
        raise typer.Exit(1)
    with _progress() as bar:
        task = bar.add_task("simulating", total=n)
        written = write_simulated_scans(
            outdir, n=n, material=material, mode=mode, size_nm=size_nm, pixels=pixels,
            density_per_cm2=density, seed=seed, preview=preview, artifacts=not clean,
            on_progress=lambda done, total: bar.update(task, completed=done))
    for w in written:
        extra = f" + {w.preview.name}" if w.preview else ""
        out.print(f"{w.sxm}  ({w.defects} defects, {w.visible} visible){extra}", highlight=False)


@app.command()
def demo(
    outdir: Annotated[Path | None, typer.Option(
        help="Keep the demo's files here (default: a temporary folder).")] = None,
) -> None:
    """Simulate a short session (three scans of two samples) and inspect what was written."""
    from defectwatch.service.scans import scan_summary
    from defectwatch.service.simulation import write_simulated_scans

    folder = outdir or Path(tempfile.mkdtemp(prefix="defectwatch-demo-"))
    plan = [("WSe2-SL445", "wse2", "stm", 0), ("WSe2-SL445", "wse2", "stm", 1),
            ("MoSe2-M12", "mose2", "stm", 2)]
    out.print(f"[bold]defectwatch demo[/bold]: writing simulated scans into {folder}")
    written = []
    with _progress() as bar:
        task = bar.add_task("scanning", total=len(plan))
        for k, (sample, material, mode, seed) in enumerate(plan):
            written += write_simulated_scans(folder / sample, n=1, material=material, mode=mode,
                                             seed=seed, preview=True, prefix=f"STM_{sample}")
            bar.update(task, completed=k + 1)
    table = Table("sample", "file", "px", "nm", "bias V", "acquired", "true defects",
                  "visible")
    for (sample, *_), w in zip(plan, written):
        s = scan_summary(w.sxm, channel="Z")
        table.add_row(sample, w.sxm.name, f"{s['nx']}x{s['ny']}",
                      f"{s['width_nm']:.4g}", _num(s["bias_v"]), f"{s['acquired_fraction']:.0%}",
                      str(w.defects), str(w.visible))
    out.print(table)
    out.print("Previews (flattened scan, truth overlaid):", highlight=False)
    for w in written:
        out.print(f"  {w.preview}", highlight=False)


from defectwatch.service import cli_detect  # noqa: E402,F401  (process, evaluate)
from defectwatch.service import cli_record  # noqa: E402,F401  (samples, density, scans, ...)
from defectwatch.service import cli_watch  # noqa: E402,F401  (watch)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DefectwatchError as exc:  # anything a command did not translate itself
        _fail(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
