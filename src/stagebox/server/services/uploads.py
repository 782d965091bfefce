"""Resumable uploads (the tus 1.0.0 resource model), hashed as they are written.

A PATCH streams into a :class:`PatchWriter`: every byte goes to the staging box
and through the upload's running hash in the same pass, so a finished upload
needs no re-read to verify. The running hash lives in memory; after a server
restart it is rebuilt once from the staged prefix. A staging box that cannot
read back an unfinished object (S3: the parts of an open multipart upload) has
no prefix to rebuild it from: there the upload starts again from byte 0, and
the next HEAD says so (``Upload-Offset: 0``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from stagebox.checksums import MultiHasher
from stagebox.errors import (
    ChecksumMismatch,
    Conflict,
    InvalidInput,
    InvalidName,
    LengthExceeded,
    NotFound,
    OffsetMismatch,
    UploadLocked,
)
from stagebox.server.db.models import Datafile, Replica, ReplicaState, Uploader, utcnow
from stagebox.server.schemas import DatafileRegister
from stagebox.server.services import datafiles, verify
from stagebox.server.services.context import ServerContext, UploadState
from stagebox.server.services.states import transition
from stagebox.storage import StagedWriter

log = logging.getLogger(__name__)
S = ReplicaState
CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha256")
_META_KEY = re.compile(r"^[!#-+\--~]+$")  # printable ASCII without space or comma
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def parse_metadata(header: str | None) -> dict[str, str]:
    """Decode ``Upload-Metadata``: comma-separated ``key base64value`` pairs."""
    result: dict[str, str] = {}
    if not header or not header.strip():
        return result
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if len(parts) not in (1, 2) or not _META_KEY.match(parts[0]):
            raise InvalidInput("Upload-Metadata", f"malformed pair {pair.strip()!r}")
        key = parts[0]
        if key in result:
            raise InvalidInput("Upload-Metadata", f"key {key!r} appears twice")
        value = ""
        if len(parts) == 2:
            try:
                value = base64.b64decode(parts[1], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidInput(
                    "Upload-Metadata", f"value of {key!r} is not base64 of UTF-8 text"
                ) from None
        result[key] = value
    return result


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """Decode ``Upload-Checksum: <algorithm> <base64 digest>``."""
    if header is None:
        return None
    parts = header.strip().split(" ")
    if len(parts) != 2:
        raise InvalidInput("Upload-Checksum", "must be '<algorithm> <base64 digest>'")
    algo = parts[0].lower()
    if algo not in CHECKSUM_ALGORITHMS:
        raise InvalidInput(
            "Upload-Checksum", f"algorithm must be one of {', '.join(CHECKSUM_ALGORITHMS)}"
        )
    try:
        digest = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise InvalidInput("Upload-Checksum", "digest is not base64") from None
    return algo, digest


@dataclass(frozen=True)
class UploadInfo:
    token: str
    datafile_id: int
    offset: int
    length: int
    metadata: str | None
    expires_at: dt.datetime | None
    state: str


def _owned_replica(session: Session, uploader: Uploader, token: str) -> Replica:
    replica = session.scalar(
        select(Replica)
        .options(joinedload(Replica.datafile).joinedload(Datafile.dataset))
        .where(Replica.upload_token == token)
    )
    if replica is None or replica.datafile.dataset.uploader_id != uploader.id:
        raise NotFound(f"no upload {token}")
    return replica


def _offset(ctx: ServerContext, replica: Replica, locked: UploadState | None = None) -> int:
    """Bytes staged; the staging box is the truth after a crash, not the catalog.

    ``locked`` is the upload's state when the caller holds its lock.
    """
    size = replica.datafile.size
    if replica.state in (S.verified, S.stored):
        return size
    if replica.state in (S.registered, S.uploading):
        backend = ctx.backend(replica.box_id)
        on_disk = min(backend.size(replica.key) or 0, size)
        if 0 < on_disk < size and not backend.can_read_partial:
            return _unless_unhashable(ctx, replica, on_disk, locked)
        return on_disk
    return replica.bytes_staged


def _unless_unhashable(
    ctx: ServerContext, replica: Replica, on_disk: int, locked: UploadState | None
) -> int:
    """``on_disk`` while this process's running hash covers exactly those bytes;
    otherwise (a restart lost it) the staged bytes are dropped and this is 0."""
    token = replica.upload_token or ""
    state = locked or ctx.upload_state(token)
    if locked is None and not state.lock.acquire(blocking=False):
        return on_disk  # a PATCH is writing it, with its running hash
    try:
        if state.hasher is not None and state.hasher.length == on_disk:
            return on_disk
        log.info(
            "upload %s: %s cannot read back the %d bytes staged to rebuild the running "
            "hash; the upload starts again from byte 0",
            token,
            ctx.backend(replica.box_id).name,
            on_disk,
        )
        ctx.backend(replica.box_id).delete(replica.key)
        state.hasher = None
        replica.bytes_staged = 0
        return 0
    finally:
        if locked is None:
            state.lock.release()


def _info(ctx: ServerContext, replica: Replica) -> UploadInfo:
    return UploadInfo(
        token=replica.upload_token or "",
        datafile_id=replica.datafile_id,
        offset=_offset(ctx, replica),
        length=replica.datafile.size,
        metadata=replica.upload_metadata,
        expires_at=replica.expires_at if replica.state in (S.registered, S.uploading) else None,
        state=replica.state,
    )


def create_upload(
    ctx: ServerContext, uploader: Uploader, length: int, metadata_header: str | None
) -> UploadInfo:
    """A stock tus client's POST: the upload becomes a datafile like any other."""
    meta = parse_metadata(metadata_header)
    for required in ("filename", "dataset"):
        if not meta.get(required):
            raise InvalidInput("Upload-Metadata", f"must include {required!r}")
    declared = meta.get("sha256")
    if declared is not None and not _HEX64.match(declared):
        raise InvalidInput("Upload-Metadata", "sha256 must be 64 hexadecimal digits")
    item = DatafileRegister(
        dataset=meta["dataset"],
        directory=meta.get("directory", ""),
        filename=meta["filename"],
        experiment=meta.get("experiment") or None,
        owner=meta.get("owner") or None,
        size=length,
        sha256=declared,
    )
    try:
        item = datafiles.clean_item(item)
    except InvalidName as exc:
        raise InvalidName(f"Upload-Metadata {exc.field}", exc.rule, exc.value) from None
    with ctx.catalog.session() as session:
        # A stock client cannot be asked to hash: bytes it sends are taken as
        # a new version unless their declared sha256 is the stored one's.
        _, replica, decision = datafiles.register_one(
            ctx, session, uploader, item, awaits_complete=False, can_hash=False
        )
        if decision != "skip":
            replica.declared_sha256 = declared.lower() if declared else None
            replica.upload_metadata = metadata_header
            if replica.state == S.staged:  # zero bytes: finished on creation
                verify.verify_staged(ctx, session, replica)
        info = _info(ctx, replica)
    if info.state == S.verified:
        ctx.runner.submit("promote", replica_id=replica.id)
    return info


def upload_info(ctx: ServerContext, uploader: Uploader, token: str) -> UploadInfo:
    with ctx.catalog.session() as session:
        return _info(ctx, _owned_replica(session, uploader, token))


def _lock_upload(ctx: ServerContext, token: str) -> UploadState:
    """Take the upload's lock, or refuse: two requests never write one upload."""
    state = ctx.upload_state(token)
    if not state.lock.acquire(blocking=False):
        raise UploadLocked(f"upload {token} is being written by another request")
    return state


def terminate(ctx: ServerContext, uploader: Uploader, token: str) -> None:
    """Drop an unfinished upload and its staged bytes; stored files are untouchable."""
    state = _lock_upload(ctx, token)
    try:
        with ctx.catalog.session() as session:
            replica = _owned_replica(session, uploader, token)
            if replica.state in (S.verified, S.stored):
                raise Conflict(f"upload {token} is already {replica.state}; it cannot be deleted")
            ctx.backend(replica.box_id).delete(replica.key)
            session.delete(replica.datafile)
    finally:
        state.lock.release()
    ctx.forget_upload(token)


class PatchWriter:
    """One PATCH: ``write`` chunks, then ``finish`` (or ``abort`` on a dropped body).

    Holds the upload's lock from :meth:`begin` until finish/abort, so two
    requests can never interleave bytes of one upload.
    """

    def __init__(
        self,
        ctx: ServerContext,
        state: UploadState,
        replica_id: int,
        token: str,
        length: int,
        writer: StagedWriter,
        hasher: MultiHasher,
        checksum: tuple[str, bytes] | None,
    ) -> None:
        self._ctx = ctx
        self._state = state
        self._replica_id = replica_id
        self._token = token
        self.length = length
        self._writer = writer
        self._start = writer.tell()
        self._hasher = hasher
        self._snapshot = hasher.copy()
        self._checksum = checksum
        self._chunk_hash = hashlib.new(checksum[0]) if checksum else None
        self._open = True

    @classmethod
    def begin(
        cls,
        ctx: ServerContext,
        uploader: Uploader,
        token: str,
        offset: int,
        checksum: tuple[str, bytes] | None,
        content_length: int | None,
    ) -> PatchWriter:
        state = _lock_upload(ctx, token)
        try:
            with ctx.catalog.session() as session:
                replica = _owned_replica(session, uploader, token)
                length = replica.datafile.size
                current = _offset(ctx, replica, state)
                if replica.state not in (S.registered, S.uploading):
                    if replica.state in (S.staged, S.verified, S.stored) and offset == length:
                        raise Conflict(f"upload {token} is complete ({replica.state})")
                    raise Conflict(f"upload {token} is {replica.state}; register it again to retry")
                if offset != current:
                    raise OffsetMismatch(current, offset)
                if content_length is not None and offset + content_length > length:
                    raise LengthExceeded(
                        f"{content_length} bytes at offset {offset} would run past "
                        f"Upload-Length {length}"
                    )
                if replica.state == S.registered:
                    transition(session, replica, S.uploading)
                replica.expires_at = utcnow() + dt.timedelta(hours=ctx.settings.upload_expiry_hours)
                backend = ctx.backend(replica.box_id)
                replica_id, key = replica.id, replica.key
            if state.hasher is None or state.hasher.length != current:
                # First PATCH since a restart (or since another process wrote): hash
                # the staged prefix once, then continue hashing as bytes arrive.
                state.hasher = MultiHasher(ctx.settings.algorithms)
                if current:
                    with backend.open_read(key) as f:
                        state.hasher.update_from(f, current)
            writer = backend.open_write(key, current, size_hint=length)
            return cls(ctx, state, replica_id, token, length, writer, state.hasher, checksum)
        except BaseException:
            state.lock.release()
            raise

    @property
    def offset(self) -> int:
        return self._writer.tell()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.offset + len(data) > self.length:
            raise LengthExceeded(f"the body runs past Upload-Length {self.length}")
        self._writer.write(data)
        self._hasher.update(data)
        if self._chunk_hash is not None:
            self._chunk_hash.update(data)

    def finish(self) -> int:
        """Accept this PATCH's bytes; returns the new offset."""
        if self._checksum is not None and self._chunk_hash is not None:
            algo, expected = self._checksum
            actual = self._chunk_hash.digest()
            if actual != expected:
                self._discard()
                self._close()
                raise ChecksumMismatch(
                    algo, base64.b64encode(expected).decode(), base64.b64encode(actual).decode()
                )
        return self._close()

    def abort(self, discard: bool = False) -> int:
        """The body ended early or broke a rule; keep what arrived unless ``discard``.

        A chunk that carried ``Upload-Checksum`` cannot be checked when cut
        short, so it is always discarded.
        """
        if discard or self._checksum is not None:
            self._discard()
        return self._close()

    def _discard(self) -> None:
        self._writer.discard_to(self._start)
        self._state.hasher = self._snapshot
        self._hasher = self._snapshot

    def _close(self) -> int:
        if not self._open:
            return self.offset
        self._open = False
        offset = self.offset
        try:
            try:
                self._writer.close()
            except BaseException:
                # What this PATCH wrote may not have been kept: hash from where
                # it began, so a box that cannot be re-read restarts honestly.
                self._state.hasher = self._snapshot
                raise
            self._record(offset)
        finally:
            self._state.lock.release()
        return offset

    def _record(self, offset: int) -> None:
        ctx = self._ctx
        promote = False
        with ctx.catalog.session() as session:
            replica = session.get(Replica, self._replica_id)
            if replica is None:
                return
            if offset < self.length or replica.state != S.uploading:
                replica.bytes_staged = offset
                return
            digests = self._hasher.hexdigests()
            transition(
                session,
                replica,
                S.staged,
                bytes_staged=offset,
                staged_sha256=digests["sha256"],
                staged_md5=digests.get("md5"),
            )
            verify.verify_staged(ctx, session, replica)
            promote = replica.state == S.verified
        ctx.forget_upload(self._token)
        if promote:
            ctx.runner.submit("promote", replica_id=self._replica_id)
