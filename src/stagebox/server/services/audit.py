"""Fixity audits: re-read stored objects and compare them with the catalog.

Each check reads one stored object (a datafile version's stored replica, or a
bag's stored file), compares its size and sha256 with what the catalog
recorded when it was stored, records an :class:`Audit` row and marks the copy's
``fixity`` ``ok``, ``corrupt`` or ``missing``. Nothing is repaired: a corrupt
or missing copy stays so in the API and listings until someone acts (a client
that still has the bytes sends them again as a new version).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from stagebox.errors import NotFound, StageboxError
from stagebox.ratelimit import RateLimiter
from stagebox.server.db.models import (
    Audit,
    AuditResult,
    Datafile,
    IngestFile,
    Replica,
    ReplicaState,
    StorageBox,
    utcnow,
)
from stagebox.server.services.context import ServerContext

log = logging.getLogger(__name__)
CHUNK = 1 << 20
PAGE = 500
UNCHECKED = "unchecked"


@dataclass(frozen=True)
class Due:
    """One stored object to check: where it is and what the catalog says of it."""

    kind: str  # "datafile" or "ingest"
    row_id: int  # the replica's or the ingest file's id
    box_id: int
    key: str
    size: int
    sha256: str | None


@dataclass
class AuditSummary:
    # "unchecked": the box could not be asked (a passing fault): nothing recorded.
    counts: dict[str, int] = field(
        default_factory=lambda: {**{r.value: 0 for r in AuditResult}, UNCHECKED: 0}
    )
    bytes_read: int = 0
    findings: list[tuple[Due, str, str]] = field(default_factory=list)

    def add(self, due: Due, result: str, detail: str, nread: int) -> None:
        self.counts[result] += 1
        self.bytes_read += nread
        if result != AuditResult.ok and len(self.findings) < 1000:
            self.findings.append((due, result, detail))


def _box_id(ctx: ServerContext, name: str) -> int:
    with ctx.catalog.session() as session:
        box = session.scalar(select(StorageBox).where(StorageBox.name == name))
        if box is None:
            raise NotFound(f"no box named {name!r}")
        return box.id


def due_objects(
    ctx: ServerContext, *, box_id: int | None, before: dt.datetime | None
) -> Iterator[Due]:
    """Stored objects unchecked since ``before`` (last audited, or stored, before it;
    every one when None), a page at a time so memory stays flat."""
    for kind in ("datafile", "ingest"):
        after = 0
        while True:
            with ctx.catalog.session() as session:
                page = _page(session, kind, box_id, before, after)
            if not page:
                break
            yield from page
            after = page[-1].row_id


def _page(
    session: Session, kind: str, box_id: int | None, before: dt.datetime | None, after: int
) -> list[Due]:
    query: Select[Any, Any, Any, Any, Any]
    audited: Any
    box: Any
    if kind == "datafile":
        query = (
            select(Replica.id, Replica.box_id, Replica.key, Datafile.size, Datafile.sha256)
            .join(Replica.datafile)
            .where(Replica.state == ReplicaState.stored, Replica.id > after)
            .order_by(Replica.id)
        )
        audited, box = func.coalesce(Replica.audited_at, Replica.stored_at), Replica.box_id
    else:
        query = (
            select(
                IngestFile.id,
                IngestFile.stored_box_id,
                IngestFile.stored_key,
                IngestFile.size,
                IngestFile.sha256,
            )
            .where(IngestFile.stored_key.is_not(None), IngestFile.id > after)
            .order_by(IngestFile.id)
        )
        audited = func.coalesce(IngestFile.audited_at, IngestFile.stored_at)
        box = IngestFile.stored_box_id
    if box_id is not None:
        query = query.where(box == box_id)
    if before is not None:
        query = query.where(or_(audited.is_(None), audited < before))  # a copy is due once
        # it has gone unchecked (since it was stored, or last audited) for the interval
    rows = session.execute(query.limit(PAGE)).all()
    return [Due(kind, r[0], r[1], r[2], r[3], r[4]) for r in rows]


def check(
    ctx: ServerContext, due: Due, limiter: RateLimiter, stop: threading.Event
) -> tuple[str, str, int]:
    """(result, detail, bytes read) of one stored object, read at the limiter's rate."""
    backend = ctx.backend(due.box_id)
    try:
        size = backend.size(due.key)
    except StageboxError as exc:
        return UNCHECKED, f"cannot be looked at: {exc}", 0
    if size is None:
        return AuditResult.missing, f"no object {due.key} in the box", 0
    h = hashlib.sha256()
    nread = 0
    try:
        with backend.open_read(due.key) as f:
            while chunk := f.read(CHUNK):
                limiter.consume(len(chunk))
                h.update(chunk)
                nread += len(chunk)
                if stop.is_set():
                    raise InterruptedError
    except StageboxError as exc:
        return UNCHECKED, f"cannot be read: {exc}", nread
    if nread != due.size:
        return AuditResult.corrupt, f"{nread} bytes, the catalog recorded {due.size}", nread
    digest = h.hexdigest()
    if due.sha256 is not None and digest != due.sha256:
        return AuditResult.corrupt, f"sha256 {digest}, the catalog recorded {due.sha256}", nread
    return AuditResult.ok, "", nread


def record(ctx: ServerContext, due: Due, result: str, detail: str) -> None:
    now = utcnow()
    with ctx.catalog.session() as session:
        row: Replica | IngestFile | None
        if due.kind == "datafile":
            row = session.get(Replica, due.row_id)
            if row is None or row.state != ReplicaState.stored or row.key != due.key:
                return  # moved on since it was listed
        else:
            row = session.get(IngestFile, due.row_id)
            if row is None or row.stored_key != due.key:
                return
        row.fixity = result
        row.audited_at = now
        session.add(
            Audit(
                replica_id=due.row_id if due.kind == "datafile" else None,
                ingest_file_id=due.row_id if due.kind == "ingest" else None,
                box_id=due.box_id,
                key=due.key,
                result=result,
                detail=detail or None,
                checked_at=now,
            )
        )
    if result != AuditResult.ok:
        log.warning("audit: %s %s in box %s: %s", due.key, result, due.box_id, detail)


def run_audit(
    ctx: ServerContext,
    *,
    box: str | None = None,
    older_than_days: float | None = None,
    max_mb_s: float = 0.0,
    stop: threading.Event | None = None,
    progress: Callable[[Due, str, str], None] | None = None,
) -> AuditSummary:
    """Audit every stored object (``older_than_days`` None) or those unchecked for that
    many days (since their last audit, or since they were stored)."""
    stop = stop or threading.Event()
    limiter = RateLimiter(max_mb_s * 1e6)
    before = utcnow() - dt.timedelta(days=older_than_days) if older_than_days is not None else None
    box_id = _box_id(ctx, box) if box else None
    summary = AuditSummary()
    for due in due_objects(ctx, box_id=box_id, before=before):
        if stop.is_set():
            break
        try:
            result, detail, nread = check(ctx, due, limiter, stop)
        except InterruptedError:
            break
        if result == UNCHECKED:
            log.warning("audit: %s in box %s not checked: %s", due.key, due.box_id, detail)
        else:
            record(ctx, due, result, detail)
        summary.add(due, result, detail, nread)
        if progress is not None:
            progress(due, result, detail)
    return summary


class Auditor:
    """The server's background audit: every ``audit_check_interval`` seconds, audits
    what is due (``audit_interval_days``) at ``audit_max_mb_s``; stops between chunks."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stagebox-audit", daemon=True)

    def start(self) -> None:
        if self._ctx.settings.audit_enabled:
            self._thread.start()

    def _loop(self) -> None:
        settings = self._ctx.settings
        while not self._stop.is_set():
            try:
                summary = run_audit(
                    self._ctx,
                    older_than_days=settings.audit_interval_days,
                    max_mb_s=settings.audit_max_mb_s,
                    stop=self._stop,
                )
                if sum(summary.counts.values()):
                    log.info("audit: %s", summary.counts)
            except Exception:
                log.exception("audit failed")
            self._stop.wait(settings.audit_check_interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
