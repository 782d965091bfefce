"""tus 1.0.0 at /files/: core, creation, creation-with-upload, checksum,
termination and expiration. Routes parse headers and call the upload service."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from stagebox.errors import InvalidInput, LengthExceeded
from stagebox.server.api.openapi import ANSWERS, UPLOADER_TOKEN, Answers
from stagebox.server.api.streaming import pump
from stagebox.server.deps import BaseUrlDep, CtxDep, UploaderDep
from stagebox.server.schemas import MAX_INT
from stagebox.server.services import uploads
from stagebox.server.services.context import ServerContext

router = APIRouter(prefix="/files", tags=["tus"])

TUS_VERSION = "1.0.0"
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION}
OFFSET_TYPE = "application/offset+octet-stream"
EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"

# The protocol's request headers are read by hand, not taken as FastAPI
# parameters: tus answers a missing or other version with 412 and a malformed
# number with 400, where FastAPI would answer 422. So they are described here.
_COUNT = {"type": "integer", "minimum": 0, "maximum": MAX_INT}
_ALGORITHMS = "|".join(uploads.CHECKSUM_ALGORITHMS)


def _header(name: str, schema: dict[str, Any], description: str, required: bool) -> Any:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": schema,
        "description": description,
    }


VERSION = _header("Tus-Resumable", {"type": "string", "enum": [TUS_VERSION]}, "tus version", True)
CHECKSUM = _header(
    "Upload-Checksum",
    {"type": "string", "pattern": rf"^(?:{_ALGORITHMS}) [A-Za-z0-9+/]*={{0,2}}$"},
    "'<algorithm> <base64 digest>' of this request's bytes",
    False,
)
BYTES = {OFFSET_TYPE: {"schema": {"type": "string", "format": "binary"}}}


def _sent(*names: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The headers an answer carries (``optional`` ones only sometimes)."""
    return {
        name: {"schema": {"type": "string"}, "required": name not in optional}
        for name in (*names, *optional)
    }


def _refusals(*statuses: int) -> Answers:
    """The shared refusals as tus answers them: the same body, with Tus-Resumable."""
    return {status: {**ANSWERS[status], "headers": _sent("Tus-Resumable")} for status in statuses}


NOT_THIS_VERSION = {
    "description": "Tus-Resumable is missing or not 1.0.0; Tus-Version says which is.",
    "headers": _sent("Tus-Resumable", "Tus-Version"),
}
OFFSET_CONFLICT = {
    **ANSWERS[409],
    "description": "Upload-Offset is not the bytes staged (the Upload-Offset answered), "
    "or the upload is finished or failed.",
    "headers": _sent("Tus-Resumable", optional=("Upload-Offset",)),
}
NOT_OFFSET_BYTES = {
    "description": f"The body is not {OFFSET_TYPE}.",
    "headers": _sent("Tus-Resumable"),
}
DISCOVERY: Answers = {
    204: {
        "description": "What this server speaks.",
        "headers": _sent("Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Checksum-Algorithm"),
    }
}


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
    if int(raw) > MAX_INT:
        raise InvalidInput(name, f"must be at most {MAX_INT}")
    return int(raw)


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    return int(raw) if raw and raw.isascii() and raw.isdigit() else None


def _discovery() -> Response:
    return Response(
        status_code=204,
        headers={
            **TUS_HEADERS,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": EXTENSIONS,
            "Tus-Checksum-Algorithm": ",".join(uploads.CHECKSUM_ALGORITHMS),
        },
    )


@router.options("/", status_code=204, responses=DISCOVERY)
def options() -> Response:
    return _discovery()


@router.options("/{token}", status_code=204, responses=DISCOVERY)
def options_upload(token: str) -> Response:
    return _discovery()


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


@router.post(
    "/",
    status_code=201,
    dependencies=[UPLOADER_TOKEN],
    responses={
        201: {
            "description": "Created; with a body, Upload-Offset says how much of it was taken.",
            "headers": _sent(
                "Tus-Resumable", "Location", optional=("Upload-Offset", "Upload-Expires")
            ),
        },
        412: NOT_THIS_VERSION,
        **_refusals(400, 401, 409, 413, 460),
    },
    openapi_extra={
        "parameters": [
            VERSION,
            _header("Upload-Length", _COUNT, "the file's size in bytes", True),
            _header(
                "Upload-Metadata",
                {"type": "string"},
                "comma-separated 'key base64(value)' pairs; filename and dataset are "
                "required, directory, experiment, owner and sha256 are taken",
                True,
            ),
            CHECKSUM,
        ],
        "requestBody": {"required": False, "content": BYTES},
    },
)
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


@router.head(
    "/{token}",
    dependencies=[UPLOADER_TOKEN],
    responses={
        200: {
            "description": "How far the upload is.",
            "headers": _sent(
                "Tus-Resumable",
                "Upload-Offset",
                "Upload-Length",
                "Cache-Control",
                optional=("Upload-Expires", "Upload-Metadata"),
            ),
        },
        **_refusals(401, 404),
    },
)
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


@router.patch(
    "/{token}",
    status_code=204,
    dependencies=[UPLOADER_TOKEN],
    responses={
        204: {
            "description": "The bytes are staged; Upload-Offset is the new offset.",
            "headers": _sent("Tus-Resumable", "Upload-Offset", optional=("Upload-Expires",)),
        },
        409: OFFSET_CONFLICT,
        412: NOT_THIS_VERSION,
        415: NOT_OFFSET_BYTES,
        **_refusals(400, 401, 404, 413, 423, 460),
    },
    openapi_extra={
        "parameters": [
            VERSION,
            _header("Upload-Offset", _COUNT, "the bytes already staged", True),
            CHECKSUM,
        ],
        "requestBody": {"required": True, "content": BYTES},
    },
)
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


@router.delete(
    "/{token}",
    status_code=204,
    dependencies=[UPLOADER_TOKEN],
    responses={
        204: {
            "description": "The upload and its staged bytes are gone.",
            "headers": _sent("Tus-Resumable"),
        },
        412: NOT_THIS_VERSION,
        **_refusals(401, 404, 409, 423),
    },
    openapi_extra={"parameters": [VERSION]},
)
def delete(token: str, request: Request, ctx: CtxDep, uploader: UploaderDep) -> Response:
    if (bad := _check_version(request)) is not None:
        return bad
    uploads.terminate(ctx, uploader, token)
    return Response(status_code=204, headers=TUS_HEADERS)
