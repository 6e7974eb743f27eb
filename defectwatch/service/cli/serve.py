"""``defectwatch serve``: the web app over the record; the work is in
``defectwatch.service.web``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from defectwatch.errors import DefectwatchError
from defectwatch.service.cli.common import DbOption, _fail, out
from defectwatch.service.record import require_existing_file


def serve(
    db: DbOption = None,
    host: Annotated[
        str,
        typer.Option(
            help="Interface to listen on. Anything but 127.0.0.1 / localhost needs --token."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="DEFECTWATCH_TOKEN",
            show_default=False,
            help="Secret every write (review, activate, rollback) must carry "
            "(default: DEFECTWATCH_TOKEN).",
        ),
    ] = None,
    read_only: Annotated[
        bool,
        typer.Option("--read-only", help="Serve pages and /api only: no review, no model change."),
    ] = False,
) -> None:
    """Open the lab's window: a local web app over the record (overview, samples, every scan
    with its detections, review, review queue, models)."""
    from defectwatch.db.engine import normalize_url
    from defectwatch.service.config import get_settings
    from defectwatch.service.web import serve as run
    from defectwatch.service.web.security import check_bind

    def ready(url: str) -> None:
        mode = " (read-only)" if read_only else (" (writes need the token)" if token else "")
        out.print(
            f"defectwatch web app on [bold]{escape(url)}[/bold]{mode}; Ctrl+C stops it",
            highlight=False,
            soft_wrap=True,
        )

    try:
        check_bind(host, token)
        url = normalize_url(db or get_settings().db)
        require_existing_file(url)
        run(url, host=host, port=port, token=token, read_only=read_only, on_ready=ready)
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    except OSError as exc:  # the port is taken, the interface does not exist
        _fail(escape(f"cannot listen on {host}:{port}: {exc.strerror or exc}"))
        raise typer.Exit(1) from None
