"""The admin API: the same operations as ``stagebox admin``, behind an admin token."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from stagebox.server.api.openapi import ADMIN_TOKEN, CatalogId, answers
from stagebox.server.db.models import RequestState
from stagebox.server.deps import AdminDep, CtxDep
from stagebox.server.schemas import DIRECTORY, Integer, component, described
from stagebox.server.services import boxes, registrations, uploaders

router = APIRouter(
    prefix="/api/v1/admin",
    tags=["admin"],
    dependencies=[ADMIN_TOKEN],
    responses=answers(401, 403),
)

# The rules services.boxes checks (a 400 naming the option), as patterns.
_ABSOLUTE = r"(?!.*/\.\.?(?:/|$))(?:/[A-Za-z0-9._+@%=,:-]{0,255})+"
Role = Literal["receiving", "staging", "permanent"]


def _absolute(description: str, default: Any = ...) -> Any:
    return Field(
        default=default,
        description=(
            f"{description}: an absolute path of letters, digits and . _ / + @ % = , : -"
            f" (no '..'), at most {boxes.MAX_PATH} bytes"
        ),
        json_schema_extra=described(
            f"^{_ABSOLUTE}$" if default is ... else f"^(?:{_ABSOLUTE})?$", boxes.MAX_PATH
        ),
    )


class _NewBox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = component("the box's name")
    role: Role


class LocalBox(_NewBox):
    """A directory on the server."""

    backend: Literal["local"] = "local"
    path: str = _absolute("the directory")


class SftpStagingBox(LocalBox):
    """A staging directory that uploaders also reach over SFTP."""

    role: Literal["staging"]
    sftp_host: str = Field(json_schema_extra={"pattern": r"^[A-Za-z0-9.:_-]{1,253}$"})
    sftp_port: Integer = Field(22, ge=1, le=65535)
    sftp_user: str = Field(
        description="a POSIX account name",
        json_schema_extra={"pattern": r"^[a-z_][a-z0-9_.-]{0,31}$"},
    )
    sftp_root: str | None = _absolute("the directory as sshd sees it (path when absent)", None)


class S3Box(_NewBox):
    """A bucket (and a prefix in it); credentials come from the AWS chain."""

    backend: Literal["s3"]
    bucket: str = Field(
        description="S3 bucket rules",
        json_schema_extra={"pattern": r"^(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"},
    )
    prefix: str | None = Field(default=None, json_schema_extra=described(DIRECTORY, 1024))
    endpoint_url: str | None = Field(
        default=None, json_schema_extra={"pattern": r"^https?://[A-Za-z0-9.:\[\]_-]+(/[^\s]*)?$"}
    )
    region: str | None = Field(default=None, json_schema_extra={"pattern": r"^[a-z0-9-]{2,32}$"})


NewBox = Annotated[LocalBox | SftpStagingBox | S3Box, Body()]


class NewUploader(BaseModel):
    name: str = component("the uploader's name")


class Approve(BaseModel):
    box: str = Field(description="a staging box with sftp attributes")


class Reject(BaseModel):
    reason: str = Field(description="why, not only spaces", json_schema_extra={"pattern": r"\S"})


@router.get("/boxes")
def list_boxes(ctx: CtxDep, admin: AdminDep) -> list[dict[str, Any]]:
    with ctx.catalog.session() as session:
        return [boxes.public(b) for b in boxes.list_boxes(session)]


@router.post("/boxes", status_code=201, responses=answers(400, 409))
def add_box(body: NewBox, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    with ctx.catalog.session() as session:
        options = body.model_dump(exclude={"name"})
        return boxes.public(boxes.add_box(session, body.name, **options))


@router.get("/uploaders")
def list_uploaders(ctx: CtxDep, admin: AdminDep) -> list[dict[str, Any]]:
    with ctx.catalog.session() as session:
        return [uploaders.public(u) for u in uploaders.list_uploaders(session)]


@router.post("/uploaders", status_code=201, responses=answers(400, 409))
def add_uploader(body: NewUploader, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    """Create an uploader; its token is in this answer and nowhere else."""
    with ctx.catalog.session() as session:
        uploader, token = uploaders.add_uploader(session, body.name)
        return {**uploaders.public(uploader), "token": token}


@router.post("/uploaders/{name}/revoke", responses=answers(404))
def revoke_uploader(name: str, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    with ctx.catalog.session() as session:
        return uploaders.public(uploaders.revoke_uploader(session, name))


@router.get("/requests", responses=answers(400))
def list_requests(
    ctx: CtxDep,
    admin: AdminDep,
    state: str | None = Query(None, json_schema_extra={"enum": list(RequestState)}),
) -> list[dict[str, Any]]:
    with ctx.catalog.session() as session:
        return [registrations.public(r) for r in registrations.list_requests(session, state=state)]


@router.post("/requests/{request_id}/approve", responses=answers(400, 404, 409))
def approve(request_id: CatalogId, body: Approve, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    with ctx.catalog.session() as session:
        registrations.approve(session, request_id, body.box)
        return registrations.public(registrations.get_request(session, request_id))


@router.post("/requests/{request_id}/reject", responses=answers(400, 404, 409))
def reject(request_id: CatalogId, body: Reject, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    with ctx.catalog.session() as session:
        registrations.reject(session, request_id, body.reason)
        return registrations.public(registrations.get_request(session, request_id))


@router.get("/authorized-keys", response_class=PlainTextResponse, responses=answers(404))
def authorized_keys(
    ctx: CtxDep, admin: AdminDep, box: str | None = None, user: str | None = None
) -> str:
    """authorized_keys lines for one box or one staging account (both: all)."""
    with ctx.catalog.session() as session:
        if box is not None:
            boxes.get_box(session, box)
        lines = registrations.authorized_keys(session, box=box, user=user)
    return "".join(line + "\n" for line in lines)
