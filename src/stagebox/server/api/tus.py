"""tus 1.0.0 at /files/: core, creation, creation-with-upload, checksum,
termination and expiration. Routes parse headers and call the upload service."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from stagebox.errors import InvalidInput, LengthExceeded
from stagebox.server.api.streaming import pump
from stagebox.server.deps import BaseUrlDep, CtxDep, UploaderDep
from stagebox.server.services import uploads
from stagebox.server.services.context import ServerContext

router = APIRouter(prefix="/files", tags=["tus"])

TUS_VERSION = "1.0.0"
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION}
OFFSET_TYPE = "application/offset+octet-stream"
EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"


def _expires(when: dt.datetime | None) -> dict[str, str]:
    if when is None:
        return {}
    return {"Upload-Expires": format_datetime(when.replace(tzinfo=dt.UTC), usegmt=True)}


def _check_version(request: Request) -> Response | None:
    if request.headers.get("tus-resumable") != TUS_VERSION:
        return Response(status_code=412, headers={**TUS_HEADERS, "Tus-Version": TUS_VERSION})
    return None


def _int_header(request: Request, name: str) -> int:
    raw = request.headers.get(name)
    if raw is None:
        raise InvalidInput(name, "header is required")
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidInput(name, "must be a non-negative integer")
    return int(raw)


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    return int(raw) if raw and raw.isascii() and raw.isdigit() else None


@router.options("/")
@router.options("/{token}")
def options() -> Response:
    return Response(
        status_code=204,
        headers={
            **TUS_HEADERS,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": EXTENSIONS,
            "Tus-Checksum-Algorithm": ",".join(uploads.CHECKSUM_ALGORITHMS),
        },
    )


async def _patch(
    ctx: ServerContext,
    request: Request,
    uploader: UploaderDep,
    token: str,
    offset: int,
) -> tuple[int, int]:
    """Stream the body into the upload; returns the new offset and the length."""
    checksum = uploads.parse_checksum(request.headers.get("upload-checksum"))
    writer = await run_in_threadpool(
        uploads.PatchWriter.begin,
        ctx,
        uploader,
        token,
        offset,
        checksum,
        _content_length(request),
    )
    try:
        await pump(request, writer.write)
    except ClientDisconnect:
        return await run_in_threadpool(writer.abort), writer.length
    except LengthExceeded:
        await run_in_threadpool(writer.abort, True)
        raise
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    return await run_in_threadpool(writer.finish), writer.length


@router.post("/", status_code=201)
async def create(
    request: Request, ctx: CtxDep, uploader: UploaderDep, base: BaseUrlDep
) -> Response:
    if (bad := _check_version(request)) is not None:
        return bad
    length = _int_header(request, "upload-length")
    info = await run_in_threadpool(
        uploads.create_upload, ctx, uploader, length, request.headers.get("upload-metadata")
    )
    headers = {**TUS_HEADERS, "Location": f"{base}/files/{info.token}"}
    offset = info.offset
    has_body = (_content_length(request) or 0) > 0 or "chunked" in request.headers.get(
        "transfer-encoding", ""
    )
    if has_body and request.headers.get("content-type") == OFFSET_TYPE and offset == 0:
        offset, _ = await _patch(ctx, request, uploader, info.token, 0)
        headers["Upload-Offset"] = str(offset)
    elif has_body:
        headers["Upload-Offset"] = str(offset)
    headers.update(_expires(info.expires_at if offset < info.length else None))
    return Response(status_code=201, headers=headers)


@router.head("/{token}")
def head(token: str, request: Request, ctx: CtxDep, uploader: UploaderDep) -> Response:
    info = uploads.upload_info(ctx, uploader, token)
    headers = {
        **TUS_HEADERS,
        "Upload-Offset": str(info.offset),
        "Upload-Length": str(info.length),
        "Cache-Control": "no-store",
        **_expires(info.expires_at),
    }
    if info.metadata:
        headers["Upload-Metadata"] = info.metadata
    return Response(status_code=200, headers=headers)


@router.patch("/{token}", status_code=204)
async def patch(token: str, request: Request, ctx: CtxDep, uploader: UploaderDep) -> Response:
    if (bad := _check_version(request)) is not None:
        return bad
    if request.headers.get("content-type") != OFFSET_TYPE:
        return Response(status_code=415, headers=TUS_HEADERS)
    offset = _int_header(request, "upload-offset")
    new_offset, length = await _patch(ctx, request, uploader, token, offset)
    headers = {**TUS_HEADERS, "Upload-Offset": str(new_offset)}
    if new_offset < length:
        horizon = dt.timedelta(hours=ctx.settings.upload_expiry_hours)
        headers.update(_expires(dt.datetime.now(dt.UTC).replace(tzinfo=None) + horizon))
    return Response(status_code=204, headers=headers)


@router.delete("/{token}", status_code=204)
def delete(token: str, request: Request, ctx: CtxDep, uploader: UploaderDep) -> Response:
    if (bad := _check_version(request)) is not None:
        return bad
    uploads.terminate(ctx, uploader, token)
    return Response(status_code=204, headers=TUS_HEADERS)
