"""Verify staged replicas and promote them to permanent storage.

Both steps are idempotent task functions: run twice, or killed half way, they
leave the same end state. The sweep re-submits anything stuck.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from stagebox.checksums import MultiHasher
from stagebox.errors import ChangedDuringUpload, Conflict, StageboxError
from stagebox.server.db.models import Datafile, Dataset, Replica, ReplicaState, utcnow
from stagebox.server.services import boxes
from stagebox.server.services.context import ServerContext
from stagebox.server.services.states import transition

log = logging.getLogger(__name__)
S = ReplicaState


def store_key(datafile: Datafile) -> str:
    """The permanent key of one version of a datafile (see :func:`store_key_of`)."""
    dataset = datafile.dataset
    return store_key_of(
        dataset.uploader.uuid,
        dataset.owner,
        dataset.id,
        datafile.version,
        datafile.directory,
        datafile.filename,
    )


def store_key_of(
    uploader_uuid: str, owner: str, dataset_id: int, version: int, directory: str, filename: str
) -> str:
    """``<uploader-uuid>/<owner or _>/<dataset-id>/v<version>/<directory>/<filename>``.

    The dataset's id keeps apart datasets whose names repeat (across owners and
    experiments); the version keeps every version's bytes under a key of its
    own, so a key whose digests are recorded is never written again.
    """
    parts = (uploader_uuid, owner or "_", str(dataset_id), f"v{version}", directory, filename)
    return "/".join(p for p in parts if p)


def part_key(key: str) -> str:
    """Where an sftp client writes before renaming into place."""
    return key + ".part"


def discard_staged(ctx: ServerContext, replica: Replica) -> None:
    """Delete whatever bytes a replica has in staging (and an sftp partial)."""
    backend = ctx.backend(replica.box_id)
    backend.delete(replica.key)
    if replica.method != "http":
        backend.delete(part_key(replica.key))
    ctx.forget_upload(replica.upload_token or "")


def rehash_staged(ctx: ServerContext, replica: Replica) -> dict[str, str]:
    """Read staged bytes back: only where the server did not see them arrive.

    The file is opened without following symlinks and must be a regular file
    (the backend refuses anything else). Its identity (device, inode, size,
    mtime) before and after must agree, and is returned as ``"identity"`` so
    promotion can refuse a file swapped or rewritten after it was hashed.
    """
    backend = ctx.backend(replica.box_id)
    hasher = MultiHasher(ctx.settings.algorithms)
    before = backend.identity(replica.key)
    # On the other core, while this one hashes: promotion's fsync then waits less.
    writeback = threading.Thread(
        target=backend.start_writeback, args=(replica.key,), name="stagebox-writeback"
    )
    writeback.start()
    try:
        with backend.open_read(replica.key) as f:
            hasher.update_from(f)
    finally:
        writeback.join()
    after = backend.identity(replica.key)
    if before != after:
        raise ChangedDuringUpload("the staged file changed while the server hashed it")
    digests = hasher.hexdigests()
    if after is not None:
        digests["identity"] = after
    return digests


@dataclass(frozen=True)
class Arrival:
    """What one look at the staging box found for an sftp replica."""

    whole: bool  # staged now: the final name holds exactly the registered size
    final: int | None  # bytes under the final name; None before the client's rename


def stage_arrived(ctx: ServerContext, session: Session, replica: Replica) -> Arrival:
    """An sftp replica is staged once its final name holds exactly the registered size.

    On a box served by stagebox's own endpoint only the endpoint decides that
    (it hashed the bytes as they came and cuts off every handle first): the
    disk is not looked at.

    Raises what the backend raises for a symlink or a non-regular file; a size
    that is not the registered one leaves the replica where it is, with the
    bytes seen so far (the final name, else the partial) as ``bytes_staged``.
    """
    if replica.state == S.staged:
        return Arrival(True, replica.datafile.size)
    if replica.state not in (S.registered, S.uploading):
        return Arrival(False, None)
    if boxes.hashes_on_write(replica.box.attributes):
        return Arrival(False, None)  # the endpoint records it staged once it is whole
    size = replica.datafile.size
    backend = ctx.backend(replica.box_id)
    final = backend.size(replica.key)
    if final != size:
        seen = final if final is not None else backend.size(part_key(replica.key)) or 0
        # Not staged is never shown as full-size (a partial may hold every byte
        # before its rename, a wrong-size file may hold more).
        seen = max(min(seen, size - 1), 0)
        if seen != replica.bytes_staged:
            if replica.state == S.registered and seen:
                transition(session, replica, S.uploading, bytes_staged=seen)
            else:
                replica.bytes_staged = seen
        return Arrival(False, final)
    target = (S.uploading, S.staged) if replica.state == S.registered else (S.staged,)
    for state in target:
        transition(session, replica, state, bytes_staged=size)
    return Arrival(True, final)


def stage_if_whole(ctx: ServerContext, session: Session, replica: Replica) -> bool:
    """Move an upload whose every byte is on disk to ``staged``; True if it is staged.

    The staging box, not the catalog, knows how many bytes arrived: a server
    killed between writing the last byte and recording it leaves the replica
    ``uploading`` with the whole file staged. The digest comes from the upload's
    running hash when it covers the whole file, else from one re-read.
    """
    if replica.method != "http":
        return stage_arrived(ctx, session, replica).whole
    if replica.state == S.staged:
        return True
    if replica.state not in (S.registered, S.uploading):
        return False
    size = replica.datafile.size
    on_disk = ctx.backend(replica.box_id).size(replica.key) or 0
    if on_disk != size:
        replica.bytes_staged = min(on_disk, size)
        return False
    upload = ctx.upload_state(replica.upload_token or "")
    if not upload.lock.acquire(blocking=False):
        return False  # a PATCH is still writing it; it will record the end itself
    try:
        hasher = upload.hasher
        if hasher is not None and hasher.length == size:
            digests = hasher.hexdigests()
        else:
            digests = rehash_staged(ctx, replica)
        target = (S.uploading, S.staged) if replica.state == S.registered else (S.staged,)
        for state in target:
            transition(session, replica, state)
        replica.bytes_staged = size
        replica.staged_sha256 = digests["sha256"]
        replica.staged_md5 = digests.get("md5")
    finally:
        upload.lock.release()
    return True


def verify_staged(
    ctx: ServerContext, session: Session, replica: Replica, *, size_only: bool = False
) -> None:
    """Compare a staged replica's size and digests with what was declared.

    Waits (does nothing) while a client that promised ``/complete`` has not sent
    its digests, unless ``size_only`` (the sweep's fallback for a client that
    never came back). A mismatch fails the replica and keeps the staged bytes.
    """
    if replica.state != S.staged:
        return
    datafile = replica.datafile
    if replica.declared_sha256 is None and replica.awaits_complete and not size_only:
        return
    if replica.bytes_staged != datafile.size:
        transition(
            session,
            replica,
            S.failed,
            error=f"size mismatch: registered {datafile.size} bytes, staged {replica.bytes_staged}",
        )
        return
    if replica.staged_sha256 is None:
        try:
            digests = rehash_staged(ctx, replica)
        except StageboxError as exc:
            transition(session, replica, S.failed, error=f"staged file refused: {exc}")
            return
        replica.staged_sha256 = digests["sha256"]
        replica.staged_md5 = digests.get("md5")
        replica.staged_identity = digests.get("identity")
    for algo, declared, staged in (
        ("sha256", replica.declared_sha256, replica.staged_sha256),
        ("md5", replica.declared_md5, replica.staged_md5),
    ):
        if declared is not None and staged is not None and declared != staged:
            transition(
                session,
                replica,
                S.failed,
                error=f"{algo} mismatch: declared {declared}, staged bytes hash to {staged}",
            )
            return
    datafile.sha256 = replica.staged_sha256
    datafile.md5 = replica.staged_md5 or replica.declared_md5
    datafile.checksum_source = "client" if replica.declared_sha256 else "server"
    transition(session, replica, S.verified, verified_at=utcnow())


def _load(session: Session, replica_id: int) -> Replica | None:
    return session.scalar(
        select(Replica)
        .options(
            joinedload(Replica.datafile).joinedload(Datafile.dataset).joinedload(Dataset.uploader)
        )
        .where(Replica.id == replica_id)
    )


def verify_task(ctx: ServerContext, replica_id: int, size_only: bool = False) -> None:
    with ctx.catalog.session() as session:
        replica = _load(session, replica_id)
        if replica is None:
            return
        fuse = False
        if stage_if_whole(ctx, session, replica):
            fuse = _must_copy_unhashed(ctx, replica, size_only)
            if not fuse:
                verify_staged(ctx, session, replica, size_only=size_only)
        verified = replica.state == S.verified
    if fuse:
        verify_by_copy(ctx, replica_id, size_only)
    elif verified:
        promote_task(ctx, replica_id)


def _must_copy_unhashed(ctx: ServerContext, replica: Replica, size_only: bool) -> bool:
    """Bytes the server has not hashed yet that promotion will have to copy: read
    them once, hashing while copying, instead of once to verify and once to copy.

    Bytes an OpenSSH staging account wrote are always copied: renamed, they would
    stay the inode that account wrote, which a handle it kept open, or a hard link
    it made, could write again after they are stored.
    """
    ready = replica.declared_sha256 is not None or size_only or not replica.awaits_complete
    return (
        replica.state == S.staged
        and replica.staged_sha256 is None
        and ready
        and (_behind_our_back(replica) or not ctx.backend(replica.box_id).can_rename_to(ctx.store))
    )


def _behind_our_back(replica: Replica) -> bool:
    """Staged through sshd by an account that is not the server's."""
    attrs = replica.box.attributes
    return (
        replica.method != "http"
        and boxes.is_sftp(replica.box)
        and not (boxes.hashes_on_write(attrs))
    )


def verify_by_copy(ctx: ServerContext, replica_id: int, size_only: bool = False) -> None:
    """Copy a staged file into the store while hashing it, then verify that hash.

    The copy is what gets verified, so what is stored is what was checked. A
    mismatch deletes the copy and fails the replica (its staged bytes stay); a
    staged file that changed during the copy is refused the same way.
    """
    with ctx.catalog.session() as session:
        replica = _load(session, replica_id)
        if replica is None or replica.state != S.staged:
            return
        src, key, dest_key = ctx.backend(replica.box_id), replica.key, store_key(replica.datafile)
        size = replica.datafile.size
        copy = _behind_our_back(replica)
    store = ctx.store
    algorithms = ctx.settings.algorithms
    try:
        before = src.identity(key, strict=True)
        if src.links(key) > 1:
            raise ChangedDuringUpload("the staged file has other hard links")
        if copy:
            result = src.stream_copy(key, store, dest_key, algorithms, size=size)
        else:
            result = src.promote(key, store, dest_key, algorithms)
        if src.identity(key, strict=True) != before:
            raise ChangedDuringUpload("the staged file changed while the server copied it")
        copied = store.size(dest_key)
    except StageboxError as exc:
        store.delete(dest_key)
        _fail(ctx, replica_id, f"staged file refused: {exc}")
        return
    with ctx.catalog.session() as session:
        replica = _load(session, replica_id)
        if replica is None or replica.state != S.staged:
            store.delete(dest_key)
            return
        replica.staged_sha256 = result.digests["sha256"]
        replica.staged_md5 = result.digests.get("md5")
        replica.bytes_staged = copied if copied is not None else 0
        verify_staged(ctx, session, replica, size_only=size_only)
        verified = replica.state == S.verified
        if replica.bytes_staged != size:
            replica.bytes_staged = min(replica.bytes_staged, size)
    if not verified:
        store.delete(dest_key)
        return
    record_stored(ctx, [(replica_id, dest_key)])
    src.delete(key)


def promote_task(ctx: ServerContext, replica_id: int) -> None:
    """Move a verified replica into the permanent box and record it stored."""
    with ctx.catalog.session() as session:
        replica = _load(session, replica_id)
        if replica is None or replica.state != S.verified:
            return
        datafile = replica.datafile
        src_box, src_key = replica.box_id, replica.key
        dest_key = store_key(datafile)
        expected = datafile.sha256
        identity = replica.staged_identity
    src, dest = ctx.backend(src_box), ctx.store
    try:
        result = src.promote(src_key, dest, dest_key, ctx.settings.algorithms)
    except StageboxError as exc:
        _fail(ctx, replica_id, f"promotion failed: {exc}")
        return
    if result.renamed and identity is not None and dest.identity(dest_key) != identity:
        # Bytes that arrived behind the server's back were swapped or rewritten
        # between hashing and the move: what was hashed is not what is here.
        dest.delete(dest_key)
        _fail(ctx, replica_id, "the staged file changed after it was verified")
        return
    if not result.renamed and result.digests.get("sha256") != expected:
        dest.delete(dest_key)
        _fail(
            ctx,
            replica_id,
            f"copy to permanent storage hashed to {result.digests.get('sha256')}, "
            f"expected {expected}",
        )
        return
    record_stored(ctx, [(replica_id, dest_key)])
    if not result.renamed:
        src.delete(src_key)


def record_stored(ctx: ServerContext, promoted: list[tuple[int, str]]) -> None:
    """One transaction for a batch of promoted replicas."""
    now = utcnow()
    with ctx.catalog.session() as session:
        for replica_id, dest_key in promoted:
            replica = session.get(Replica, replica_id)
            if replica is None or replica.state != S.verified:
                continue
            transition(
                session, replica, S.stored, box_id=ctx.store_box_id, key=dest_key, stored_at=now
            )
            ctx.forget_upload(replica.upload_token or "")


def _fail(ctx: ServerContext, replica_id: int, reason: str) -> None:
    log.warning("replica %s failed: %s", replica_id, reason)
    with ctx.catalog.session() as session:
        replica = session.get(Replica, replica_id)
        if replica is not None:
            with contextlib.suppress(Conflict):  # someone else decided first
                transition(session, replica, S.failed, error=reason)


def sweep(ctx: ServerContext) -> dict[str, int]:
    """Re-submit stuck work; expire abandoned uploads. Returns counts per action."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=ctx.settings.stale_after)
    counts = {"verify": 0, "promote": 0, "expired": 0}
    with ctx.catalog.session() as session:
        staged = session.execute(
            select(
                Replica.id,
                Replica.awaits_complete,
                Replica.declared_sha256,
                Replica.method,
                Replica.updated_at,
            ).where(Replica.state == S.staged)
        ).all()
        verified = list(
            session.scalars(
                select(Replica.id).where(Replica.state == S.verified, Replica.updated_at < stale)
            )
        )
        # Uploads idle for a while whose last bytes may have landed unrecorded,
        # and sftp uploads whose client never called /complete: their bytes
        # arrive behind our back, so only a look at the staging box tells.
        idle_uploads = list(
            session.scalars(
                select(Replica.id).where(
                    Replica.state == S.uploading,
                    Replica.updated_at < stale,
                    Replica.method == "http",
                )
            )
        )
        arrivals = list(
            session.scalars(
                select(Replica.id).where(
                    Replica.state.in_([S.registered, S.uploading]),
                    Replica.updated_at < stale,
                    Replica.method != "http",
                )
            )
        )
        expired = list(
            session.scalars(
                select(Replica).where(
                    Replica.state.in_([S.registered, S.uploading, S.staged]),
                    Replica.declared_sha256.is_(None),
                    Replica.expires_at.is_not(None),
                    Replica.expires_at < now,
                )
            )
        )
        for replica in expired:
            discard_staged(ctx, replica)
            transition(
                session,
                replica,
                S.failed,
                bytes_staged=0,
                error="upload expired before it was finished; register the file again",
            )
            counts["expired"] += 1
    for replica_id, awaits, declared, method, updated_at in staged:
        if declared is not None or not awaits:
            ctx.runner.submit("verify", replica_id=replica_id)
            counts["verify"] += 1
        elif updated_at < stale and method != "http":
            # Bytes that arrived behind our back whose client never came back:
            # verify by size with our own digest. An http client that never sent
            # /complete may have sent a file that changed under it, so it waits
            # for the client (a rerun completes it) or for expiry.
            ctx.runner.submit("verify", replica_id=replica_id, size_only=True)
            counts["verify"] += 1
    for replica_id in verified:
        ctx.runner.submit("promote", replica_id=replica_id)
        counts["promote"] += 1
    for replica_id in idle_uploads:
        ctx.runner.submit("verify", replica_id=replica_id)
        counts["verify"] += 1
    for replica_id in arrivals:
        ctx.runner.submit("arrival", replica_id=replica_id)
        counts["verify"] += 1
    return counts


def arrival_task(ctx: ServerContext, replica_id: int) -> None:
    """Look at an sftp upload whose client went quiet: verify it if it is whole.

    A final name holding the registered size is verified with the server's own
    digest. Anything else stays unfinished, with the bytes seen so far (the
    final name, else the partial) recorded; a final name larger than
    registered fails with the reason.
    """
    with ctx.catalog.session() as session:
        replica = _load(session, replica_id)
        if replica is None or replica.state not in (S.registered, S.uploading):
            return
        try:
            arrival = stage_arrived(ctx, session, replica)
        except StageboxError as exc:
            transition(session, replica, S.failed, error=f"staged file refused: {exc}")
            return
        if not arrival.whole:
            final = arrival.final
            if final is not None and final > replica.datafile.size:
                transition(
                    session,
                    replica,
                    S.failed,
                    error=(
                        f"size mismatch: registered {replica.datafile.size} bytes, staged {final}"
                    ),
                )
            return
    verify_task(ctx, replica_id, size_only=True)
