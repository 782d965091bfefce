"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from stagebox import __version__, errors
from stagebox.config import Settings
from stagebox.server.api import admin, datafiles, health, registrations, tus
from stagebox.server.runtime import Runtime

ROUTERS = (health.router, datafiles.router, tus.router, registrations.router, admin.router)

# Most specific first: the first matching class decides the status.
STATUS: list[tuple[type[errors.StageboxError], int]] = [
    (errors.InvalidInput, 400),
    (errors.AuthError, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.UploadLocked, 423),
    (errors.Conflict, 409),
    (errors.LengthExceeded, 413),
    (errors.ChecksumMismatch, 460),
]


def status_for(exc: errors.StageboxError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


async def _stagebox_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.StageboxError)
    status = status_for(exc)
    body: dict[str, object] = {"detail": str(exc)}
    if isinstance(exc, errors.InvalidInput):
        body.update(field=exc.field, rule=exc.rule)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if request.url.path.startswith("/files"):
        headers.update(tus.TUS_HEADERS)
        if isinstance(exc, errors.OffsetMismatch):
            headers["Upload-Offset"] = str(exc.expected)
    return JSONResponse(body, status_code=status, headers=headers)


def allowed_methods(path: str) -> list[str]:
    """Every method some route answers at ``path``."""
    return sorted(
        {
            method
            for router in ROUTERS
            for route in router.routes
            if isinstance(route, APIRoute) and route.path_regex.match(path)
            for method in route.methods or ()
        }
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answers, as described: a 400 (a body that cannot be parsed) names
    the field and the rule like every other 400, and a 405's Allow names the
    methods of every route at the path (Starlette's, those of the first it tried)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        return await _stagebox_error(request, errors.InvalidInput("body", str(exc.detail)))
    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(request.url.path))}
    return await http_exception_handler(request, exc)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. The runtime (catalog, tasks, sweep) starts with the server."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or Runtime(settings)
        app.state.ctx = rt.ctx
        rt.start()
        try:
            yield
        finally:
            rt.stop()

    app = FastAPI(title="stagebox", version=__version__, lifespan=lifespan)
    app.add_exception_handler(errors.StageboxError, _stagebox_error)
    app.add_exception_handler(HTTPException, _http_error)
    for router in ROUTERS:
        app.include_router(router)
    return app
