"""Use case: ``defectwatch serve``: check the bind, open the database, run uvicorn.

The app only reads the record (and writes reviews and model switches in short transactions):
the daemon never waits for it and never needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from defectwatch.db.engine import normalize_url
from defectwatch.db.migrate import open_database
from defectwatch.service.scan_images import image_cache_dir
from defectwatch.service.web.security import check_bind

log = logging.getLogger(__name__)


def serve(db_url: str, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          read_only: bool = False, image_folder: Path | None = None,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the web app until interrupted (Ctrl+C). ConfigError before anything starts when
    ``host`` is not the loopback and no ``token`` is given."""
    import uvicorn

    from defectwatch.service.web.app import create_app

    check_bind(host, token)
    url = normalize_url(db_url)
    engine = open_database(url)
    folder = image_folder or image_cache_dir(url)
    app = create_app(engine, image_folder=folder, token=token, read_only=read_only, host=host,
                     port=port)
    shown = f"[{host}]" if ":" in host else host
    if on_ready is not None:
        on_ready(f"http://{shown}:{port}/")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        engine.dispose()
