"""Registering datafiles, looking them up, and completing their uploads."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from stagebox.errors import Conflict, InvalidInput, InvalidName, NotFound, StageboxError
from stagebox.names import clean_component, clean_directory
from stagebox.server.db.models import (
    Datafile,
    Dataset,
    Replica,
    ReplicaState,
    Uploader,
    utcnow,
)
from stagebox.server.schemas import (
    DatafilePage,
    DatafilePublic,
    DatafileRegister,
    RegisterAnswer,
)
from stagebox.server.services import registrations, verify
from stagebox.server.services.context import ServerContext
from stagebox.server.services.states import transition

S = ReplicaState
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def staging_key(uploader: Uploader, token: str) -> str:
    return f"http/{uploader.uuid}/{token}"


def sftp_key(uploader: Uploader, dataset_id: int, directory: str, filename: str) -> str:
    """``<uploader-uuid>/<dataset-id>/<directory>/<filename>`` inside the sftp box.

    The dataset's id, not its name: names repeat across experiments and would
    make two datasets share one staging folder.
    """
    return "/".join(p for p in (uploader.uuid, str(dataset_id), directory, filename) if p)


@dataclass(frozen=True)
class Target:
    """Where a registration sends the bytes: the http path or an approved sftp box."""

    method: str
    box_id: int
    sftp: dict[str, Any] | None = None

    def path(self, key: str) -> str | None:
        return f"{self.sftp['root']}/{key}" if self.sftp else None


def http_target(ctx: ServerContext) -> Target:
    return Target("http", ctx.staging_box_id)


def sftp_target(session: Session, uploader: Uploader) -> Target:
    """The uploader's approved sftp box; 403 saying why when there is none."""
    box = registrations.approved_box(session, uploader)
    attrs = box.attributes
    return Target(
        "sftp",
        box.id,
        {
            "host": attrs["sftp_host"],
            "port": attrs["sftp_port"],
            "user": attrs["sftp_user"],
            "root": attrs["sftp_root"],
        },
    )


def clean_item(item: DatafileRegister, index: int | None = None) -> DatafileRegister:
    """The item with every name checked and NFC-normalised; errors name the field."""
    where = "" if index is None else f"files[{index}]."
    try:
        return DatafileRegister(
            dataset=clean_component(item.dataset, "dataset"),
            experiment=clean_component(item.experiment, "experiment") if item.experiment else None,
            owner=clean_component(item.owner, "owner") if item.owner else None,
            directory=clean_directory(item.directory),
            filename=clean_component(item.filename, "filename"),
            size=item.size,
            mtime=item.mtime,
        )
    except InvalidName as exc:
        raise InvalidName(where + exc.field, exc.rule, exc.value) from None


def _dataset(
    session: Session, uploader: Uploader, name: str, experiment: str, owner: str
) -> Dataset:
    query = select(Dataset).where(
        Dataset.uploader_id == uploader.id,
        Dataset.experiment == experiment,
        Dataset.name == name,
    )
    found = session.scalar(query)
    if found is not None:
        return found
    try:
        with session.begin_nested():
            dataset = Dataset(
                uploader_id=uploader.id, experiment=experiment, name=name, owner=owner
            )
            session.add(dataset)
    except IntegrityError:  # another request created it first
        return session.scalars(query).one()
    return dataset


def location(
    uploader: Uploader, target: Target, dataset_id: int, directory: str, filename: str
) -> dict[str, object]:
    """Box, key, method and upload token of a replica sent the ``target`` way."""
    if target.method == "http":
        token = uuid.uuid4().hex
        return {
            "box_id": target.box_id,
            "key": staging_key(uploader, token),
            "method": "http",
            "upload_token": token,
        }
    return {
        "box_id": target.box_id,
        "key": sftp_key(uploader, dataset_id, directory, filename),
        "method": target.method,
        "upload_token": None,
    }


def replica_values(
    ctx: ServerContext,
    uploader: Uploader,
    awaits_complete: bool,
    now: dt.datetime,
    target: Target,
    dataset_id: int,
    item: DatafileRegister,
) -> dict[str, object]:
    """Columns of a fresh replica in the target's staging box."""
    return {
        **location(uploader, target, dataset_id, item.directory, item.filename),
        "state": S.registered.value,
        "awaits_complete": awaits_complete,
        "created_at": now,
        "updated_at": now,
        "expires_at": now + dt.timedelta(hours=ctx.settings.upload_expiry_hours),
    }


def stage_empty(ctx: ServerContext, session: Session, replica: Replica) -> None:
    """A zero-byte file is staged the moment it is registered."""
    ctx.backend(replica.box_id).open_write(replica.key, 0).close()
    transition(
        session,
        replica,
        S.staged,
        bytes_staged=0,
        staged_sha256=EMPTY_SHA256,
        staged_md5=EMPTY_MD5 if "md5" in ctx.settings.algorithms else None,
    )


def reset_replica(
    ctx: ServerContext, session: Session, replica: Replica, moved: dict[str, object] | None = None
) -> None:
    """Throw away staged bytes so the upload starts again from zero (perhaps elsewhere)."""
    verify.discard_staged(ctx, replica)
    values: dict[str, object] = {
        "bytes_staged": 0,
        "staged_sha256": None,
        "staged_md5": None,
        "staged_identity": None,
        "declared_sha256": None,
        "declared_md5": None,
        "attempts": replica.attempts + 1,
        **(moved or {}),
    }
    if replica.state == S.registered:
        for name, value in values.items():
            setattr(replica, name, value)
        session.flush()
    else:
        transition(session, replica, S.uploading, **values)


def register_one(
    ctx: ServerContext,
    session: Session,
    uploader: Uploader,
    item: DatafileRegister,
    *,
    awaits_complete: bool = True,
    index: int | None = None,
    dataset: Dataset | None = None,
    existing: Datafile | None = None,
    target: Target | None = None,
) -> tuple[Datafile, Replica, bool]:
    """Register (or find) one datafile; returns it, its replica and whether to skip."""
    target = target or http_target(ctx)
    if dataset is None:
        dataset = _dataset(session, uploader, item.dataset, item.experiment or "", item.owner or "")
    if existing is None:
        existing = session.scalar(
            select(Datafile).where(
                Datafile.dataset_id == dataset.id,
                Datafile.directory == item.directory,
                Datafile.filename == item.filename,
            )
        )
    if existing is None:
        datafile = Datafile(
            dataset_id=dataset.id,
            directory=item.directory,
            filename=item.filename,
            size=item.size,
            mtime=item.mtime,
        )
        replica = Replica(
            **replica_values(ctx, uploader, awaits_complete, utcnow(), target, dataset.id, item)
        )
        datafile.replicas.append(replica)
        session.add(datafile)
        session.flush()
        if item.size == 0:
            stage_empty(ctx, session, replica)
        return datafile, replica, False

    datafile = existing
    replica = datafile.replicas[-1]
    path = "/".join(p for p in (item.dataset, item.directory, item.filename) if p)
    if replica.state in (S.verified, S.stored):
        if datafile.size != item.size:
            where = "" if index is None else f"files[{index}]: "
            raise Conflict(
                f"{where}{path} is already {replica.state} with size {datafile.size}; "
                f"it cannot be registered again with size {item.size}"
            )
        return datafile, replica, True
    moved = None
    if replica.method != target.method or replica.box_id != target.box_id:
        # Sent another way this time (sftp was approved, or fell back to http):
        # the partial bytes of the old way are of no use to the new one.
        moved = location(uploader, target, dataset.id, item.directory, item.filename)
    if moved or datafile.size != item.size or replica.state == S.failed:
        # The file changed before it was verified, or a retry after a failure:
        # start over from byte zero; nothing verified is touched.
        datafile.size = item.size
        reset_replica(ctx, session, replica, moved)
        if item.size == 0:
            stage_empty(ctx, session, replica)
    datafile.mtime = item.mtime
    replica.awaits_complete = replica.awaits_complete and awaits_complete
    return datafile, replica, False


def register_batch(
    ctx: ServerContext,
    session: Session,
    uploader: Uploader,
    items: list[DatafileRegister],
    base_url: str,
    method: str = "http",
) -> list[RegisterAnswer]:
    target = sftp_target(session, uploader) if method == "sftp" else http_target(ctx)
    cleaned = [clean_item(item, i) for i, item in enumerate(items)]
    datasets: dict[tuple[str, str], Dataset] = {}
    known: dict[tuple[int, str, str], Datafile] = {}
    for item in cleaned:
        scope = (item.experiment or "", item.dataset)
        if scope not in datasets:
            datasets[scope] = _dataset(session, uploader, item.dataset, scope[0], item.owner or "")
    # One query per dataset instead of one per file: per-file overhead is what
    # kills trees of small files.
    for scope, dataset in datasets.items():
        # Exact (directory, filename) pairs: folders that reuse file names must
        # not pull in every earlier folder's rows.
        pairs = {
            (i.directory, i.filename) for i in cleaned if (i.experiment or "", i.dataset) == scope
        }
        rows = session.scalars(
            select(Datafile)
            .options(joinedload(Datafile.replicas))
            .where(
                Datafile.dataset_id == dataset.id,
                tuple_(Datafile.directory, Datafile.filename).in_(pairs),
            )
        ).unique()
        for df in rows:
            known[(dataset.id, df.directory, df.filename)] = df

    # New files are inserted together, two statements for the whole batch;
    # known ones go one by one, since each may need its staged bytes reset.
    answers: list[RegisterAnswer | None] = []
    fresh: dict[tuple[int, str, str], list[int]] = {}
    fresh_items: list[tuple[int, DatafileRegister]] = []
    for index, item in enumerate(cleaned):
        dataset = datasets[(item.experiment or "", item.dataset)]
        where = (dataset.id, item.directory, item.filename)
        datafile = known.get(where)
        if datafile is not None:
            _, replica, skip = register_one(
                ctx,
                session,
                uploader,
                item,
                index=index,
                dataset=dataset,
                existing=datafile,
                target=target,
            )
            answers.append(
                _answer(
                    datafile.id,
                    replica.state,
                    replica.key,
                    replica.upload_token,
                    replica.bytes_staged or 0,
                    skip,
                    base_url,
                    target,
                    datafile.sha256,
                )
            )
            continue
        if where not in fresh:  # NFC twins in one batch share one datafile
            fresh[where] = []
            fresh_items.append((dataset.id, item))
        fresh[where].append(index)
        answers.append(None)
    if fresh_items:
        created = _insert_new(ctx, session, uploader, fresh_items, base_url, target)
        for indexes, answer in zip(fresh.values(), created, strict=True):
            for index in indexes:
                answers[index] = answer
    return [a for a in answers if a is not None]


def _insert_new(
    ctx: ServerContext,
    session: Session,
    uploader: Uploader,
    items: list[tuple[int, DatafileRegister]],
    base_url: str,
    target: Target,
) -> list[RegisterAnswer]:
    now = utcnow()
    ids = session.scalars(
        insert(Datafile).returning(Datafile.id, sort_by_parameter_order=True),
        [
            {
                "dataset_id": dataset_id,
                "directory": item.directory,
                "filename": item.filename,
                "size": item.size,
                "mtime": item.mtime,
                "created_at": now,
            }
            for dataset_id, item in items
        ],
    ).all()
    rows = [
        {
            "datafile_id": datafile_id,
            **replica_values(ctx, uploader, True, now, target, dataset_id, item),
        }
        for datafile_id, (dataset_id, item) in zip(ids, items, strict=True)
    ]
    # Core, not the ORM's bulk path: no instances are needed for new rows.
    table = Replica.__table__
    assert isinstance(table, Table)
    session.connection().execute(insert(table), rows)
    answers = []
    for datafile_id, row, (_, item) in zip(ids, rows, items, strict=True):
        state, key, token = str(row["state"]), str(row["key"]), row["upload_token"]
        if item.size == 0:
            replica = session.scalars(
                select(Replica).where(Replica.datafile_id == datafile_id)
            ).one()
            stage_empty(ctx, session, replica)
            state = replica.state
        answers.append(
            _answer(
                datafile_id, state, key, str(token) if token else None, 0, False, base_url, target
            )
        )
    return answers


def _answer(
    datafile_id: int,
    state: str,
    key: str,
    token: str | None,
    offset: int,
    skip: bool,
    base_url: str,
    target: Target,
    sha256: str | None = None,
) -> RegisterAnswer:
    if skip:
        return RegisterAnswer(id=datafile_id, state=state, action="skip", sha256=sha256)
    if target.sftp is not None:
        return RegisterAnswer(
            id=datafile_id,
            state=state,
            action="upload",
            method=target.method,
            offset=offset,
            sftp_path=target.path(key),
            sftp_host=target.sftp["host"],
            sftp_port=target.sftp["port"],
            sftp_user=target.sftp["user"],
        )
    return RegisterAnswer(
        id=datafile_id,
        state=state,
        action="upload",
        upload_url=f"{base_url}/files/{token}",
        offset=offset,
    )


def get_owned(session: Session, uploader: Uploader, datafile_id: int) -> Datafile:
    """The datafile if it belongs to ``uploader``; NotFound otherwise (no leak)."""
    datafile = session.get(Datafile, datafile_id, options=[joinedload(Datafile.dataset)])
    if datafile is None or datafile.dataset.uploader_id != uploader.id:
        raise NotFound(f"no datafile {datafile_id}")
    return datafile


def public(datafile: Datafile, base_url: str | None = None) -> DatafilePublic:
    replica = datafile.replicas[-1]
    unfinished = replica.state in (S.registered, S.uploading)
    return DatafilePublic(
        id=datafile.id,
        dataset=datafile.dataset.name,
        experiment=datafile.dataset.experiment,
        directory=datafile.directory,
        filename=datafile.filename,
        size=datafile.size,
        mtime=datafile.mtime,
        sha256=datafile.sha256,
        md5=datafile.md5,
        checksum_source=datafile.checksum_source,
        state=replica.state,
        bytes_staged=replica.bytes_staged,
        error=replica.error,
        upload_url=(
            f"{base_url}/files/{replica.upload_token}"
            if base_url and unfinished and replica.upload_token
            else None
        ),
    )


def list_datafiles(
    session: Session,
    uploader: Uploader,
    *,
    dataset: str | None,
    state: str | None,
    cursor: str | None,
    limit: int,
) -> DatafilePage:
    query = (
        select(Datafile)
        .join(Datafile.dataset)
        .options(joinedload(Datafile.dataset), joinedload(Datafile.replicas))
        .where(Dataset.uploader_id == uploader.id)
        .order_by(Datafile.id)
    )
    if dataset is not None:
        query = query.where(Dataset.name == dataset)
    if state is not None:
        if state not in ReplicaState.__members__:
            raise InvalidInput("state", f"must be one of {', '.join(ReplicaState)}", state)
        query = query.where(
            Datafile.id.in_(select(Replica.datafile_id).where(Replica.state == state))
        )
    if cursor:
        try:
            after = int(cursor)
        except ValueError:
            raise InvalidInput("cursor", "must be a cursor returned by a previous page") from None
        query = query.where(Datafile.id > after)
    rows = list(session.scalars(query.limit(limit + 1)).unique())
    more = len(rows) > limit
    rows = rows[:limit]
    return DatafilePage(
        items=[public(df) for df in rows],
        next_cursor=str(rows[-1].id) if more and rows else None,
    )


def complete(
    ctx: ServerContext, uploader: Uploader, datafile_id: int, sha256: str, md5: str | None
) -> DatafilePublic:
    """Record the client's digests and verify against what the server hashed."""
    sha256 = sha256.lower()
    md5 = md5.lower() if md5 else None
    with ctx.catalog.session() as session:
        datafile = get_owned(session, uploader, datafile_id)
        replica = datafile.replicas[-1]
        if replica.state in (S.verified, S.stored):
            if datafile.sha256 != sha256:
                raise Conflict(
                    f"datafile {datafile_id} is already {replica.state} with sha256 "
                    f"{datafile.sha256}; the declared {sha256} differs"
                )
            return public(datafile)
        if replica.state == S.failed:
            return public(datafile)
        if replica.method != "http":
            answer = _complete_arrived(ctx, session, datafile, replica, sha256, md5)
        else:
            if not verify.stage_if_whole(ctx, session, replica):
                raise Conflict(
                    f"datafile {datafile_id}: only {replica.bytes_staged} of {datafile.size} "
                    "bytes are staged; upload the rest before completing"
                )
            replica.declared_sha256 = sha256
            replica.declared_md5 = md5
            session.flush()
            verify.verify_staged(ctx, session, replica)
            answer = public(datafile)
    # Tasks are submitted once the transaction is committed, so they see it.
    if answer.state == S.staged:
        ctx.runner.submit("verify", replica_id=replica.id)
    if answer.state == S.verified:
        ctx.runner.submit("promote", replica_id=replica.id)
    return answer


def _complete_arrived(
    ctx: ServerContext,
    session: Session,
    datafile: Datafile,
    replica: Replica,
    sha256: str,
    md5: str | None,
) -> DatafilePublic:
    """``complete`` of bytes that arrived behind the server's back (sftp).

    The client says it is done: a file of another size fails with the reason,
    a symlink or anything but a regular file is refused. Otherwise the digests
    are recorded and a verify task re-reads the file; the answer says
    ``staged`` until it has (poll ``GET /api/v1/datafiles/{id}``).
    """
    try:
        arrival = verify.stage_arrived(ctx, session, replica)
    except StageboxError as exc:
        transition(session, replica, S.failed, error=f"staged file refused: {exc}")
        return public(datafile)
    if not arrival.whole:
        if arrival.final is None and replica.bytes_staged == 0:
            raise Conflict(
                f"datafile {datafile.id}: nothing is staged at its path yet; "
                "upload (and rename) the file before completing"
            )
        staged = arrival.final if arrival.final is not None else replica.bytes_staged
        transition(
            session,
            replica,
            S.failed,
            error=f"size mismatch: registered {datafile.size} bytes, staged {staged}",
        )
        return public(datafile)
    replica.declared_sha256 = sha256
    replica.declared_md5 = md5
    session.flush()
    return public(datafile)
