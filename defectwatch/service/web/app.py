"""The web app: FastAPI, Jinja2 templates (autoescaped), and its own static files.

``create_app(engine, ...)`` builds it over an open database; ``defectwatch serve`` runs it
with uvicorn. Pages (``pages``) and ``/api`` (``api``) call the service use cases only: no SQL
here, and no file is ever served by a path taken from a request (pictures by scan id through
``service.scan_images``; ``/static`` from the package's own folder, which refuses ``..``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from defectwatch.errors import ConfigError, DefectwatchError, ModelLoadError, NotFoundError
from defectwatch.service.web.security import Forbidden, Guard, loopback_hosts

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
POLL_S = 2.0  # how often open pages ask whether something new was recorded

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; "
        "style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


@dataclass(frozen=True)
class WebContext:
    """What the routes share: the database, the pictures' folder, the guard, the templates."""

    engine: Engine
    image_folder: Path
    guard: Guard
    templates: Environment

    def render(
        self, request: Request, name: str, status_code: int = 200, **values: Any
    ) -> Response:
        """A page from its template (every value autoescaped)."""
        html = self.templates.get_template(name).render(
            request=request,
            read_only=self.guard.read_only,
            token_required=bool(self.guard.token),
            can_write=not self.guard.read_only and self.guard.signed_in(request),
            poll_ms=int(POLL_S * 1000),
            **values,
        )
        return Response(html, status_code=status_code, media_type="text/html; charset=utf-8")


def templates() -> Environment:
    """The Jinja2 environment: autoescape on for every template."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sci"] = lambda v: "–" if v is None else f"{v:.3g}"
    env.filters["num"] = lambda v, d=4: "–" if v is None else f"{v:.{d}g}"
    env.filters["pct"] = lambda v: "–" if v is None else f"{v:.0%}"
    env.filters["when"] = lambda v: "–" if not v else str(v)[:19].replace("T", " ")
    env.filters["secs"] = _seconds
    return env


def _seconds(v: float | None) -> str:
    if v is None:
        return "–"
    if v < 120:
        return f"{v:.0f} s"
    if v < 7200:
        return f"{v / 60:.0f} min"
    return f"{v / 3600:.1f} h"


def create_app(
    engine: Engine,
    *,
    image_folder: Path,
    token: str | None = None,
    read_only: bool = False,
    host: str = "127.0.0.1",
    port: int = 8765,
) -> FastAPI:
    """The web app over ``engine``. ``host``/``port``: where it listens (a loopback host
    makes it accept only requests addressed to it, see ``security``)."""
    from defectwatch.service.web import api, pages
    from defectwatch.service.web.security import is_loopback

    guard = Guard(
        token=token or None,
        read_only=read_only,
        allowed_hosts=loopback_hosts(port) if is_loopback(host) else None,
    )
    ctx = WebContext(engine, Path(image_folder), guard, templates())
    app = FastAPI(title="defectwatch", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx

    @app.middleware("http")
    async def protect(request: Request, call_next):  # type: ignore[no-untyped-def]
        try:
            guard.check_host(request)
            if read_only and request.method not in ("GET", "HEAD", "OPTIONS"):
                raise Forbidden(403, "this server was started with --read-only: it writes nothing")
        except Forbidden as exc:
            response: Response = JSONResponse({"detail": exc.message}, status_code=exc.status)
        else:
            response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"detail": message}, status_code=status)
        return ctx.render(request, "error.html", status_code=status, status=status, message=message)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return error(request, exc.status, exc.message)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> Response:
        return error(request, 404, str(exc))

    @app.exception_handler(ConfigError)
    async def _bad(request: Request, exc: ConfigError) -> Response:
        return error(request, 400, str(exc))

    @app.exception_handler(ModelLoadError)
    async def _model(request: Request, exc: ModelLoadError) -> Response:
        return error(request, 409, str(exc))

    @app.exception_handler(DefectwatchError)
    async def _other(request: Request, exc: DefectwatchError) -> Response:
        return error(request, 400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        return error(request, exc.status_code, message)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router(ctx))
    app.include_router(pages.router(ctx))
    return app
