"""The pages: overview, sample, scan (viewer + review), review queue, models, sign-in.

Each page is drawn on the server from the same use cases as its /api twin; the pages' scripts
(``static/app.js``, ``static/scan.js``) poll ``/api/status`` and write through ``/api``.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from defectwatch.service import browse, model_versions, review
from defectwatch.service.web.plots import density_plot
from defectwatch.service.web.security import COOKIE

PAGE = 60


def router(ctx: Any) -> APIRouter:
    """The page routes over ``ctx`` (a ``web.app.WebContext``)."""
    r = APIRouter()
    engine = ctx.engine

    @r.get("/")
    def overview(request: Request) -> Response:
        return ctx.render(
            request,
            "overview.html",
            page="overview",
            status=browse.status(engine),
            samples=browse.samples(engine),
            recent=browse.scans(engine, limit=20),
        )

    @r.get("/samples/{name}")
    def sample(request: Request, name: str, offset: int = Query(0)) -> Response:
        detail = browse.sample_detail(engine, name, limit=PAGE, offset=offset)
        return ctx.render(
            request,
            "sample.html",
            page="sample",
            d=detail,
            plot=density_plot(detail["series"]),
            page_size=PAGE,
        )

    @r.get("/scans/{scan_id:int}")
    def scan(request: Request, scan_id: int) -> Response:
        detail = browse.scan_detail(engine, scan_id)
        return ctx.render(
            request, "scan.html", page="scan", s=detail, marker_r=_marker_radius(detail)
        )

    @r.get("/review")
    def queue(request: Request, offset: int = Query(0)) -> Response:
        return ctx.render(
            request,
            "review.html",
            page="review",
            q=review.review_queue(engine, limit=PAGE, offset=offset),
            page_size=PAGE,
        )

    @r.get("/models")
    def models(request: Request) -> Response:
        return ctx.render(
            request,
            "models.html",
            page="models",
            versions=model_versions.versions_report(engine, register_default=False),
        )

    @r.get("/login")
    def login_form(request: Request, next: str = Query("/")) -> Response:
        return ctx.render(request, "login.html", page="login", next=_local(next), failed=False)

    @r.post("/login")
    async def login(request: Request) -> Response:
        ctx.guard.check_origin(request)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        target = _local((form.get("next") or ["/"])[0])
        guard = ctx.guard
        if not guard.token:
            return RedirectResponse(target, status_code=303)
        if not hmac.compare_digest(given.encode(), guard.token.encode()):
            return ctx.render(
                request, "login.html", status_code=401, page="login", next=target, failed=True
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE, guard.session_value(), httponly=True, samesite="strict", path="/"
        )
        return response

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        ctx.guard.check_origin(request)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return r


def _local(target: str) -> str:
    """A redirect target inside this app (anything else becomes ``/``)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _marker_radius(detail: dict[str, Any]) -> float:
    """Marker circles' radius in scan pixels: about a defect's size (1 nm), at least 2 px."""
    px = [p for p in detail.get("pixel_size_nm") or [] if p]
    if not px:
        return 3.0
    return max(2.0, 1.0 / (sum(px) / len(px)))
