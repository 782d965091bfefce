"""An uploader describes itself and asks to stage over SFTP with its public key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from stagebox.server.deps import CtxDep, UploaderDep
from stagebox.server.services import registrations, uploaders

router = APIRouter(prefix="/api/v1", tags=["registration"])


class Describe(BaseModel):
    hostname: str = ""
    os: str = ""
    mac_address: str = ""
    client_version: str = ""


class RequestKey(BaseModel):
    public_key: str


@router.get("/uploader")
def whoami(ctx: CtxDep, uploader: UploaderDep) -> dict[str, Any]:
    return uploaders.machine(uploader)


@router.put("/uploader")
def describe(body: Describe, ctx: CtxDep, uploader: UploaderDep) -> dict[str, Any]:
    """Record the machine this uploader runs on: what an admin sees before approving."""
    with ctx.catalog.session() as session:
        me = session.merge(uploader)
        uploaders.describe(session, me, **body.model_dump())
        return uploaders.machine(me)


@router.post("/registrations", status_code=201)
def file_request(body: RequestKey, ctx: CtxDep, uploader: UploaderDep) -> dict[str, Any]:
    """File a request for SFTP staging; the same key returns the same request."""
    with ctx.catalog.session() as session:
        me = session.merge(uploader)
        request = registrations.file_request(session, me, body.public_key)
        return registrations.public(registrations.get_request(session, request.id))


@router.get("/registrations")
def my_requests(ctx: CtxDep, uploader: UploaderDep) -> list[dict[str, Any]]:
    with ctx.catalog.session() as session:
        return [
            registrations.public(r)
            for r in registrations.list_requests(session, uploader=session.merge(uploader))
        ]
