"""Datafile routes: register in batches, complete, list, read back, bundles."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from stagebox.errors import Conflict, InvalidInput, LengthExceeded
from stagebox.server.api.openapi import UPLOADER_TOKEN, Answers, CatalogId, answers
from stagebox.server.api.streaming import pump
from stagebox.server.db.models import ReplicaState
from stagebox.server.deps import BaseUrlDep, CtxDep, UploaderDep
from stagebox.server.schemas import (
    MAX_INT,
    BatchAnswer,
    BatchRegister,
    BundleAnswer,
    CheckAnswers,
    CheckBatch,
    CompleteRequest,
    DatafilePage,
    DatafilePublic,
    StagedBundle,
)
from stagebox.server.services import bundles, datafiles

router = APIRouter(
    prefix="/api/v1/datafiles",
    tags=["datafiles"],
    dependencies=[UPLOADER_TOKEN],
    responses=answers(401),
)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Ids are digits in the route itself, so /batch, /check and /bundle are never
# taken for one (a GET there is 405, not 422).
ID = "{datafile_id:int}"
BUNDLE_BODY = {
    "required": True,
    "content": {bundles.CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    "description": "a manifest and the files' bytes (see stagebox.wire)",
}
RANGES: Answers = {
    206: {
        "description": "The bytes of a single `Range: bytes=a-b`.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    416: {"description": "The range lies outside the file (Content-Range says its size)."},
}


def _lean(answer: BaseModel) -> Response:
    """The answer without the fields that do not apply, serialised once: a batch is
    1,000 answers, and FastAPI would validate them all again before dumping."""
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")


@router.post(
    "/batch",
    response_model=BatchAnswer,
    response_model_exclude_none=True,
    responses=answers(400, 403, 409),
)
def register_batch(
    body: BatchRegister, ctx: CtxDep, uploader: UploaderDep, base: BaseUrlDep
) -> Response:
    """Register up to 1,000 files; each answer says skip, hash, or where to upload from.
    Fields that do not apply to an answer are left out (a rerun is 1,000 skips)."""
    with ctx.catalog.session() as session:
        answers = datafiles.register_batch(
            ctx, session, uploader, body.files, base, method=body.method
        )
    return _lean(BatchAnswer(files=answers))


@router.post(
    "/check",
    response_model=CheckAnswers,
    response_model_exclude_none=True,
    responses=answers(400),
)
def check_batch(body: CheckBatch, ctx: CtxDep, uploader: UploaderDep) -> Response:
    """Up to 1,000 local files (size, sha256): is the newest stored version of each
    one these bytes? Answers come from the catalog's recorded digests."""
    with ctx.catalog.session() as session:
        return _lean(CheckAnswers(files=datafiles.check_batch(session, uploader, body.files)))


@router.post(
    "/bundle",
    response_model=BundleAnswer,
    responses=answers(400, 404, 413),
    openapi_extra={"requestBody": BUNDLE_BODY},
)
async def upload_bundle(request: Request, ctx: CtxDep, uploader: UploaderDep) -> BundleAnswer:
    """Upload many registered small files in one body (see services.bundles)."""
    if request.headers.get("content-type") != bundles.CONTENT_TYPE:
        raise InvalidInput("Content-Type", f"must be {bundles.CONTENT_TYPE}")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > ctx.settings.max_bundle_bytes:
        raise LengthExceeded(f"a bundle may hold at most {ctx.settings.max_bundle_bytes} bytes")
    receiver = bundles.BundleReceiver(ctx, uploader)
    try:
        await pump(request, receiver.feed)
    except BaseException:
        receiver.abort()
        raise
    return BundleAnswer(files=await run_in_threadpool(receiver.finish))


@router.post("/bundle/staged", responses=answers(400, 403, 404, 413))
def staged_bundle(body: StagedBundle, ctx: CtxDep, uploader: UploaderDep) -> BundleAnswer:
    """Verify and store a bundle the uploader wrote into its sftp staging directory."""
    return BundleAnswer(files=bundles.receive_staged(ctx, uploader, body.path))


@router.post(f"/{ID}/complete", responses=answers(400, 404, 409))
def complete(
    datafile_id: CatalogId, body: CompleteRequest, ctx: CtxDep, uploader: UploaderDep
) -> DatafilePublic:
    """Declare the client's digests; the answer carries the resulting state."""
    return datafiles.complete(ctx, uploader, datafile_id, body.sha256, body.md5)


@router.get("", responses=answers(400))
def list_datafiles(
    ctx: CtxDep,
    uploader: UploaderDep,
    dataset: str | None = None,
    owner: str | None = None,
    experiment: str | None = None,
    # state and versions are checked by the service (a 400 naming the field).
    state: str | None = Query(None, json_schema_extra={"enum": list(ReplicaState)}),
    versions: str = Query(
        "latest",
        description="latest (one row a path) or all",
        json_schema_extra={"enum": ["latest", "all"]},
    ),
    cursor: int | None = Query(None, ge=0, le=MAX_INT, description="next_cursor of a page"),
    limit: int = Query(100, ge=1, le=1000),
) -> DatafilePage:
    """The newest version of each path; ``versions=all`` lists every version."""
    with ctx.catalog.session() as session:
        return datafiles.list_datafiles(
            session,
            uploader,
            dataset=dataset,
            owner=owner,
            experiment=experiment,
            state=state,
            versions=versions,
            cursor=None if cursor is None else str(cursor),
            limit=limit,
        )


SETTLING = (ReplicaState.staged, ReplicaState.verified)


@router.get(f"/{ID}", responses=answers(404))
def get_datafile(
    datafile_id: CatalogId,
    ctx: CtxDep,
    uploader: UploaderDep,
    base: BaseUrlDep,
    wait: float = Query(0, ge=0, le=60, description="seconds to wait while it is settling"),
) -> DatafilePublic:
    """One datafile. With ``wait``, answers once it leaves staged/verified (the
    server re-reading sftp bytes, or promoting) or when ``wait`` runs out."""
    deadline = time.monotonic() + wait
    while True:
        with ctx.catalog.session() as session:
            answer = datafiles.public(datafiles.get_owned(session, uploader, datafile_id), base)
        if answer.state not in SETTLING or time.monotonic() >= deadline:
            return answer
        time.sleep(0.02)


@router.get(
    f"/{ID}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The stored bytes.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **RANGES,
        **answers(404, 409),
    },
)
def content(
    datafile_id: CatalogId,
    request: Request,
    ctx: CtxDep,
    uploader: UploaderDep,
    version: int | None = Query(
        None, ge=1, le=MAX_INT, description="another version of the same path"
    ),
) -> Response:
    """Stream the stored bytes; a single ``Range: bytes=a-b`` is honoured."""
    with ctx.catalog.session() as session:
        datafile = datafiles.get_owned(session, uploader, datafile_id)
        if version is not None:
            datafile = datafiles.version_of(session, uploader, datafile_id, version)
        replica = datafile.replicas[-1]
        if replica.state not in (ReplicaState.verified, ReplicaState.stored):
            raise Conflict(f"datafile {datafile_id} is {replica.state}, not yet verified")
        size, box_id, key = datafile.size, replica.box_id, replica.key
    start, end, status = 0, size - 1, 200
    header = request.headers.get("range")
    if header:
        match = _RANGE.match(header.strip())
        if not match or match.groups() == ("", ""):
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:
            start, end = max(size - int(last), 0), size - 1
        if start >= size or start > end:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        status = 206
    backend = ctx.backend(box_id)

    def body() -> Iterator[bytes]:
        remaining = end - start + 1
        with backend.open_read(key, start) as f:
            while remaining > 0:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    headers = {"Accept-Ranges": "bytes", "Content-Length": str(max(end - start + 1, 0))}
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        body(), status_code=status, headers=headers, media_type="application/octet-stream"
    )
