"""The ``defectwatch watch`` command (registered by the table in ``cli/__init__.py``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from defectwatch.errors import DefectwatchError
from defectwatch.pipeline.scan_names import DEFAULT_PATTERN
from defectwatch.service.cli.common import DbOption, _fail


def watch(
    dirs: Annotated[list[Path], typer.Argument(help="Folders the microscope writes scans into.")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also watch every sub-folder.")
    ] = False,
    poll: Annotated[
        float | None,
        typer.Option(
            "--poll",
            metavar="SECONDS",
            min=0.05,
            help="Poll the folders every SECONDS instead of OS events (network shares).",
        ),
    ] = None,
    pattern: Annotated[
        str,
        typer.Option(
            help="File name pattern(s), case-insensitive, comma-separated (default: every "
            "supported format: .sxm, .sm4, MATRIX .Z_mtrx, Createc .dat, .gwy)."
        ),
    ] = DEFAULT_PATTERN,
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="Process what is there (and what completes meanwhile), then exit."
        ),
    ] = False,
    db: DbOption = None,
    stable_for: Annotated[
        float,
        typer.Option(
            "--stable-for",
            metavar="SECONDS",
            min=0.0,
            help="A complete file must keep its size and mtime this long.",
        ),
    ] = 2.0,
    incomplete_after: Annotated[
        float,
        typer.Option(
            "--incomplete-after",
            metavar="SECONDS",
            min=0.0,
            help="Queue a file that stays incomplete this long (shorter than its header promises, "
            "or a MATRIX file without its _0001.mtrx chain file): it is retried, then failed "
            "with the reason.",
        ),
    ] = 60.0,
    sample_rule: Annotated[
        str | None,
        typer.Option(
            "--sample-rule",
            metavar="RULE",
            help="folder | comment | regex:<pattern with (?P<sample>...)> "
            "(default: DEFECTWATCH_SAMPLE_RULE, else folder).",
        ),
    ] = None,
    channel: Annotated[str, typer.Option(help="Channel to analyse (Z, Current, ...).")] = "Z",
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts", min=1, help="Tries for an incomplete file before it is failed."
        ),
    ] = 5,
    retry_delay: Annotated[
        float,
        typer.Option(
            "--retry-delay",
            metavar="SECONDS",
            min=0.0,
            help="First retry delay; doubles with each attempt.",
        ),
    ] = 10.0,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            metavar="SECONDS",
            min=1.0,
            help="How long a claimed scan is ours before another worker may take it over.",
        ),
    ] = 900.0,
    instrument: Annotated[
        str | None,
        typer.Option(
            "--instrument",
            metavar="NAME",
            help="The microscope these folders belong to, "
            "recorded on every scan (default: DEFECTWATCH_INSTRUMENT, else the host name).",
        ),
    ] = None,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log-file",
            help="Rotating log file (default: watch.log next to a SQLite database, "
            "else in the user's data folder).",
        ),
    ] = None,
) -> None:
    """Watch folders and record every scan's defects in the database (Ctrl-C: finish the scan
    under way and stop; twice: stop at once)."""
    from defectwatch.service.config import get_settings
    from defectwatch.service.watching import WatchOptions, configure_watch_logging, default_log_file
    from defectwatch.service.watching import watch as run_watch

    try:
        settings = get_settings()
        db_url = db or settings.db
        current = logging.getLogger("defectwatch").level
        configure_watch_logging(
            log_file or default_log_file(db_url), level=min(current or logging.INFO, logging.INFO)
        )
        options = WatchOptions(
            recursive=recursive,
            poll_s=poll,
            pattern=pattern,
            once=once,
            stable_for_s=stable_for,
            incomplete_after_s=incomplete_after,
            sample_rule=sample_rule or settings.sample_rule,
            channel=channel,
            max_attempts=max_attempts,
            retry_delay_s=retry_delay,
            lease_s=lease,
            instrument=instrument,
        )
        run_watch(dirs, db_url=db_url, options=options)
    except DefectwatchError as exc:
        _fail(str(exc))
        raise typer.Exit(1) from None
