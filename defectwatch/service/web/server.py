"""Use case: ``defectwatch serve``: check the bind, open the database, run uvicorn.

The app only reads the record (and writes reviews and model switches in short transactions):
the daemon never waits for it and never needs it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

from defectwatch.db.engine import normalize_url
from defectwatch.db.migrate import open_database
from defectwatch.errors import ConfigError
from defectwatch.service.scan_images import image_cache_dir
from defectwatch.service.web.security import check_bind

log = logging.getLogger(__name__)


def serve(
    db_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    read_only: bool = False,
    image_folder: Path | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the web app until interrupted (Ctrl+C). ConfigError before anything starts when
    ``host`` is not the loopback and no ``token`` is given."""
    import uvicorn

    from defectwatch.service.web.app import create_app

    check_bind(host, token)
    url = normalize_url(db_url)
    engine = open_database(url)
    folder = image_folder or image_cache_dir(url)
    app = create_app(
        engine, image_folder=folder, token=token, read_only=read_only, host=host, port=port
    )
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    if on_ready is not None:
        on_ready(f"http://{shown}:{port}/")
    try:
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.run(sockets=[sock])
    finally:
        sock.close()
        engine.dispose()


def _bind(host: str, port: int) -> socket.socket:
    """The listening address, bound here so that a taken port is one clear error before
    anything is announced."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another "
            "`defectwatch serve` running there? pick another --port)"
        ) from None
    return sock
