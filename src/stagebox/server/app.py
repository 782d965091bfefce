"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from stagebox import __version__, errors
from stagebox.config import Settings
from stagebox.server.api import admin, datafiles, health, registrations, tus
from stagebox.server.runtime import Runtime

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
    app.include_router(health.router)
    app.include_router(datafiles.router)
    app.include_router(tus.router)
    app.include_router(registrations.router)
    app.include_router(admin.router)
    return app
