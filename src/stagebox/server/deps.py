"""Dependencies shared by the route modules, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from stagebox.errors import AuthError, Forbidden
from stagebox.server.db.models import Uploader
from stagebox.server.services import uploaders
from stagebox.server.services.context import ServerContext


def get_ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[ServerContext, Depends(get_ctx)]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing 'Authorization: Bearer <token>' header")
    return token.strip()


def current_uploader(request: Request, ctx: CtxDep) -> Uploader:
    token = _bearer(request)
    with ctx.catalog.session() as session:
        return uploaders.authenticate(session, token)


UploaderDep = Annotated[Uploader, Depends(current_uploader)]


def current_admin(request: Request, ctx: CtxDep) -> str:
    """The name on the admin token; uploader tokens get 403, unknown ones 401."""
    token = _bearer(request)
    with ctx.catalog.session() as session:
        if token.startswith(uploaders.TOKEN_PREFIX):
            uploaders.authenticate(session, token)
            raise Forbidden("an uploader token cannot use the admin API")
        return uploaders.authenticate_admin(session, token).name


AdminDep = Annotated[str, Depends(current_admin)]


def base_url(request: Request, ctx: CtxDep) -> str:
    if ctx.settings.public_url:
        return ctx.settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


BaseUrlDep = Annotated[str, Depends(base_url)]
