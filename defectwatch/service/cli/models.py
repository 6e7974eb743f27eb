"""Commands for model versions: ``models list | activate | rollback`` and ``reprocess``.
Registered on the main app by the table in ``cli/__init__.py``.
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from defectwatch.service.cli.common import DbOption, _database, _progress, err, out

models_app = typer.Typer(help="Model versions: list, activate, roll back.", no_args_is_help=True)


def _metrics_summary(metrics: dict[str, Any], *, limit: int = 4) -> str:
    """A few numeric metrics as ``key=value`` (nested keys joined with dots)."""
    flat: list[tuple[str, float]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            flat.append((prefix, float(value)))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)

    walk("", metrics)
    preferred = sorted(flat, key=lambda kv: ("f1" not in kv[0].lower(), kv[0]))
    shown = " ".join(f"{k}={v:.3g}" for k, v in preferred[:limit])
    return shown + (f" (+{len(flat) - limit})" if len(flat) > limit else "") or "-"


@models_app.command("list")
def models_list(
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="A JSON list of {version, active, created_at, parent, members, metrics}."
        ),
    ] = False,
    db: DbOption = None,
) -> None:
    """Registered model versions, oldest first; the active one is marked."""
    from defectwatch.service.model_versions import versions_report
    from defectwatch.service.retrain_runs import runs_report

    with _database(db, create=True) as engine:
        rows = versions_report(engine)
        last = runs_report(engine, limit=1)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("", "version", "created (UTC)", "parent", "members", "metrics", "retrain")
    for r in rows:
        made = r.get("retrain")
        table.add_row(
            "[green]*[/green]" if r["active"] else "",
            escape(r["version"]),
            (r["created_at"] or "-")[:19].replace("T", " "),
            escape(r["parent"] or "-"),
            str(r["members"]),
            escape(_metrics_summary(r["metrics"])),
            escape(f"{made['outcome']}: {made['reason']}") if made else "-",
        )
    out.print(table)
    if last:
        out.print(
            escape(f"last retrain {last_retrain_line(last[0])}"), highlight=False, soft_wrap=True
        )


def last_retrain_line(run: dict[str, Any]) -> str:
    """``2026-12-04 02:00 UTC: skipped (why)`` for one `runs_report` entry."""
    when = (run["started_at"] or "-")[:16].replace("T", " ")
    what = run["outcome"] + (f" {run['version']}" if run.get("version") else "")
    return f"{when} UTC: {what} ({run['reason']})"


@models_app.command("activate")
def models_activate(
    version: Annotated[str, typer.Argument(help="A registered version's name.")],
    db: DbOption = None,
) -> None:
    """Make VERSION the active model (the daemon takes it between scans). Refused when its
    directory no longer loads."""
    from defectwatch.service.model_versions import activate

    with _database(db, create=True) as engine:
        s = activate(engine, version)
    if not s.changed:
        out.print(escape(f"{s.version} is already the active version"), highlight=False)
        return
    out.print(escape(f"activated {s.version} (was {s.previous or '-'})"), highlight=False)


@models_app.command("rollback")
def models_rollback(db: DbOption = None) -> None:
    """Undo the latest activation: the previously active version is active again."""
    from defectwatch.service.model_versions import rollback

    with _database(db, create=True) as engine:
        s = rollback(engine)
    out.print(escape(f"rolled back to {s.version} (was {s.previous or '-'})"), highlight=False)


def reprocess(
    sample: Annotated[str | None, typer.Option(help="Only this sample's scans.")] = None,
    outdated: Annotated[
        bool,
        typer.Option("--outdated", help="Only scans whose latest run used another model version."),
    ] = False,
    channel: Annotated[
        str | None,
        typer.Option(help="Channel to analyse (default: the one each scan was recorded with)."),
    ] = None,
    db: DbOption = None,
    everything: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every scan (in one process: the default). On Dask, where a scan is "
            "never scored twice by one version, --outdated is the default and --all adds scans "
            "that failed or were never scored.",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            metavar="N",
            help="Run on Dask: a local cluster of N worker processes, each loading the model once.",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="ADDRESS",
            help="Run on a running Dask cluster, e.g. tcp://head-node:8786 (dask-jobqueue on "
            "SLURM, one worker per GPU...).",
        ),
    ] = None,
    path_map: Annotated[
        list[str] | None,
        typer.Option(
            "--path-map",
            metavar="OLD=NEW",
            help="Dask workers see recorded paths under OLD at NEW (repeatable).",
        ),
    ] = None,
) -> None:
    """Re-score recorded .sxm scans with the active model version; earlier runs are kept and
    densities use each scan's latest run. With --workers/--scheduler on Dask distributed:
    each scan recorded once per model version however often it runs; Ctrl-C and run again to
    resume."""
    if outdated and everything:
        err.print("[red]error:[/red] --outdated and --all: choose one", highlight=False)
        raise typer.Exit(1)
    if workers is not None or scheduler is not None or path_map:
        from defectwatch.service.cli.archive import reprocess_on_dask

        reprocess_on_dask(
            db,
            everything=everything,
            sample=sample,
            workers=workers,
            scheduler=scheduler,
            path_map=path_map or [],
            channel=channel,
        )
        return
    from defectwatch.service.reprocess import reprocess as run_reprocess

    with _database(db) as engine, _progress() as bar:
        task = bar.add_task("re-scoring", total=None)
        result = run_reprocess(
            engine,
            sample=sample,
            outdated=outdated,
            channel=channel,
            on_progress=lambda i, n: bar.update(task, completed=i, total=n),
        )
        bar.update(task, total=max(result.considered, 1), completed=max(result.considered, 1))
    for path, why in result.skipped:
        err.print(
            f"[yellow]warning:[/yellow] {escape(f'{path}: not re-scored: {why}')}",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        escape(
            f"re-scored {len(result.rescored)} of {result.considered} scan(s) with "
            f"{result.model_version}"
            + (f"; {len(result.skipped)} skipped" if result.skipped else "")
        ),
        highlight=False,
    )
    for r in result.rescored:
        out.print(
            escape(f"  {PurePath(r.path).name}: {r.defects} defects (was {r.previous_version})"),
            highlight=False,
        )
