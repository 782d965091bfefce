"""The stages of one bag: stage, validate, verify, store, record, cleanup.

Each stage is idempotent and checkpointed in the catalog. A stage's progress
is saved in batches (every :data:`CHECKPOINT_FILES` files or
:data:`CHECKPOINT_SECONDS`), together with a renewal of the worker's lease, and
the job moves to the next stage only once a stage has finished. An attempt
killed anywhere resumes at its stage and skips what was checkpointed:

- ``stage`` re-streams the tar to reach the files not yet staged, after
  deleting whatever a killed attempt wrote past its last checkpoint;
- ``verify`` and ``store`` go on from the first file not yet marked.

A tar gone from the receiving box when an attempt comes to read it ends the
job ``failed`` at once: no retry could find it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from stagebox.checksums import BUFFER_SIZE, MultiHasher
from stagebox.errors import NotFound, StageboxError, StorageError
from stagebox.ingest import jobs
from stagebox.ingest.bagit import ALGORITHMS, BagEntry, Problem, validate
from stagebox.ingest.bagread import manifest_algorithms
from stagebox.ingest.digests import BagHasher, HashLane, ManifestHasher
from stagebox.ingest.profiles import from_job
from stagebox.ingest.tarstream import Member, TarBag
from stagebox.server.db.models import IngestFile, IngestJob, IngestStage, IngestStatus, utcnow
from stagebox.server.services.context import ServerContext
from stagebox.storage import StorageBackend

log = logging.getLogger(__name__)

CHECKPOINT_FILES = 500
CHECKPOINT_SECONDS = 1.0
ERROR_CAP = 100
WRITEBACK_FROM = 1 << 20
KEY_TRIES = 100  # versions of one file passed over, found taken, before the store gives up
UUID_NAME = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# What a job is doing, told as it happens: (job id, the bag's key, what).
Progress = Callable[[int, str, str], None]
REMOVED = "removed from the receiving box"


class InvalidBag(StageboxError):
    """The bag broke BagIt or its profile; retrying cannot help."""


class Stopped(StageboxError):
    """The worker was asked to stop; the job goes back to the queue as it stands."""


class BagRemoved(NotFound):
    """The bag's tar is no longer in the receiving box; retrying cannot help."""


class StagedCopyBad(StorageError):
    """A staged or stored copy does not hold what the tar held."""


class _CutShort(Exception):
    """The tar ended inside this entry (the reader has recorded the problem)."""


class _CountingReader:
    """Counts the bytes read from the receiving box (all attempts add up)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.count += len(data)
        return data

    def close(self) -> None:
        self._raw.close()


@dataclass
class Attempt:
    """One worker's attempt at one job."""

    ctx: ServerContext
    job: IngestJob
    owner: str
    progress: Progress | None = None
    stop: threading.Event | None = None
    _last: float = field(default_factory=time.monotonic)

    @property
    def prefix(self) -> str:
        """The job's staging prefix; the trailing slash keeps job 1 out of job 10's."""
        return f"{self.job.id}/"

    @property
    def receiving(self) -> StorageBackend:
        return self.ctx.backend(self.job.receiving_box_id)

    @property
    def staging(self) -> StorageBackend:
        return self.ctx.backend(self.job.staging_box_id)

    @property
    def permanent(self) -> StorageBackend:
        return self.ctx.backend(self.job.permanent_box_id)

    def checkpoint(self, session: Session, **values: Any) -> None:
        """Save ``values`` and renew the lease; after a stop request, end the attempt here."""
        jobs.renew(session, self.ctx, self.job.id, self.owner, **values)
        self._last = time.monotonic()
        if self.stop is not None and self.stop.is_set():
            raise Stopped(f"job {self.job.id}: stopped at a checkpoint")

    def say(self, what: str) -> None:
        if self.progress:
            self.progress(self.job.id, self.job.bag, what)

    def due(self, pending: int) -> bool:
        return pending >= CHECKPOINT_FILES or time.monotonic() - self._last >= CHECKPOINT_SECONDS

    def advance(self, stage: IngestStage, **values: Any) -> None:
        with self.ctx.catalog.session() as s:
            self.checkpoint(s, stage=stage, **values)
        self.job.stage = stage
        self.say(f"stage {stage}")


def _files(session: Session, job_id: int, *columns: Any, where: Any = None) -> list[Any]:
    query = select(IngestFile.id, *columns).where(IngestFile.job_id == job_id)
    if where is not None:
        query = query.where(where)
    return list(session.execute(query.order_by(IngestFile.id)))


def _previous_files(attempt: Attempt) -> dict[str, tuple[str, str, str | None]]:
    """Path -> (uuid, sha256, stored key) from the last stored version of this bag."""
    job = attempt.job
    with attempt.ctx.catalog.session() as s:
        last = s.scalar(
            select(IngestJob.id)
            .where(
                IngestJob.name == job.name,
                IngestJob.permanent_box_id == job.permanent_box_id,
                IngestJob.status == IngestStatus.succeeded,
                IngestJob.id != job.id,
            )
            .order_by(IngestJob.id.desc())
            .limit(1)
        )
        if last is None:
            return {}
        rows = s.execute(
            select(
                IngestFile.path, IngestFile.uuid, IngestFile.sha256, IngestFile.stored_key
            ).where(IngestFile.job_id == last)
        )
        return {r.path: (r.uuid, r.sha256, r.stored_key) for r in rows}


def version_key(file_uuid: str, version: int) -> str:
    """The permanent key of a file's ``version``: ``<uuid>`` first, then ``<uuid>.v<N>``.

    The uuid is the file's identity across the versions of its bag; each version
    of its bytes gets a key of its own, so no stored key is ever written again.
    A flat suffix, not ``<uuid>/v<N>``: a local box already holds version 1 as
    the file ``<uuid>``, which could not also be a directory.
    """
    return file_uuid if version == 1 else f"{file_uuid}.v{version}"


def _version_of(file_uuid: str, key: str) -> int:
    """Which version of ``file_uuid`` ``key`` holds (0 for a key of another form)."""
    if key == file_uuid:
        return 1
    head, dot_v, number = key.rpartition(".v")
    return int(number) if dot_v and head == file_uuid and number.isdigit() else 0


def _recorded_keys(attempt: Attempt) -> dict[str, set[str]]:
    """uuid -> every permanent key a row of this bag records, by any job that got so far."""
    job = attempt.job
    with attempt.ctx.catalog.session() as s:
        rows = s.execute(
            select(IngestFile.uuid, IngestFile.stored_key)
            .join(IngestJob, IngestJob.id == IngestFile.job_id)
            .where(
                IngestJob.name == job.name,
                IngestFile.stored_box_id == job.permanent_box_id,
                IngestFile.stored_key.is_not(None),
            )
        )
        recorded: dict[str, set[str]] = {}
        for r in rows:
            recorded.setdefault(r.uuid, set()).add(r.stored_key)
        return recorded


# -- stage ---------------------------------------------------------------------


def _write_entry(
    staging: StorageBackend,
    keys: list[str],
    member: Member,
    stream: BinaryIO,
    bag: str,
    lane: HashLane,
) -> dict[str, str]:
    """Write one tar entry to every key in ``keys`` while hashing it once."""
    hasher = BagHasher(lane)
    metadata = {"bag": bag, "path": member.path}
    writers = [staging.open_write(k, 0, size_hint=member.size, metadata=metadata) for k in keys]
    try:
        while chunk := stream.read(BUFFER_SIZE):
            hasher.update(chunk)
            for writer in writers:
                writer.write(chunk)
        if hasher.length != member.size:
            raise _CutShort(member.path)
        digests = hasher.hexdigests()
        for writer in writers:
            writer.metadata.update(md5=digests["md5"], sha256=digests["sha256"])
    except BaseException:
        for writer, key in zip(writers, keys, strict=True):
            writer.close()
            staging.delete(key)
        raise
    for writer in writers:
        writer.close()
    # Flushing now, while the rest of the tar streams, leaves little for the
    # sync before the store stage records anything (small files are left to
    # that sync: the call would cost more than it saves).
    if member.size >= WRITEBACK_FROM:
        staging.start_writeback(keys[0])
    return digests


def run_stage(attempt: Attempt) -> None:
    """Stream the tar once; stage every regular entry under ``<job>/<uuid>``."""
    job, staging, prefix = attempt.job, attempt.staging, attempt.prefix
    with attempt.ctx.catalog.session() as s:
        done = {
            r.path: (r.uuid, r.is_tag)
            for r in _files(s, job.id, IngestFile.path, IngestFile.uuid, IngestFile.is_tag)
        }
    keep = {prefix + u for u, _ in done.values()}
    keep |= {prefix + path for path, (_, tag) in done.items() if tag}
    for key in jobs.staged_keys(staging, job.id):
        if key not in keep:  # written by a killed attempt after its last checkpoint
            staging.delete(key)
    previous = _previous_files(attempt)
    rows: list[dict[str, Any]] = []
    counts = {"read": 0, "staged": 0}
    try:
        reader = _CountingReader(attempt.receiving.open_read(job.bag))
    except NotFound:
        raise BagRemoved(REMOVED) from None

    def save(session: Session, **values: Any) -> None:
        if rows:
            session.execute(insert(IngestFile), rows)
        attempt.checkpoint(
            session,
            bytes_read=IngestJob.bytes_read + (reader.count - counts["read"]),
            bytes_staged=IngestJob.bytes_staged + counts["staged"],
            **values,
        )
        counts["read"] = reader.count
        counts["staged"] = 0
        rows.clear()

    tar = TarBag(reader)
    extra: list[Problem] = []
    try:
        with HashLane() as lane:
            for member, stream in tar:
                if member.path in done:
                    continue
                is_tag = not member.path.startswith("data/")
                if is_tag and UUID_NAME.fullmatch(member.path):
                    extra.append(Problem(member.path, "a top-level tag file named like a uuid"))
                    continue
                file_uuid = previous[member.path][0] if member.path in previous else None
                file_uuid = file_uuid or str(uuid.uuid4())
                keys = [prefix + file_uuid] + ([prefix + member.path] if is_tag else [])
                try:
                    digests = _write_entry(staging, keys, member, stream, job.name, lane)
                except _CutShort:
                    break  # a truncated tar: nothing partial is kept
                counts["staged"] += member.size * len(keys)
                rows.append(
                    {
                        "job_id": job.id,
                        "path": member.path,
                        "uuid": file_uuid,
                        "size": member.size,
                        "is_tag": is_tag,
                        "state": "staged",
                        "staged_at": utcnow(),
                        **digests,
                    }
                )
                if attempt.due(len(rows)):
                    with attempt.ctx.catalog.session() as s:
                        save(s)
                    attempt.say(f"staged {member.path}")
    finally:
        reader.close()
    # Warnings ride with the problems, marked, so that validate reports them too.
    problems = [[p.path, p.rule] for p in (*tar.problems, *extra)]
    problems += [[p.path, p.rule, "warning"] for p in tar.warnings]
    with attempt.ctx.catalog.session() as s:
        save(
            s,
            problems=problems,
            payload_dir="data" in tar.dirs,
            serialization=tar.serialization,
            stage=IngestStage.validate,
        )
    attempt.job.stage = IngestStage.validate


# -- validate ------------------------------------------------------------------


def run_validate(attempt: Attempt) -> None:
    """Judge the bag from what ``stage`` recorded; only tag files are read again."""
    job = attempt.job
    with attempt.ctx.catalog.session() as s:
        fresh = s.get(IngestJob, job.id)
        assert fresh is not None
        problems = [Problem(row[0], row[1]) for row in fresh.problems if len(row) == 2]
        tar_warnings = [Problem(row[0], row[1]) for row in fresh.problems if len(row) == 3]
        payload_dir = fresh.payload_dir
        serialization = fresh.serialization or "tar"  # staged before it was recorded
        tags = set(
            s.scalars(select(IngestFile.path).where(IngestFile.job_id == job.id, IngestFile.is_tag))
        )
        # Only the digests some manifest uses: for a bag of many small files the
        # other three would be most of what validation holds in memory.
        named = set(manifest_algorithms(tags))
        used = [a for a in ALGORITHMS if a in named]
        columns = [getattr(IngestFile, a) for a in used]
        rows = _files(s, job.id, IngestFile.path, IngestFile.size, IngestFile.uuid, *columns)
        entries = {
            r.path: BagEntry(r.path, r.size, dict(zip(used, r[4:], strict=True))) for r in rows
        }
        uuids = {r.path: r.uuid for r in rows}
    staging, prefix = attempt.staging, attempt.prefix
    extra = sorted(named - set(ALGORITHMS))
    if extra:
        # A manifest of an algorithm staging did not compute (sha224, sha384...):
        # rare, so the staged files are read once more for those digests only.
        for path, entry in list(entries.items()):
            hasher = ManifestHasher(extra)
            with staging.open_read(prefix + uuids[path]) as f:
                while chunk := f.read(BUFFER_SIZE):
                    hasher.update(chunk)
            entries[path] = BagEntry(path, entry.size, {**entry.digests, **hasher.hexdigests()})

    def read_tag(path: str) -> bytes:
        with staging.open_read(prefix + path) as f:
            return f.read()

    profile = from_job(job.profile, f"job {job.id}") if job.profile else None
    report = validate(
        entries,
        read_tag,
        profile,
        structural=problems,
        serialization=serialization,
        payload_dir=payload_dir or None,
    )
    warnings = [str(w) for w in (*tar_warnings, *report.warnings)][:ERROR_CAP]
    if report.valid:
        attempt.advance(IngestStage.verify, warnings=warnings)
        return
    lines = report.error_lines(ERROR_CAP)
    log.info("job %s: bag %s is invalid (%d errors)", job.id, job.bag, len(report.errors))
    jobs.remove_staged(attempt.staging, attempt.job.id)
    with attempt.ctx.catalog.session() as s:
        s.execute(delete(IngestFile).where(IngestFile.job_id == job.id))
        attempt.checkpoint(
            s,
            status=IngestStatus.failed,
            errors=lines,
            error_count=len(report.errors),
            warnings=warnings,
            finished_at=utcnow(),
            lease_owner=None,
        )
    raise InvalidBag(f"bag {job.bag} is invalid: {len(report.errors)} errors")


# -- verify, store, record, cleanup --------------------------------------------


def _marked(
    attempt: Attempt,
    column: Any,
    each: Callable[[Any], dict[str, Any]],
    before_save: Callable[[], None] | None = None,
    workers: int = 2,
) -> None:
    """Run ``each`` over the job's files where ``column`` is unset, saving in batches.

    ``workers`` files are worked on at once (reading back and hashing, or
    server-side copies, wait on I/O or release the GIL).
    """
    job = attempt.job
    with attempt.ctx.catalog.session() as s:
        todo = _files(
            s,
            job.id,
            IngestFile.path,
            IngestFile.uuid,
            IngestFile.size,
            IngestFile.sha256,
            where=column.is_(None),
        )
    done: list[dict[str, Any]] = []

    def save() -> None:
        if before_save and done:
            before_save()
        with attempt.ctx.catalog.session() as s:
            if done:
                # One statement for the batch (executemany), not one per file.
                table = IngestFile.__table__
                assert isinstance(table, Table)
                names = [name for name in done[0] if name != "row_id"]
                s.connection().execute(
                    update(table)
                    .where(table.c.id == bindparam("row_id"))
                    .values({name: bindparam(name) for name in names}),
                    done,
                )
            attempt.checkpoint(s)
        done.clear()

    window = 16 * workers  # files in flight: bounded, whatever the bag holds
    with ThreadPoolExecutor(workers, thread_name_prefix="stagebox-ingest") as pool:
        for start in range(0, len(todo), window):
            rows = todo[start : start + window]
            for row, values in zip(rows, pool.map(each, rows), strict=True):
                done.append({"row_id": row.id, **values})
            if attempt.due(len(done)):
                save()
    save()


def run_verify(attempt: Attempt) -> None:
    """Read every staged object back: its size and sha256 must be what stage saw."""
    staging, prefix = attempt.staging, attempt.prefix

    def check(row: Any) -> dict[str, Any]:
        key = prefix + row.uuid
        hasher = MultiHasher(("sha256",))
        with staging.open_read(key) as f:
            hasher.update_from(f)
        if hasher.length != row.size:
            raise StagedCopyBad(
                f"{row.path}: staged {key} holds {hasher.length} bytes, the tar had {row.size}"
            )
        if hasher.hexdigest("sha256") != row.sha256:
            raise StagedCopyBad(f"{row.path}: staged {key} no longer hashes to its sha256")
        return {"verified_at": utcnow(), "state": "verified"}

    try:
        _marked(attempt, IngestFile.verified_at, check)
    except StagedCopyBad:
        _restage(attempt)
        raise
    attempt.advance(IngestStage.store)


def _restage(attempt: Attempt) -> None:
    """A staged object went bad: forget what was staged so the next attempt stages again."""
    jobs.remove_staged(attempt.staging, attempt.job.id)
    with attempt.ctx.catalog.session() as s:
        s.execute(delete(IngestFile).where(IngestFile.job_id == attempt.job.id))
        attempt.checkpoint(s, stage=IngestStage.stage)


def _holds(backend: StorageBackend, key: str, size: int, sha256: str) -> bool | None:
    """Whether ``key`` holds these bytes: None when there is no such key."""
    held = backend.size(key)
    if held is None:
        return None
    if held != size:
        return False
    hasher = MultiHasher(("sha256",))
    with backend.open_read(key) as f:
        hasher.update_from(f)
    return hasher.hexdigest("sha256") == sha256


def run_store(attempt: Attempt) -> None:
    """Promote each new or changed file to the permanent box under a key of its own.

    Unchanged files stay as they are. A changed file keeps its uuid and is stored
    as its next version (:func:`version_key`): the earlier version's key, bytes
    and row stay as recorded. A key some row records is never written again, nor
    is a key the permanent box already holds: one holding this very file (an
    attempt killed after promoting it) is recorded as it is; any other is passed
    over for the next version.
    """
    staging, permanent, prefix = attempt.staging, attempt.permanent, attempt.prefix
    previous = _previous_files(attempt)
    recorded = _recorded_keys(attempt)
    box_id = attempt.job.permanent_box_id

    def stored(key: str, state: str = "stored") -> dict[str, Any]:
        return {"stored_at": utcnow(), "state": state, "stored_key": key, "stored_box_id": box_id}

    def store(row: Any) -> dict[str, Any]:
        _uuid, sha256, kept_as = previous.get(row.path, ("", "", None))
        if kept_as and sha256 == row.sha256 and permanent.size(kept_as) == row.size:
            return stored(kept_as, "unchanged")
        taken = recorded.get(row.uuid, set())
        version = 1 + max((_version_of(row.uuid, key) for key in taken), default=0)
        for _ in range(KEY_TRIES):
            dest_key = version_key(row.uuid, version)
            version += 1
            if dest_key in taken:
                continue
            found = _holds(permanent, dest_key, row.size, row.sha256)
            if found:
                return stored(dest_key)  # promoted by an attempt killed before recording it
            if found is None:
                break
            log.warning("%s: %s already holds other bytes; not written", row.path, dest_key)
        else:
            raise StorageError(f"{row.path}: no free key for {row.uuid} in {permanent.name}")
        result = staging.promote(prefix + row.uuid, permanent, dest_key, ("sha256",), sync=False)
        if not result.renamed and result.digests.get("sha256") != row.sha256:
            permanent.delete(dest_key)
            raise StagedCopyBad(f"{row.path}: the copy into {permanent.name} did not match")
        return stored(dest_key)

    _marked(attempt, IngestFile.stored_at, store, before_save=permanent.flush)
    attempt.advance(IngestStage.record)


def run_record(attempt: Attempt) -> None:
    """The job's outcome: every file stored, with its digests, uuid and storage record."""
    with attempt.ctx.catalog.session() as s:
        missing = s.scalar(
            select(IngestFile.path)
            .where(IngestFile.job_id == attempt.job.id, IngestFile.stored_at.is_(None))
            .limit(1)
        )
    if missing is not None:
        raise StorageError(f"{missing}: not stored, yet the store stage ended")
    attempt.advance(IngestStage.cleanup)


def run_cleanup(attempt: Attempt) -> None:
    jobs.remove_staged(attempt.staging, attempt.job.id)
    job = attempt.job
    if job.delete_received:
        attempt.receiving.delete(job.bag)
    with attempt.ctx.catalog.session() as s:
        s.execute(
            update(IngestFile)
            .where(IngestFile.job_id == job.id, IngestFile.state == "verified")
            .values(state="stored")
        )
        attempt.checkpoint(
            s,
            stage=IngestStage.done,
            status=IngestStatus.succeeded,
            finished_at=utcnow(),
            lease_owner=None,
        )
    attempt.job.stage = IngestStage.done


STAGES: dict[str, Callable[[Attempt], None]] = {
    IngestStage.stage: run_stage,
    IngestStage.validate: run_validate,
    IngestStage.verify: run_verify,
    IngestStage.store: run_store,
    IngestStage.record: run_record,
    IngestStage.cleanup: run_cleanup,
}


def _stages(attempt: Attempt) -> Iterator[Callable[[Attempt], None]]:
    while attempt.job.stage != IngestStage.done:
        yield STAGES[attempt.job.stage]


def _attempt_failed(
    ctx: ServerContext, job_id: int, owner: str, exc: BaseException
) -> tuple[str, str]:
    """Record a failed attempt: retry later with backoff, or fail for an operator.

    Returns the outcome and what to tell of it.
    """
    with ctx.catalog.session() as s:
        job = s.get(IngestJob, job_id)
        if job is None or job.lease_owner != owner or job.status != IngestStatus.running:
            return "lost", ""
        message = f"attempt {job.attempts} at {job.stage}: {exc}"
        job.errors = [*job.errors, message][-ERROR_CAP:]
        job.error_count += 1
        job.lease_owner = None
        job.lease_until = None
        if job.attempts > ctx.settings.ingest_retries:
            job.status = IngestStatus.failed
            job.finished_at = utcnow()
            return "failed", ""
        delay = ctx.settings.ingest_backoff * 2 ** (job.attempts - 1)
        job.status = IngestStatus.pending
        job.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
        return "retry", f"{message}; retrying in {delay:g} s"


def _removed(attempt: Attempt) -> str:
    """The tar left the receiving box: the job fails now, keeping nothing staged."""
    job = attempt.job
    with attempt.ctx.catalog.session() as s:
        s.execute(delete(IngestFile).where(IngestFile.job_id == job.id))
        # Not a checkpoint: a stop request must not put the job back in the queue.
        jobs.renew(
            s,
            attempt.ctx,
            job.id,
            attempt.owner,
            status=IngestStatus.failed,
            errors=[*job.errors, REMOVED][-ERROR_CAP:],
            error_count=IngestJob.error_count + 1,
            finished_at=utcnow(),
            lease_owner=None,
        )
    jobs.remove_staged(attempt.staging, job.id)
    return "failed"


def _lost(attempt: Attempt) -> tuple[str, str]:
    """The job was taken away mid-attempt: what by, after cleaning up if it was ours to."""
    with attempt.ctx.catalog.session() as s:
        fresh = s.get(IngestJob, attempt.job.id)
        status = fresh.status if fresh is not None else None
        superseded = fresh.superseded_by if fresh is not None else None
    # Nobody else removes what this attempt staged after the cancel or the
    # newer version's submit had removed what was there.
    if status == IngestStatus.cancelled:
        jobs.remove_staged(attempt.staging, attempt.job.id)
        return "cancelled", "cancelled: stopped without storing anything"
    if superseded is not None:
        jobs.remove_staged(attempt.staging, attempt.job.id)
        return "lost", f"superseded by job {superseded}"
    return "lost", "taken over by another worker"


def run_job(
    ctx: ServerContext,
    job_id: int,
    owner: str,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> str:
    """One attempt at ``job_id``: its remaining stages, in order.

    Returns what became of it: ``succeeded``, ``invalid``, ``retry``,
    ``failed``, ``busy`` (someone else holds it), ``lost`` (superseded or
    requeued mid-attempt), ``cancelled`` (an operator cancelled it mid-attempt)
    or ``stopped`` (``stop`` was set; the job is pending again from its last
    checkpoint, and the attempt does not count). ``progress`` hears each step
    and, at the end, one line saying what became of the job and why.
    """
    job = jobs.claim(ctx, job_id, owner)
    if job is None:
        return "busy"
    attempt = Attempt(ctx, job, owner, progress, stop)
    attempt.say(f"attempt {job.attempts} from stage {job.stage}")
    outcome, told = "succeeded", ""
    try:
        for stage in _stages(attempt):
            stage(attempt)
    except InvalidBag:
        outcome = "invalid"
    except BagRemoved:
        try:
            outcome = _removed(attempt)
        except jobs.LeaseLost:
            outcome, told = _lost(attempt)
    except Stopped:
        jobs.release(ctx, job_id, owner)
        outcome, told = "stopped", f"stopped at stage {attempt.job.stage}; pending again"
    except jobs.LeaseLost:
        outcome, told = _lost(attempt)
    except Exception as exc:
        log.warning("job %s: attempt failed at %s: %s", job_id, attempt.job.stage, exc)
        outcome, told = _attempt_failed(ctx, job_id, owner, exc)
        if outcome == "lost":
            outcome, told = _lost(attempt)
    if not told:
        (end,) = jobs.endings(ctx, [job_id])
        told = end.what
    attempt.say(told)
    return outcome
