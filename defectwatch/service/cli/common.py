"""What every command module shares: the consoles, one-line errors, progress bars, the
``--db`` option and opening the database.

Imported by the command modules; never imports them (nor ``cli/__init__.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from defectwatch.errors import DefectwatchError

if TYPE_CHECKING:
    from sqlalchemy import Engine

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        show_default=False,
        help="Database URL or SQLite file (default: DEFECTWATCH_DB, else the user data dir).",
    ),
]


def _fail(message: str) -> None:
    """One line on stderr: ``error: message`` (the caller raises ``typer.Exit(1)``)."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    """One line on stderr: ``warning: message`` (escaped)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def _progress() -> Progress:
    """A rich progress bar on stderr (stdout stays clean for --json / --csv)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def _sci(value: float | None) -> str:
    """``1.23e+12`` or ``-`` for a missing value."""
    return "-" if value is None else f"{value:.3g}"


@contextmanager
def _database(db: str | None, *, create: bool = False) -> Iterator[Engine]:
    """Open (and migrate) the database; translate every failure into one line + exit 1.

    Queries refuse a missing SQLite file; commands that record (``create=True``) create it.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from defectwatch.service.record import open_record_engine, record_url, safe_url

    engine = None
    where = "--db" if db else "DEFECTWATCH_DB"
    try:
        url = record_url(db)
        where = safe_url(url)
        engine = open_record_engine(url, create=create)
        yield engine
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        _fail(escape(f"database {where}: {reason}"))
        raise typer.Exit(1) from None
    finally:
        if engine is not None:
            engine.dispose()
