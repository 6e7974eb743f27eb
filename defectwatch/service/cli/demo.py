"""``demo``: a simulated STM session written into a watched folder, recorded by the daemon,
then the density per sample."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from defectwatch.errors import DefectwatchError
from defectwatch.service.cli.common import _fail, _sci, out
from defectwatch.service.cli.record import density_table


def demo(
    outdir: Annotated[
        Path | None,
        typer.Option(
            help="Run in this new or empty folder and keep it (default: a temporary folder)."
        ),
    ] = None,
    scans: Annotated[
        int, typer.Option(min=1, max=100, help="How many scans the simulated session writes.")
    ] = 9,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the temporary folder (scans, database, log) afterwards."),
    ] = False,
    model: Annotated[
        Path | None, typer.Option(help="Model version directory (default: the shipped ensemble).")
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Then open the web app over the demo's record (keeps the folder; "
            "Ctrl+C stops it).",
        ),
    ] = False,
) -> None:
    """Watch a folder while a simulated STM session writes scans of three samples into it, then
    show the defect density of each sample (well under a minute of CPU)."""
    from defectwatch.service.demo import DemoOptions, demo_folder, run_demo

    try:
        with demo_folder(outdir, keep=keep or serve) as paths:
            out.print(
                f"[bold]defectwatch demo[/bold]: a simulated STM session written into "
                f"{escape(str(paths.watch_dir))}; the daemon records it in "
                f"{escape(str(paths.db_file))}",
                highlight=False,
            )
            out.print("starting the daemon (loading the model)...", highlight=False)
            result = run_demo(
                paths, options=DemoOptions(scans=scans), model_dir=model, on_event=_print_demo_event
            )
            out.print()
            out.print(
                f"[bold]Defect density per sample[/bold] (`defectwatch density`), "
                f"model {escape(result.model)}:",
                highlight=False,
            )
            out.print(density_table(result.density) if result.density else "no processed scans yet")
            if result.truth_per_cm2:
                reported = ", ".join(
                    f"{sample} {value:.3g}"
                    for sample, value in sorted(result.truth_reported_per_cm2.items())
                )
                out.print(
                    f"simulated truth, defects the model reports by its contrast rule "
                    f"(cm⁻²): {escape(reported)}",
                    highlight=False,
                )
                truth = ", ".join(
                    f"{sample} {value:.3g}"
                    for sample, value in sorted(result.truth_per_cm2.items())
                )
                out.print(
                    f"simulated truth, defects a labeller would mark (cm⁻²): {escape(truth)}",
                    highlight=False,
                )
                every = ", ".join(
                    f"{sample} {value:.3g}"
                    for sample, value in sorted(result.truth_all_per_cm2.items())
                )
                out.print(
                    f"simulated truth, every defect, faint ones included (cm⁻²): {escape(every)}",
                    highlight=False,
                )
            _print_demo_end(result)
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    if result.missing or result.failed:
        raise typer.Exit(1)
    if serve:
        from defectwatch.service.cli.serve import serve as serve_command

        serve_command(db=paths.db_url, host="127.0.0.1", port=8765, token=None, read_only=False)


def _print_demo_event(event: Any) -> None:
    """One line per thing that happened in the demo."""
    t = f"[dim]{event.elapsed_s:5.1f} s[/dim]"
    if event.kind == "started":
        out.print(f"{t}  daemon watching, model {escape(event.model or '?')}", highlight=False)
    elif event.kind == "written":
        out.print(
            f"{t}  [dim]wrote    {escape(f'{event.sample}/{event.path.name}')}[/dim]",
            highlight=False,
        )
    elif event.kind == "recorded":
        s = event.scan
        where = escape(f"[{event.index}/{event.total}] {s['sample']}/{s['file']}")
        if s["status"] == "done":
            c = s["counts"] or {}
            seconds = f", {s['seconds']:.1f} s" if s["seconds"] is not None else ""
            out.print(
                f"{t}  [green]recorded[/green] {where}: {c.get('trough', 0)} trough, "
                f"{c.get('peak', 0)} peak, {_sci(s['density_per_cm2'])} cm⁻²{seconds}",
                highlight=False,
            )
        else:
            out.print(
                f"{t}  [red]failed[/red]   {where}: {escape(str(s['last_error']))}", highlight=False
            )
    elif event.kind == "stopped":
        out.print(f"{t}  daemon stopped", highlight=False)


def _print_demo_end(result: Any) -> None:
    """Where things are, what went wrong, and what to try next."""
    paths = result.paths
    for path in result.missing:
        _fail(escape(f"{path}: not recorded within the demo's time limit (see {paths.log_file})"))
    for s in result.failed:
        _fail(escape(f"{s['path']}: failed: {s['last_error']}"))
    out.print(f"\n{len(result.scans)} scans recorded in {result.seconds:.0f} s.", highlight=False)
    if not paths.kept:
        out.print(
            "The demo's folder was temporary and is gone; `defectwatch demo --keep` "
            "(or --outdir DIR) keeps the scans, database and log to try more commands.",
            highlight=False,
        )
        return
    first = result.written[0] if result.written else paths.watch_dir
    out.print(
        escape(
            f"scans:    {paths.watch_dir}  (truth CSV beside each .sxm)\n"
            f"database: {paths.db_file}\n"
            f"log:      {paths.log_file}"
        ),
        highlight=False,
        soft_wrap=True,
    )
    db, q = shlex.quote(str(paths.db_file)), shlex.quote
    out.print(
        f"Open the lab's window on it: [bold]defectwatch serve --db {escape(db)}[/bold] "
        "(then http://127.0.0.1:8765/ in a browser; or `defectwatch demo --serve`)",
        highlight=False,
        soft_wrap=True,
    )
    out.print("Try:", highlight=False)
    for command in (
        f"defectwatch density --db {db}",
        f"defectwatch scans --db {db}",
        f"defectwatch defects {q(first.name)} --db {db}",
        f"defectwatch process {q(str(first))} --overlay {q(str(paths.root / 'overlays'))} --no-db",
        f"defectwatch watch {q(str(paths.watch_dir))} --recursive --db {db}",
    ):
        out.print(f"  {escape(command)}", highlight=False, soft_wrap=True)
