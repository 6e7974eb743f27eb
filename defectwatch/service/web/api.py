"""``/api``: the JSON the pages use, and the writes (review, activate, rollback).

Scan ids are path parameters of type int: anything else (``/api/scans/../../x``) matches no
route and is 404. Every write passes ``Guard.check_write`` first.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from fastapi.responses import JSONResponse as _JSONResponse
from starlette.concurrency import run_in_threadpool

from defectwatch.errors import ConfigError
from defectwatch.service import browse, model_versions, review
from defectwatch.service.scan_images import scan_image

MAX_BODY_BYTES = 8 * 1024 * 1024


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float as None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class JSONResponse(_JSONResponse):
    """Plain ``json.dumps`` of the use cases' dicts (no per-field encoding pass: a page of
    500 scans stays fast); a non-finite float becomes null."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:  # NaN or infinity somewhere
            return super().render(_finite(content))


def router(ctx: Any) -> APIRouter:
    """The /api routes over ``ctx`` (a ``web.app.WebContext``)."""
    r = APIRouter(prefix="/api")
    engine = ctx.engine

    @r.get("/status")
    def status() -> JSONResponse:
        return JSONResponse(browse.status(engine))

    @r.get("/samples")
    def samples() -> JSONResponse:
        return JSONResponse(browse.samples(engine))

    @r.get("/samples/{name}")
    def sample(name: str, limit: int = Query(60), offset: int = Query(0)) -> JSONResponse:
        return JSONResponse(browse.sample_detail(engine, name, limit=limit, offset=offset))

    @r.get("/scans")
    def scans(
        sample: str | None = None,
        status: str | None = None,
        limit: int = Query(100),
        offset: int = Query(0),
        after_id: int | None = None,
    ) -> JSONResponse:
        return JSONResponse(
            browse.scans(
                engine, sample=sample, status=status, limit=limit, offset=offset, after_id=after_id
            )
        )

    @r.get("/scans/{scan_id:int}")
    def scan(scan_id: int) -> JSONResponse:
        return JSONResponse(browse.scan_detail(engine, scan_id))

    def picture(scan_id: int, kind: str) -> FileResponse:
        path = scan_image(engine, scan_id, kind, folder=ctx.image_folder)
        return FileResponse(
            path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    @r.get("/scans/{scan_id:int}/image.png")
    def image(scan_id: int) -> FileResponse:
        return picture(scan_id, "scan")

    @r.get("/scans/{scan_id:int}/thumb.png")
    def thumb(scan_id: int) -> FileResponse:
        return picture(scan_id, "thumb")

    @r.get("/scans/{scan_id:int}/uncertainty.png")
    def uncertainty(scan_id: int) -> FileResponse:
        return picture(scan_id, "uncertainty")

    @r.get("/review/queue")
    def queue(limit: int = Query(50), offset: int = Query(0)) -> JSONResponse:
        return JSONResponse(review.review_queue(engine, limit=limit, offset=offset))

    @r.get("/models")
    def models() -> JSONResponse:
        return JSONResponse(model_versions.versions_report(engine, register_default=False))

    # -- writes -------------------------------------------------------------------------------

    @r.post("/scans/{scan_id:int}/review")
    async def save_review(scan_id: int, request: Request) -> dict[str, Any]:
        ctx.guard.check_write(request)
        payload = await _json(request)
        defects, exhaustive = review.parse_review(payload)
        return await run_in_threadpool(
            review.save_review, engine, scan_id, defects, exhaustive=exhaustive
        )

    @r.post("/models/{name}/activate")
    async def activate(name: str, request: Request) -> dict[str, Any]:
        ctx.guard.check_write(request)
        switch = await run_in_threadpool(model_versions.activate, engine, name)
        return {"version": switch.version, "previous": switch.previous, "changed": switch.changed}

    @r.post("/models/rollback")
    async def rollback(request: Request) -> dict[str, Any]:
        ctx.guard.check_write(request)
        switch = await run_in_threadpool(model_versions.rollback, engine)
        return {"version": switch.version, "previous": switch.previous, "changed": switch.changed}

    return r


async def _json(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ConfigError(f"the request body is {len(body)} bytes; at most {MAX_BODY_BYTES}")
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise ConfigError(f"the request body is not JSON ({exc})") from None
