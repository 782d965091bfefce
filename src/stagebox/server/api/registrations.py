"""An uploader describes itself and asks to stage over SFTP with its public key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from stagebox.server.api.openapi import UPLOADER_TOKEN, answers
from stagebox.server.deps import CtxDep, UploaderDep
from stagebox.server.schemas import described
from stagebox.server.services import registrations, uploaders

router = APIRouter(
    prefix="/api/v1",
    tags=["registration"],
    dependencies=[UPLOADER_TOKEN],
    responses=answers(401),
)
# What services.uploaders.describe takes (a 400 otherwise): no control character.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


def _machine(limit: int) -> Any:
    return Field(
        default="",
        description=f"at most {limit} characters, none a control character",
        json_schema_extra=described(_PRINTABLE, limit),
    )


class Describe(BaseModel):
    hostname: str = _machine(uploaders.MACHINE_LIMITS["hostname"])
    os: str = _machine(uploaders.MACHINE_LIMITS["os"])
    mac_address: str = _machine(uploaders.MACHINE_LIMITS["mac_address"])
    client_version: str = _machine(uploaders.MACHINE_LIMITS["client_version"])


class RequestKey(BaseModel):
    public_key: str = Field(
        description=(
            "one line 'TYPE BASE64 [comment]': ssh-ed25519, ecdsa-sha2-nistp256/384/521, "
            "or ssh-rsa of at least 2048 bits"
        )
    )


@router.get("/uploader")
def whoami(ctx: CtxDep, uploader: UploaderDep) -> dict[str, Any]:
    return uploaders.machine(uploader)


@router.put("/uploader", responses=answers(400))
def describe(body: Describe, ctx: CtxDep, uploader: UploaderDep) -> dict[str, Any]:
    """Record the machine this uploader runs on: what an admin sees before approving."""
    with ctx.catalog.session() as session:
        me = session.merge(uploader)
        uploaders.describe(session, me, **body.model_dump())
        return uploaders.machine(me)


@router.post("/registrations", status_code=201, responses=answers(400))
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
