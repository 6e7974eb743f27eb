"""Logging set-up for the command line: rich-formatted lines on stderr."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler


def configure_logging(level: int = logging.WARNING) -> None:
    """Send defectwatch's log records to stderr at ``level`` (idempotent)."""
    root = logging.getLogger("defectwatch")
    root.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
