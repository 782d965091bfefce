"""Ingest jobs in the catalog: finding bags, claiming work, and what a job shows.

A job is claimed with a lease (owner + expiry) by a conditional update, so two
workers never run the same job at once; the lease is renewed at every
checkpoint. A worker that dies leaves its lease behind: another takes the job
when the lease runs out, or at once when the owner was a process on this host
that no longer exists.

A job cancelled by an operator loses its lease with its ``running`` status, so
the worker's next checkpoint (:func:`renew`) raises :class:`LeaseLost` and the
worker stops there, before the job stores anything.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from stagebox.errors import Conflict, InvalidInput, NotFound
from stagebox.server.db.models import (
    IngestFile,
    IngestJob,
    IngestStage,
    IngestStatus,
    StorageBox,
    utcnow,
)
from stagebox.server.services.context import ServerContext
from stagebox.storage import StorageBackend

ENDED = (IngestStatus.succeeded, IngestStatus.failed, IngestStatus.cancelled)
STAGES = tuple(s for s in IngestStage if s is not IngestStage.done)
# What discovery takes for a bag; the job's profile judges the serialization.
BAG_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# A job may be cancelled until it begins to store its files.
CANCELLABLE = (IngestStage.stage, IngestStage.validate, IngestStage.verify)


def worker_id() -> str:
    """Who holds a lease: host, process and a nonce (a reused pid is not the same worker)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_gone(owner: str | None) -> bool:
    """True when ``owner`` was a process on this host that no longer runs."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def bag_name(key: str) -> str:
    """The bag's name: the tar's file name without ``.tar``, ``.tar.gz`` or ``.tgz``."""
    name = PurePosixPath(key).name
    for suffix in BAG_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class Boxes:
    receiving: int
    staging: int
    permanent: int


def resolve_boxes(
    ctx: ServerContext, receiving: str, staging: str | None, permanent: str | None
) -> Boxes:
    """Box ids by name; staging and permanent default to the embedded boxes."""
    with ctx.catalog.session() as s:

        def find(name: str, field: str, roles: tuple[str, ...]) -> int:
            box = s.scalar(select(StorageBox).where(StorageBox.name == name))
            if box is None:
                raise InvalidInput(field, f"no storage box named {name!r}", name)
            if box.role not in roles:
                raise InvalidInput(
                    field, f"box {name!r} has role {box.role}, not {' or '.join(roles)}", name
                )
            return box.id

        return Boxes(
            receiving=find(receiving, "--receiving", ("receiving",)),
            staging=find(staging, "--staging", ("staging",)) if staging else ctx.staging_box_id,
            permanent=(
                find(permanent, "--permanent", ("permanent",)) if permanent else ctx.store_box_id
            ),
        )


def submit(
    ctx: ServerContext,
    boxes: Boxes,
    key: str,
    *,
    profile: dict[str, Any] | None,
    delete_received: bool = False,
) -> tuple[IngestJob, bool]:
    """A job for the tar at ``key`` in its current version; ``(job, created)``.

    The same version (etag, or identity for a directory) is never ingested
    twice. A new version supersedes an unfinished job of the same tar.
    """
    receiving = ctx.backend(boxes.receiving)
    size = receiving.size(key)
    if size is None:
        raise NotFound(f"{key}: no such bag in the receiving box")
    etag = receiving.identity(key) or f"size:{size}"
    with ctx.catalog.session() as s:
        job = s.scalar(
            select(IngestJob).where(
                IngestJob.receiving_box_id == boxes.receiving,
                IngestJob.bag == key,
                IngestJob.etag == etag,
            )
        )
        if job is not None:
            return job, False
        job = IngestJob(
            bag=key,
            name=bag_name(key),
            etag=etag,
            size=size,
            receiving_box_id=boxes.receiving,
            staging_box_id=boxes.staging,
            permanent_box_id=boxes.permanent,
            profile=profile,
            delete_received=delete_received,
            stage=IngestStage.stage,
            status=IngestStatus.pending,
            attempts=0,
            bytes_read=0,
            bytes_staged=0,
            problems=[],
            errors=[],
            error_count=0,
            warnings=[],
        )
        s.add(job)
        s.flush()
        older = s.execute(
            select(
                IngestJob.id, IngestJob.staging_box_id, IngestJob.status, IngestJob.lease_owner
            ).where(
                IngestJob.receiving_box_id == boxes.receiving,
                IngestJob.bag == key,
                IngestJob.id != job.id,
                IngestJob.status.in_([IngestStatus.pending, IngestStatus.running]),
            )
        ).all()
        # A running job's worker removes what it staged once it sees it lost the
        # job; nobody else will for a job no live worker holds.
        orphaned = [
            (row.id, row.staging_box_id)
            for row in older
            if row.status == IngestStatus.pending or _owner_is_gone(row.lease_owner)
        ]
        s.execute(
            update(IngestJob)
            .where(IngestJob.id.in_([row.id for row in older]))
            .values(
                status=IngestStatus.failed,
                superseded_by=job.id,
                errors=[f"superseded by job {job.id} (a newer version of {key})"],
                error_count=1,
                finished_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    for job_id, staging_box_id in orphaned:
        remove_staged(ctx.backend(staging_box_id), job_id)
    return job, True


def staged_keys(staging: StorageBackend, job_id: int) -> list[str]:
    """Every key under the job's own prefix ``<job_id>/`` in ``staging`` (the
    slash keeps job 1 out of job 10's objects)."""
    prefix = f"{job_id}/"
    return [o.key for o in staging.list(str(job_id)) if o.key.startswith(prefix)]


def remove_staged(staging: StorageBackend, job_id: int) -> int:
    """Delete every object under the job's own staging prefix, and nothing else."""
    keys = staged_keys(staging, job_id)
    for key in keys:
        staging.delete(key)
    return len(keys)


def discover(
    ctx: ServerContext, boxes: Boxes, *, profile: dict[str, Any] | None, delete_received: bool
) -> list[int]:
    """The jobs still to run for the bags in the receiving box (:data:`BAG_SUFFIXES`).

    A bag whose version has no job gets one; a job that has already ended is
    left out, so a bag that failed long ago is no part of a later run.
    """
    receiving = ctx.backend(boxes.receiving)
    found = []
    for obj in sorted(receiving.list(), key=lambda o: o.key):
        if not obj.key.endswith(BAG_SUFFIXES):
            continue
        try:
            job, _created = submit(
                ctx, boxes, obj.key, profile=profile, delete_received=delete_received
            )
        except NotFound:
            continue  # gone between the listing and the look
        if job.status not in ENDED:
            found.append(job.id)
    return found


def unfinished(ctx: ServerContext, receiving_box_id: int) -> list[int]:
    with ctx.catalog.session() as s:
        return list(
            s.scalars(
                select(IngestJob.id).where(
                    IngestJob.receiving_box_id == receiving_box_id,
                    IngestJob.status.not_in(ENDED),
                )
            )
        )


def runnable(ctx: ServerContext, job_ids: Iterable[int]) -> list[int]:
    """Of ``job_ids``, those a worker may claim now."""
    now = utcnow()
    ids = list(job_ids)
    with ctx.catalog.session() as s:
        rows = s.execute(
            select(IngestJob.id, IngestJob.status, IngestJob.lease_owner, IngestJob.lease_until)
            .where(IngestJob.id.in_(ids))
            .where(
                or_(
                    and_(
                        IngestJob.status == IngestStatus.pending,
                        or_(IngestJob.next_attempt_at.is_(None), IngestJob.next_attempt_at <= now),
                    ),
                    IngestJob.status == IngestStatus.running,
                )
            )
        ).all()
    return [
        row.id
        for row in rows
        if row.status == IngestStatus.pending
        or (row.lease_until is not None and row.lease_until < now)
        or _owner_is_gone(row.lease_owner)
    ]


def claim(ctx: ServerContext, job_id: int, owner: str) -> IngestJob | None:
    """Take ``job_id`` for one attempt, or None when someone else holds it."""
    now = utcnow()
    lease = now + dt.timedelta(seconds=ctx.settings.ingest_lease)
    with ctx.catalog.session() as s:
        job = s.get(IngestJob, job_id)
        if job is None or job.status in ENDED:
            return None
        if job.status == IngestStatus.pending:
            if job.next_attempt_at is not None and job.next_attempt_at > now:
                return None
        elif not (
            (job.lease_until is not None and job.lease_until < now)
            or _owner_is_gone(job.lease_owner)
        ):
            return None
        same_holder = (
            IngestJob.lease_owner.is_(None)
            if job.lease_owner is None
            else IngestJob.lease_owner == job.lease_owner
        )
        taken = s.execute(
            update(IngestJob)
            .where(IngestJob.id == job_id, IngestJob.status == job.status, same_holder)
            .values(
                status=IngestStatus.running,
                lease_owner=owner,
                lease_until=lease,
                attempts=IngestJob.attempts + 1,
                updated_at=now,
            )
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return None
    with ctx.catalog.session() as s:
        return s.get(IngestJob, job_id)


class LeaseLost(Conflict):
    """The job was superseded, requeued or taken by another worker mid-attempt."""


def renew(session: Session, ctx: ServerContext, job_id: int, owner: str, **values: Any) -> None:
    """Extend the lease and save ``values`` (a checkpoint), or raise :class:`LeaseLost`."""
    lease = utcnow() + dt.timedelta(seconds=ctx.settings.ingest_lease)
    done = session.execute(
        update(IngestJob)
        .where(
            IngestJob.id == job_id,
            IngestJob.lease_owner == owner,
            IngestJob.status == IngestStatus.running,
        )
        .values(lease_until=lease, updated_at=utcnow(), **values)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {job_id}: no longer held by this worker")


def release(ctx: ServerContext, job_id: int, owner: str) -> None:
    """Hand a job back to the queue mid-attempt (a worker stopping); the attempt is not counted."""
    with ctx.catalog.session() as s:
        s.execute(
            update(IngestJob)
            .where(
                IngestJob.id == job_id,
                IngestJob.lease_owner == owner,
                IngestJob.status == IngestStatus.running,
            )
            .values(
                status=IngestStatus.pending,
                lease_owner=None,
                lease_until=None,
                attempts=IngestJob.attempts - 1,
                updated_at=utcnow(),
            )
        )


def requeue(ctx: ServerContext, job_id: int, stage: str | None = None) -> IngestJob:
    """Put a job back in the queue for an operator, from ``stage`` or where it stopped."""
    if stage is not None and stage not in STAGES:
        raise InvalidInput("--stage", f"must be one of {', '.join(STAGES)}", stage)
    with ctx.catalog.session() as s:
        job = s.get(IngestJob, job_id)
        if job is None:
            raise NotFound(f"no ingest job {job_id}")
        if job.status == IngestStatus.running and not _owner_is_gone(job.lease_owner):
            raise Conflict(f"job {job_id} is running on {job.lease_owner}")
        if job.superseded_by is not None:
            raise Conflict(f"job {job_id} was superseded by job {job.superseded_by}")
        has_files = s.scalar(select(IngestFile.id).where(IngestFile.job_id == job_id).limit(1))
        target = stage or job.stage
        if target == IngestStage.done:
            target = IngestStage.stage
        if has_files is None and target != IngestStage.stage:
            target = IngestStage.stage  # nothing staged is left to validate or store
        job.stage = target
        job.status = IngestStatus.pending
        job.attempts = 0
        job.next_attempt_at = None
        job.lease_owner = None
        job.lease_until = None
        job.finished_at = None
        job.errors = []
        job.error_count = 0
        return job


def _why_not_cancel(job: IngestJob) -> str | None:
    """Why ``job`` cannot be cancelled, or None when it can."""
    what = f"job {job.id} ({job.bag})"
    if job.status == IngestStatus.succeeded:
        return f"{what} has succeeded: its files are stored, there is nothing to cancel"
    if job.status == IngestStatus.cancelled:
        return f"{what} is already cancelled"
    if job.superseded_by is not None:
        return f"{what} was superseded by job {job.superseded_by}: there is nothing to cancel"
    if job.stage not in CANCELLABLE:
        return (
            f"{what} has reached stage {job.stage}, where its files are stored: too late to "
            "cancel (requeue it to finish)"
        )
    return None


def cancel(ctx: ServerContext, job_id: int) -> dict[str, Any]:
    """Stop a job before it stores anything: its staged objects are deleted, its
    record stays with status ``cancelled``.

    A pending, running or failed job may be cancelled until it reaches the store
    stage; anything else raises :class:`InvalidInput` naming why. A worker
    running the job stops at its next checkpoint and deletes what it staged
    meanwhile. Returns ``id``, ``bag``, ``was`` (the status before) and
    ``removed`` (staged objects deleted now).
    """
    with ctx.catalog.session() as s:
        job = s.get(IngestJob, job_id)
        if job is None:
            raise NotFound(f"no ingest job {job_id}")
        why = _why_not_cancel(job)
        if why is not None:
            raise InvalidInput("JOB", why, job_id)
        was, bag, staging_box_id = job.status, job.bag, job.staging_box_id
        # Conditional, like claim and renew: a worker moving the job on to its
        # store stage meanwhile wins, and the cancel is refused.
        done = s.execute(
            update(IngestJob)
            .where(
                IngestJob.id == job_id,
                IngestJob.status == was,
                IngestJob.stage.in_(CANCELLABLE),
            )
            .values(
                status=IngestStatus.cancelled,
                lease_owner=None,
                lease_until=None,
                next_attempt_at=None,
                finished_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            s.rollback()
            s.refresh(job)
            raise InvalidInput("JOB", _why_not_cancel(job) or f"job {job_id} changed: try again")
        s.execute(delete(IngestFile).where(IngestFile.job_id == job_id))
    removed = remove_staged(ctx.backend(staging_box_id), job_id)
    return {"id": job_id, "bag": bag, "was": was, "removed": removed}


def amount(size: int) -> str:
    """``size`` bytes for a person: ``812 B``, ``3.4 MiB``, ``1.2 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Ending:
    """What became of one job: its id, the bag's key, its status and one line of why."""

    id: int
    bag: str
    status: str
    what: str


def _ending(session: Session, job: IngestJob) -> Ending:
    what = str(job.status)
    if job.status == IngestStatus.succeeded:
        count, size = session.execute(
            select(func.count(IngestFile.id), func.coalesce(func.sum(IngestFile.size), 0)).where(
                IngestFile.job_id == job.id
            )
        ).one()
        unchanged = session.scalar(
            select(func.count(IngestFile.id)).where(
                IngestFile.job_id == job.id, IngestFile.state == "unchanged"
            )
        )
        kept = f" ({unchanged} unchanged)" if unchanged else ""
        what = f"stored {count} files, {amount(size)}{kept}"
    elif job.status == IngestStatus.failed:
        why = job.errors[-1] if job.errors else "no reason recorded"
        if job.error_count > 1:
            why += f" ({job.error_count} errors: stagebox ingest show {job.id})"
        what = f"failed: {why}"
    return Ending(job.id, job.bag, job.status, what)


def endings(ctx: ServerContext, job_ids: Iterable[int]) -> list[Ending]:
    """What became of each job, in id order: ``stored 12 files, 3.4 MiB``,
    ``failed: <why>`` (the last error, and how many there were), ``cancelled``,
    or its status while it has not ended."""
    with ctx.catalog.session() as s:
        found = s.scalars(
            select(IngestJob).where(IngestJob.id.in_(list(job_ids))).order_by(IngestJob.id)
        )
        return [_ending(s, job) for job in found]


def job_view(job: IngestJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "bag": job.bag,
        "name": job.name,
        "etag": job.etag,
        "size": job.size,
        "stage": job.stage,
        "status": job.status,
        "attempts": job.attempts,
        "bytes_read": job.bytes_read,
        "bytes_staged": job.bytes_staged,
        "errors": job.errors,
        "error_count": job.error_count,
        "warnings": job.warnings,
        "created_at": job.created_at.isoformat() + "Z",
        "finished_at": job.finished_at.isoformat() + "Z" if job.finished_at else None,
    }


def list_jobs(ctx: ServerContext, status: str | None = None) -> list[dict[str, Any]]:
    with ctx.catalog.session() as s:
        query = select(IngestJob).order_by(IngestJob.id)
        if status:
            query = query.where(IngestJob.status == status)
        return [job_view(job) for job in s.scalars(query)]


def show_job(ctx: ServerContext, job_id: int) -> dict[str, Any]:
    with ctx.catalog.session() as s:
        job = s.get(IngestJob, job_id)
        if job is None:
            raise NotFound(f"no ingest job {job_id}")
        view = job_view(job)
        rows = s.execute(
            select(
                IngestFile.path,
                IngestFile.uuid,
                IngestFile.size,
                IngestFile.sha256,
                IngestFile.state,
                IngestFile.stored_key,
            )
            .where(IngestFile.job_id == job_id)
            .order_by(IngestFile.path)
        )
        view["files"] = [
            {
                "path": r.path,
                "uuid": r.uuid,
                "size": r.size,
                "sha256": r.sha256,
                "state": r.state,
                "stored_key": r.stored_key,
            }
            for r in rows
        ]
        return view
