"""Commands that ask the record: ``samples``, ``samples rename``, ``density``, ``scans``,
``defects``, ``status``. Registered on the main app by the table in ``cli/__init__.py``.

Every command takes ``--db URL`` (default ``DEFECTWATCH_DB``, else the SQLite file in the user's
data directory). Errors: one line on stderr and exit 1.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import PurePath
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from defectwatch.domain import DEFECT_TABLE_COLUMNS
from defectwatch.service.cli.common import DbOption, _database, _fail, _sci, out

if TYPE_CHECKING:
    from defectwatch.service.queries import SampleDensity

InstrumentOption = Annotated[
    str | None,
    typer.Option(
        "--instrument",
        metavar="NAME",
        show_default=False,
        help="Only the scans of this instrument (see `defectwatch status`).",
    ),
]

samples_app = typer.Typer(
    help="Samples: scan counts, scanned area, latest scan, densities.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _when(iso: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS`` (UTC for ours)."""
    return (iso or "-")[:19].replace("T", " ")


def _area(nm2: float) -> str:
    return f"{nm2:,.0f}" if nm2 < 1e6 else f"{nm2:.3g}"


@samples_app.callback()
def samples(
    ctx: typer.Context,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list.")] = False,
    instrument: InstrumentOption = None,
) -> None:
    """Samples with scan counts, scanned area, latest scan and densities."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"db": db}
        return
    from defectwatch.service.queries import samples_overview

    with _database(db) as engine:
        rows = samples_overview(engine, instrument=instrument)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        "sample",
        "scans",
        "done",
        "failed",
        "pending",
        "area nm²",
        "latest scan",
        "seen (UTC)",
        "trough cm⁻²",
        "peak cm⁻²",
        "total cm⁻²",
    )
    for r in rows:
        d = r["density_per_cm2"]
        table.add_row(
            r["sample"] or "(none)",
            str(r["scans"]),
            str(r["done"]),
            str(r["failed"]),
            str(r["pending"]),
            _area(r["area_nm2"]),
            PurePath(r["latest_path"]).name if r["latest_path"] else "-",
            _when(r["latest_seen_at"]),
            _sci(d["trough"]),
            _sci(d["peak"]),
            _sci(d["total"]),
        )
    out.print(table if rows else "no samples recorded yet")


@samples_app.command("rename")
def samples_rename(
    ctx: typer.Context,
    old: Annotated[str, typer.Argument(help="Current sample name.")],
    new: Annotated[str, typer.Argument(help="New name (merged if it exists).")],
    db: DbOption = None,
) -> None:
    """Rename a sample; when NEW exists, OLD's scans are merged into it."""
    from defectwatch.service.queries import rename

    with _database(db or (ctx.obj or {}).get("db")) as engine:
        what = rename(engine, old, new)
    out.print(
        {
            "renamed": f"renamed {old} -> {new}",
            "merged": f"merged {old} into {new}",
            "unchanged": f"{old}: unchanged",
        }[what],
        highlight=False,
    )


def density(
    samples: Annotated[
        list[str] | None,
        typer.Argument(
            help="Sample names (default: every sample with a processed scan).", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of objects.")] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV, one row per sample and kind.")
    ] = False,
    db: DbOption = None,
    instrument: InstrumentOption = None,
) -> None:
    """Defect density per sample and kind (per cm², area-weighted) with a 95% interval.

    The density is the detected count corrected by the model version's calibration (its
    recall and false detections per kind) and the interval holds both the counting noise and
    the calibration's uncertainty; the detected ("raw") density is shown beside it. A version
    without a calibration reports the raw count with its Poisson interval ("uncalibrated").
    """
    from defectwatch.service.queries import density_report

    if as_json and as_csv:
        _fail("--json and --csv: choose one")
        raise typer.Exit(1)
    with _database(db) as engine:
        report = density_report(engine, samples or None, instrument=instrument)
    if as_json:
        print(json.dumps([r.to_json() for r in report], indent=2))
        return
    if as_csv:
        from defectwatch.service.queries import DENSITY_COLUMNS, density_rows

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(DENSITY_COLUMNS)
        for row in density_rows(report):
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row.values()])
        return
    out.print(density_table(report) if report else "no processed scans yet")
    for r in report:
        out.print(
            f"{escape(r.sample or '(none)')}: "
            + (
                f"corrected, {escape(r.calibration)}"
                if r.corrected
                else "uncalibrated (the version carries no calibration): detected count, "
                "Poisson interval"
            ),
            highlight=False,
        )


def density_table(report: list[SampleDensity]) -> Table:
    """The ``density`` table: per sample and kind, scans, defects, area, density (corrected by
    the version's calibration when it has one), 95% interval, detected density (``demo`` prints
    the same table)."""
    from defectwatch.service.queries import KINDS

    corrected = any(r.corrected for r in report)
    table = Table(
        "sample",
        "kind",
        "scans",
        "defects",
        "area nm²",
        "density cm⁻² (corrected)" if corrected else "density cm⁻²",
        "95% interval cm⁻²",
        "detected cm⁻²",
        caption="corrected: detected count x precision / recall of the model "
        "version (its calibration); the interval holds counting noise and "
        "the calibration's uncertainty"
        if corrected
        else None,
    )
    for r in report:
        for i, k in enumerate(KINDS):
            lo, hi = r.ci95_per_cm2[k]
            table.add_row(
                r.sample or "(none)" if i == 0 else "",
                k,
                str(r.scans) if i == 0 else "",
                str(r.counts[k]),
                _area(r.area_nm2) if i == 0 else "",
                _sci(r.density_per_cm2[k]),
                f"{_sci(lo)} – {_sci(hi)}",
                _sci(r.raw_density_per_cm2[k]),
                end_section=k == "total",
            )
    return table


def scans(
    sample: Annotated[str | None, typer.Option(help="Only this sample.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only this status: queued, processing, done or failed.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many (newest).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list.")] = False,
    db: DbOption = None,
    instrument: InstrumentOption = None,
) -> None:
    """Recorded scans, newest first: sample, status, size, defects, density, errors."""
    from defectwatch.service.queries import scans_report

    with _database(db) as engine:
        rows = scans_report(
            engine, sample=sample, status=status, limit=limit, instrument=instrument
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        "id",
        "file",
        "sample",
        "status",
        "recorded",
        "px",
        "nm",
        "trough",
        "peak",
        "total cm⁻²",
        "model",
        "note",
    )
    table.columns[1].overflow = "fold"
    for r in rows:
        c = r["counts"] or {}
        note = r["last_error"] or ""
        if r["status"] != "done" and r["attempts"]:
            note = f"attempt {r['attempts']}" + (f": {note}" if note else "")
        table.add_row(
            str(r["id"]),
            r["file"],
            r["sample"] or "-",
            r["status"],
            (r["recorded_at"] or "-")[:16].replace("T", " "),
            f"{r['nx']}x{r['ny']}" if r["nx"] else "-",
            f"{r['width_nm']:.4g}" if r["width_nm"] else "-",
            str(c.get("trough", "-")),
            str(c.get("peak", "-")),
            _sci(r["density_per_cm2"]),
            r["model_version"] or "-",
            note,
        )
    out.print(table if rows else "no scans match")


def defects(
    scan: Annotated[str, typer.Argument(help="Scan id, path or file name.")],
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list.")] = False,
    db: DbOption = None,
) -> None:
    """The defects of a scan's latest detection run (row 0 = top of the frame)."""
    from defectwatch.service.queries import defects_report

    if as_json and as_csv:
        _fail("--json and --csv: choose one")
        raise typer.Exit(1)
    with _database(db) as engine:
        info, rows = defects_report(engine, scan)
    fields = list(DEFECT_TABLE_COLUMNS)
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if info["run_id"] is None:
        out.print(
            f"scan {info['id']} ({info['path']}) is {info['status']}: not processed yet",
            highlight=False,
        )
        return
    table = Table(
        *fields,
        title=f"scan {info['id']}: {info['path']} · sample "
        f"{info['sample'] or '-'} · model {info['model_version']} · "
        f"{len(rows)} defects",
    )
    for d in rows:
        table.add_row(
            f"{d['row']:.1f}",
            f"{d['col']:.1f}",
            f"{d['x_nm']:.2f}",
            f"{d['y_nm']:.2f}",
            d["kind"],
            f"{d['confidence']:.2f}",
            f"{d['uncertainty']:.3f}",
            f"{d['area_nm2']:.2f}",
            "-" if d["contrast"] is None else f"{d['contrast']:+.1f}",
        )
    out.print(table)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    db: DbOption = None,
) -> None:
    """Is the daemon alive, queue depth, last scan processed, failures, active model."""
    from defectwatch.service.queries import status_report

    with _database(db) as engine:
        s = status_report(engine)
    if as_json:
        print(json.dumps(s, indent=2))
        return
    _print_status(s)


def _daemon_state(d: dict[str, Any]) -> str:
    if d["alive"]:
        return "[green]alive[/green]"
    return "stopped" if d["stopped_at"] else "[red]silent[/red]"


def _print_status(s: dict[str, Any]) -> None:
    if s["daemon_alive"]:
        d = s["daemons"][0]
        alive = (
            f"[green]alive[/green] (pid {d['pid']} on {d['host']}, "
            f"since {_when(d['started_at'])} UTC)"
        )
        if len(s["daemons"]) > 1:
            alive += f" +{len(s['daemons']) - 1} more"
    else:
        alive = "[red]not running[/red]" + (
            f" (last heartbeat {_when(s['last_beat_at'])} UTC)" if s["last_beat_at"] else ""
        )
    c = s["status_counts"]
    last = s["last_processed"]
    model = s["active_model"]
    table = Table(show_header=False, box=None)
    table.add_row("daemon", alive)
    for i in s.get("instruments", []):  # every daemon's heartbeat, per instrument
        beats = "; ".join(
            f"{_daemon_state(d)} pid {d['pid']} on {escape(d['host'])}, last "
            f"beat {_when(d['beat_at'])} UTC"
            for d in i["daemons"]
        )
        table.add_row(f"  {escape(i['instrument'] or '(unnamed)')}", beats)
    table.add_row(
        "queue", f"{s['queue_depth']} ({c['queued']} queued, {c['processing']} processing)"
    )
    table.add_row("done", str(c["done"]))
    table.add_row(
        "last processed",
        f"{last['path']} at {_when(last['finished_at'])} UTC "
        f"({last['defects']} defects, {last['model_version']})"
        if last
        else "-",
    )
    table.add_row("failed", str(s["failures"]))
    for f in s["recent_failures"]:
        table.add_row("", f"{PurePath(f['path']).name}: {f['error'] or '?'}")
    table.add_row(
        "active model",
        f"{model['name']} ({model['directory']})"
        if model
        else "none registered yet (the shipped default is registered at the first scan)",
    )
    run = s.get("last_retrain")
    if run:
        when = (run["started_at"] or "-")[:16].replace("T", " ")
        what = run["outcome"] + (f" {run['version']}" if run.get("version") else "")
        table.add_row("last retrain", escape(f"{when} UTC: {what} ({run['reason']})"))
    out.print(table)
