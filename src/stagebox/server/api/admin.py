"""The admin API: the same operations as ``stagebox admin``, behind an admin token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from stagebox.server.deps import AdminDep, CtxDep
from stagebox.server.services import boxes, registrations, uploaders

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class NewBox(BaseModel):
    name: str
    role: str
    backend: str = "local"
    path: str | None = None
    sftp_host: str | None = None
    sftp_port: int | None = None
    sftp_user: str | None = None
    sftp_root: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    endpoint_url: str | None = None
    region: str | None = None


class NewUploader(BaseModel):
    name: str


class Approve(BaseModel):
    box: str


class Reject(BaseModel):
    reason: str


@router.get("/boxes")
def list_boxes(ctx: CtxDep, admin: AdminDep) -> list[dict[str, Any]]:
    with ctx.catalog.session() as session:
        return [boxes.public(b) for b in boxes.list_boxes(session)]


@router.post("/boxes", status_code=201)
def add_box(body: NewBox, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    with ctx.catalog.session() as session:
        options = body.model_dump(exclude={"name"})
        return boxes.public(boxes.add_box(session, body.name, **options))


@router.get("/uploaders")
def list_uploaders(ctx: CtxDep, admin: AdminDep) -> list[dict[str, Any]]:
    with ctx.catalog.session() as session:
        return [uploaders.public(u) for u in uploaders.list_uploaders(session)]


@router.post("/uploaders", status_code=201)
def add_uploader(body: NewUploader, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    """Create an uploader; its token is in this answer and nowhere else."""
    with ctx.catalog.session() as session:
        uploader, token = uploaders.add_uploader(session, body.name)
        return {**uploaders.public(uploader), "token": token}


@router.post("/uploaders/{name}/revoke")
def revoke_uploader(name: str, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    with ctx.catalog.session() as session:
        return uploaders.public(uploaders.revoke_uploader(session, name))


@router.get("/requests")
def list_requests(ctx: CtxDep, admin: AdminDep, state: str | None = None) -> list[dict[str, Any]]:
    with ctx.catalog.session() as session:
        return [registrations.public(r) for r in registrations.list_requests(session, state=state)]


@router.post("/requests/{request_id}/approve")
def approve(request_id: int, body: Approve, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    with ctx.catalog.session() as session:
        registrations.approve(session, request_id, body.box)
        return registrations.public(registrations.get_request(session, request_id))


@router.post("/requests/{request_id}/reject")
def reject(request_id: int, body: Reject, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    with ctx.catalog.session() as session:
        registrations.reject(session, request_id, body.reason)
        return registrations.public(registrations.get_request(session, request_id))


@router.get("/authorized-keys", response_class=PlainTextResponse)
def authorized_keys(
    ctx: CtxDep, admin: AdminDep, box: str | None = None, user: str | None = None
) -> str:
    """authorized_keys lines for one box or one staging account (both: all)."""
    with ctx.catalog.session() as session:
        if box is not None:
            boxes.get_box(session, box)
        lines = registrations.authorized_keys(session, box=box, user=user)
    return "".join(line + "\n" for line in lines)
