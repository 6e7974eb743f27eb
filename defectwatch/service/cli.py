"""The `defectwatch` command line: a thin layer over the use cases.

Errors a user can cause come out as one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
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
    clusters: Annotated[bool, typer.Option(
        help="Add clusters of bright adsorbate blobs (STM), each blob a labelled peak.")
    ] = False,
    broad: Annotated[bool, typer.Option(
        help="Widen every scan by the broadened families (shapes, halos, sombrero rings, "
             "lattice and moire, 2-D 1/f and line noise, tips and ghosts, drift, quantised).")
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
            clusters=clusters, broad=broad,
            on_progress=lambda done, total: bar.update(task, completed=done))
    for w in written:
        extra = f" + {w.preview.name}" if w.preview else ""
        out.print(f"{w.sxm}  ({w.defects} defects, {w.visible} visible){extra}", highlight=False)


@app.command()
def demo(
    outdir: Annotated[Path | None, typer.Option(
        help="Run in this new or empty folder and keep it (default: a temporary folder).")
    ] = None,
    scans: Annotated[int, typer.Option(min=1, max=100,
                                       help="How many scans the simulated session writes.")
                     ] = 9,
    keep: Annotated[bool, typer.Option(
        "--keep", help="Keep the temporary folder (scans, database, log) afterwards.")
    ] = False,
    model: Annotated[Path | None, typer.Option(
        help="Model version directory (default: the shipped ensemble).")] = None,
) -> None:
    """Watch a folder while a simulated STM session writes scans of three samples into it, then
    show the defect density of each sample (well under a minute of CPU)."""
    from defectwatch.service.cli_record import density as density_command
    from defectwatch.service.demo import DemoOptions, demo_folder, run_demo

    try:
        with demo_folder(outdir, keep=keep) as paths:
            out.print(f"[bold]defectwatch demo[/bold]: a simulated STM session written into "
                      f"{escape(str(paths.watch_dir))}; the daemon records it in "
                      f"{escape(str(paths.db_file))}", highlight=False)
            out.print("starting the daemon (loading the model)...", highlight=False)
            result = run_demo(paths, options=DemoOptions(scans=scans), model_dir=model,
                              on_event=_print_demo_event)
            out.print()
            out.print(f"[bold]Defect density per sample[/bold] (`defectwatch density`), "
                      f"model {escape(result.model)}:", highlight=False)
            density_command(samples=None, as_json=False, as_csv=False, db=paths.db_url)
            if result.truth_per_cm2:
                reported = ", ".join(f"{sample} {value:.3g}" for sample, value
                                     in sorted(result.truth_reported_per_cm2.items()))
                out.print(f"simulated truth, defects the model reports by its contrast rule "
                          f"(cm⁻²): {escape(reported)}", highlight=False)
                truth = ", ".join(f"{sample} {value:.3g}" for sample, value
                                  in sorted(result.truth_per_cm2.items()))
                out.print(f"simulated truth, defects a labeller would mark (cm⁻²): "
                          f"{escape(truth)}", highlight=False)
                every = ", ".join(f"{sample} {value:.3g}" for sample, value
                                  in sorted(result.truth_all_per_cm2.items()))
                out.print(f"simulated truth, every defect, faint ones included (cm⁻²): "
                          f"{escape(every)}", highlight=False)
            _print_demo_end(result)
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    if result.missing or result.failed:
        raise typer.Exit(1)


def _print_demo_event(event: Any) -> None:
    """One line per thing that happened in the demo."""
    t = f"[dim]{event.elapsed_s:5.1f} s[/dim]"
    if event.kind == "started":
        out.print(f"{t}  daemon watching, model {escape(event.model or '?')}",
                  highlight=False)
    elif event.kind == "written":
        out.print(f"{t}  [dim]wrote    {escape(f'{event.sample}/{event.path.name}')}[/dim]",
                  highlight=False)
    elif event.kind == "recorded":
        s = event.scan
        where = escape(f"[{event.index}/{event.total}] {s['sample']}/{s['file']}")
        if s["status"] == "done":
            c = s["counts"] or {}
            seconds = f", {s['seconds']:.1f} s" if s["seconds"] is not None else ""
            out.print(f"{t}  [green]recorded[/green] {where}: {c.get('trough', 0)} trough, "
                      f"{c.get('peak', 0)} peak, {_sci(s['density_per_cm2'])} cm⁻²{seconds}",
                      highlight=False)
        else:
            out.print(f"{t}  [red]failed[/red]   {where}: {escape(str(s['last_error']))}",
                      highlight=False)
    elif event.kind == "stopped":
        out.print(f"{t}  daemon stopped", highlight=False)


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _print_demo_end(result: Any) -> None:
    """Where things are, what went wrong, and what to try next."""
    paths = result.paths
    for path in result.missing:
        _fail(escape(f"{path}: not recorded within the demo's time limit "
                     f"(see {paths.log_file})"))
    for s in result.failed:
        _fail(escape(f"{s['path']}: failed: {s['last_error']}"))
    out.print(f"\n{len(result.scans)} scans recorded in {result.seconds:.0f} s.",
              highlight=False)
    if not paths.kept:
        out.print("The demo's folder was temporary and is gone; `defectwatch demo --keep` "
                  "(or --outdir DIR) keeps the scans, database and log to try more commands.",
                  highlight=False)
        return
    first = result.written[0] if result.written else paths.watch_dir
    out.print(escape(f"scans:    {paths.watch_dir}  (truth CSV beside each .sxm)\n"
                     f"database: {paths.db_file}\n"
                     f"log:      {paths.log_file}"), highlight=False, soft_wrap=True)
    out.print("Try:", highlight=False)
    db, q = shlex.quote(str(paths.db_file)), shlex.quote
    for command in (f"defectwatch density --db {db}",
                    f"defectwatch scans --db {db}",
                    f"defectwatch defects {q(first.name)} --db {db}",
                    f"defectwatch process {q(str(first))} --overlay "
                    f"{q(str(paths.root / 'overlays'))} --no-db",
                    f"defectwatch watch {q(str(paths.watch_dir))} --recursive --db {db}"):
        out.print(f"  {escape(command)}", highlight=False, soft_wrap=True)


from defectwatch.service import cli_detect  # noqa: E402,F401  (process, evaluate)
from defectwatch.service import cli_record  # noqa: E402,F401  (samples, density, scans, ...)
from defectwatch.service import cli_watch  # noqa: E402,F401  (watch)
from defectwatch.service import cli_retrain  # noqa: E402,F401  (retrain)
from defectwatch.service import cli_labels  # noqa: E402,F401  (labels, import-image)
from defectwatch.service import cli_models  # noqa: E402,F401  (models, reprocess)
from defectwatch.service import cli_service  # noqa: E402,F401  (service install/uninstall)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DefectwatchError as exc:  # anything a command did not translate itself
        _fail(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
