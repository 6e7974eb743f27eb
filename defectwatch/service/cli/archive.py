"""``defectwatch reprocess --workers N | --scheduler ADDRESS``: the archive re-scored on Dask.

Not a command of its own: ``reprocess`` (in `cli/models.py`) hands over here when it is asked for
Dask; the work is `defectwatch.service.archive.rescore_archive`.
"""

from __future__ import annotations

import threading

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from defectwatch.errors import DefectwatchError
from defectwatch.service.cli.common import _database, _fail, err, out


def reprocess_on_dask(
    db: str | None,
    *,
    everything: bool,
    sample: str | None,
    workers: int | None,
    scheduler: str | None,
    path_map: list[str],
    channel: str | None,
) -> None:
    """Run ``rescore_archive`` with a progress bar (done / failed / remaining); list the
    failures with their reasons; exit 1 when any scan failed, 130 when interrupted."""
    from defectwatch.service.archive import parse_path_map, rescore_archive

    try:
        pairs = parse_path_map(path_map)
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    stop = threading.Event()
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn(
            "done {task.fields[done]} · failed {task.fields[failed]} · "
            "remaining {task.fields[remaining]}"
        ),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    task = bar.add_task("re-scoring on Dask", total=None, done=0, failed=0, remaining="?")

    def on_progress(done: int, failed: int, total: int) -> None:
        bar.update(
            task,
            completed=done + failed,
            total=max(total, 1),
            done=done,
            failed=failed,
            remaining=total - done - failed,
        )

    with _database(db) as engine, bar:
        result = rescore_archive(
            engine,
            everything=everything,
            sample=sample,
            workers=workers,
            scheduler=scheduler,
            path_map=pairs,
            channel=channel,
            on_progress=on_progress,
            stop=stop,
        )
    for path, why in result.failed:
        err.print(
            f"[yellow]failed:[/yellow] {escape(f'{path}: {why}')}", highlight=False, soft_wrap=True
        )
    rate = (result.recorded / result.seconds) if result.seconds > 0 else 0.0
    out.print(
        escape(
            f"re-scored {result.recorded} of {result.total} scan(s) with {result.model_version} "
            f"on Dask in {result.seconds:.0f} s ({rate:.2g} scans/s)"
            + (f"; {result.already} already scored" if result.already else "")
            + (f"; {len(result.failed)} failed" if result.failed else "")
        ),
        highlight=False,
    )
    if result.interrupted:
        out.print(
            escape(
                f"interrupted with {result.remaining} scan(s) left: run the same "
                f"command again to re-score them (nothing is recorded twice)"
            ),
            highlight=False,
        )
        raise typer.Exit(130)
    if result.failed:
        raise typer.Exit(1)
