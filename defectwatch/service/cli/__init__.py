"""The `defectwatch` command line: a thin layer over the use cases.

``COMMANDS`` below is the one table of command -> the function (or sub-app) that runs it; each
function lives in the module named after its group (``cli/record.py`` for the questions asked
of the record, ``cli/process.py`` for detection...). Shared options and output helpers are in
``cli/common.py``. No command module imports this file.

Errors a user can cause come out as one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from defectwatch.errors import DefectwatchError
from defectwatch.service.cli import (
    demo,
    labels,
    models,
    process,
    record,
    retrain,
    scans,
    serve,
    service,
    watch,
)
from defectwatch.service.cli.common import _fail
from defectwatch.service.logging_setup import configure_logging

app = typer.Typer(
    help="defectwatch: find and count point defects in STM scans of 2D semiconductors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: command name -> the function that runs it, or the sub-app of a command group.
COMMANDS: dict[str, Callable[..., Any] | typer.Typer] = {
    "inspect": scans.inspect,
    "simulate": scans.simulate,
    "demo": demo.demo,
    "process": process.process,
    "evaluate": process.evaluate,
    "watch": watch.watch,
    "samples": record.samples_app,  # samples, samples rename
    "density": record.density,
    "scans": record.scans,
    "defects": record.defects,
    "status": record.status,
    "retrain": retrain.retrain,
    "labels": labels.labels_app,  # labels import | accept | list | export
    "import-image": labels.import_image,
    "models": models.models_app,  # models list | activate | rollback
    "reprocess": models.reprocess,
    "service": service.service_app,  # service install | uninstall
    "serve": serve.serve,  # the web app
}


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug detail to stderr.")
    ] = False,
) -> None:
    configure_logging(logging.DEBUG if verbose else logging.WARNING)


for _name, _target in COMMANDS.items():
    if isinstance(_target, typer.Typer):
        app.add_typer(_target, name=_name)
    else:
        app.command(_name)(_target)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DefectwatchError as exc:  # anything a command did not translate itself
        _fail(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
