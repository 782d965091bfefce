"""Registering datafiles, looking them up, and completing their uploads."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, Table, bindparam, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, joinedload

from stagebox.errors import Conflict, InvalidInput, NotFound, StageboxError
from stagebox.names import clean_component, clean_directory, join_key
from stagebox.server.db.models import (
    Datafile,
    Dataset,
    Replica,
    ReplicaState,
    Uploader,
    utcnow,
)
from stagebox.server.schemas import (
    CheckAnswer,
    CheckItem,
    DatafilePage,
    DatafilePublic,
    DatafileRegister,
    RegisterAnswer,
)
from stagebox.server.services import boxes, registrations, verify
from stagebox.server.services.context import ServerContext
from stagebox.server.services.states import transition

S = ReplicaState
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def staging_key(uploader: Uploader, token: str) -> str:
    return f"http/{uploader.uuid}/{token}"


def sftp_key(
    uploader: Uploader, dataset_id: int, version: int, directory: str, filename: str
) -> str:
    """``<uploader-uuid>/<dataset-id>/v<version>/<directory>/<filename>`` in the sftp box.

    The dataset's id, not its name: names repeat across experiments and owners
    and would make two datasets share one staging folder; the version, so a new
    version never writes where an earlier one may still be staged.
    """
    parts = (uploader.uuid, str(dataset_id), f"v{version}", directory, filename)
    return "/".join(p for p in parts if p)


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


_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def clean_sha256(value: str | None, field: str = "sha256") -> str | None:
    """A declared sha256 in lower case; InvalidInput naming ``field`` unless 64 hex digits."""
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX64.match(value):
        raise InvalidInput(field, "must be 64 hexadecimal digits", str(value)[:80])
    return value.lower()


def clean_item(item: DatafileRegister, index: int | None = None) -> DatafileRegister:
    """The item with every name checked and NFC-normalised; errors name the field."""
    where = "" if index is None else f"files[{index}]."
    try:
        # Built without validating again: every value was validated or cleaned.
        return DatafileRegister.model_construct(
            dataset=clean_component(item.dataset, "dataset"),
            experiment=clean_component(item.experiment, "experiment") if item.experiment else None,
            owner=clean_component(item.owner, "owner") if item.owner else None,
            directory=clean_directory(item.directory),
            filename=clean_component(item.filename, "filename"),
            size=item.size,
            mtime=item.mtime,
            sha256=clean_sha256(item.sha256, "sha256"),
        )
    except InvalidInput as exc:
        raise type(exc)(where + exc.field, exc.rule, exc.value) from None


@dataclass(frozen=True)
class Identity:
    """What names a dataset within one uploader."""

    owner: str
    experiment: str
    name: str

    @classmethod
    def of(cls, item: DatafileRegister) -> Identity:
        return cls(item.owner or "", item.experiment or "", item.dataset)


def _dataset_query(uploader: Uploader, identity: Identity) -> Select[Any]:
    return select(Dataset).where(
        Dataset.uploader_id == uploader.id,
        Dataset.owner == identity.owner,
        Dataset.experiment == identity.experiment,
        Dataset.name == identity.name,
    )


def find_dataset(session: Session, uploader: Uploader, identity: Identity) -> Dataset | None:
    found: Dataset | None = session.scalar(_dataset_query(uploader, identity))
    return found


def _dataset(session: Session, uploader: Uploader, identity: Identity) -> Dataset:
    found = find_dataset(session, uploader, identity)
    if found is not None:
        return found
    try:
        with session.begin_nested():
            dataset = Dataset(
                uploader_id=uploader.id,
                owner=identity.owner,
                experiment=identity.experiment,
                name=identity.name,
            )
            session.add(dataset)
    except IntegrityError:  # another request created it first
        again: Dataset = session.scalars(_dataset_query(uploader, identity)).one()
        return again
    return dataset


def versions_of(
    session: Session, dataset_id: int, pairs: set[tuple[str, str]]
) -> dict[tuple[str, str], Datafile]:
    """The latest version of each (directory, filename) of ``pairs``, with its replicas."""
    latest: dict[tuple[str, str], Datafile] = {}
    if pairs:
        rows = session.scalars(
            select(Datafile)
            .options(joinedload(Datafile.replicas))
            .where(
                Datafile.dataset_id == dataset_id,
                tuple_(Datafile.directory, Datafile.filename).in_(pairs),
            )
            .order_by(Datafile.version)
        ).unique()
        for df in rows:
            latest[(df.directory, df.filename)] = df
    return latest


Decision = Literal["skip", "hash", "new", "resume"]
LOST = ("corrupt", "missing")


@dataclass(frozen=True)
class VersionRow:
    """One version of a path as registration and check need it: its newest replica's
    state and fixity, not the replica itself."""

    id: int
    version: int
    size: int
    mtime: float | None
    sha256: str | None
    state: str  # of its newest replica
    fixity: str | None
    audited_at: dt.datetime | None

    @classmethod
    def of(cls, df: Datafile) -> VersionRow:
        r = df.replicas[-1]
        return cls(df.id, df.version, df.size, df.mtime, df.sha256, r.state, r.fixity, r.audited_at)


def version_rows(
    session: Session, dataset_id: int, pairs: set[tuple[str, str]]
) -> dict[tuple[str, str], list[VersionRow]]:
    """Every version, oldest first, of each (directory, filename) of ``pairs`` in one
    dataset.

    One query per dataset instead of one per file: per-file overhead is what
    kills trees of small files; exact pairs, so folders that reuse file names do
    not pull in every earlier folder's rows. Plain rows, not ORM objects: a
    rerun registers every file, and building 1,000 datafiles with their
    replicas would cost more than the rest of the batch.
    """
    found: dict[tuple[str, str], list[VersionRow]] = {}
    if not pairs:
        return found
    rows = session.execute(
        select(
            Datafile.directory,
            Datafile.filename,
            Datafile.id,
            Datafile.version,
            Datafile.size,
            Datafile.mtime,
            Datafile.sha256,
            Replica.state,
            Replica.fixity,
            Replica.audited_at,
        )
        .join(Replica, Replica.datafile_id == Datafile.id)
        .where(
            Datafile.dataset_id == dataset_id,
            tuple_(Datafile.directory, Datafile.filename).in_(pairs),
        )
        .order_by(Datafile.version, Replica.id)
    )
    for r in rows:
        versions = found.setdefault((r.directory, r.filename), [])
        row = VersionRow(
            r.id, r.version, r.size, r.mtime, r.sha256, r.state, r.fixity, r.audited_at
        )
        if versions and versions[-1].id == r.id:
            versions[-1] = row  # a newer replica of the same version
        else:
            versions.append(row)
    return found


def latest_of(
    session: Session, dataset_id: int, pairs: set[tuple[str, str]]
) -> dict[tuple[str, str], VersionRow]:
    """The newest version of each of ``pairs`` that has one."""
    return {p: versions[-1] for p, versions in version_rows(session, dataset_id, pairs).items()}


def decide(latest: VersionRow | None, item: DatafileRegister, *, can_hash: bool = True) -> Decision:
    """What a registration of ``item`` does, given the latest version of its path.

    Against a version whose digests are recorded (verified or stored): the same
    bytes are skipped; other bytes (another size, another declared sha256) are a
    new version; the same size with another mtime and no sha256 is ``hash`` (the
    client hashes and registers again) or, for a client that cannot, a new
    version. A stored copy an audit found corrupt or missing is sent again as a
    new version: it is never counted as stored. An unfinished or failed latest
    version is resumed (restarted from zero where it changed).
    """
    if latest is None:
        return "new"
    if latest.state not in (S.verified, S.stored):
        return "resume"
    if latest.fixity in LOST or latest.size != item.size:
        return "new"
    if item.size == 0:
        return "skip"
    if item.sha256 is not None:
        return "skip" if item.sha256 == latest.sha256 else "new"
    if item.mtime is not None and item.mtime == latest.mtime:
        return "skip"
    return "hash" if can_hash else "new"


def location(
    uploader: Uploader,
    target: Target,
    dataset_id: int,
    version: int,
    directory: str,
    filename: str,
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
        "key": sftp_key(uploader, dataset_id, version, directory, filename),
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
    version: int,
    item: DatafileRegister,
) -> dict[str, object]:
    """Columns of a fresh replica in the target's staging box."""
    return {
        **location(uploader, target, dataset_id, version, item.directory, item.filename),
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
    can_hash: bool = True,
    dataset: Dataset | None = None,
    latest: Datafile | None = None,
    target: Target | None = None,
) -> tuple[Datafile, Replica, Decision]:
    """Register one datafile (see :func:`decide`); returns the version the answer is
    about, its replica and the decision."""
    target = target or http_target(ctx)
    if dataset is None:
        dataset = _dataset(session, uploader, Identity.of(item))
        latest = versions_of(session, dataset.id, {(item.directory, item.filename)}).get(
            (item.directory, item.filename)
        )
    decision = decide(VersionRow.of(latest) if latest else None, item, can_hash=can_hash)
    if decision == "new":
        version = latest.version + 1 if latest is not None else 1
        datafile = _new_version(ctx, session, uploader, dataset, version, item, target)
        datafile.replicas[-1].awaits_complete = awaits_complete
        return datafile, datafile.replicas[-1], decision
    assert latest is not None
    replica = latest.replicas[-1]
    if decision == "skip":
        if item.mtime is not None and latest.mtime != item.mtime:
            latest.mtime = item.mtime  # touched, same bytes: the new mtime is recorded
        return latest, replica, decision
    if decision == "hash":
        return latest, replica, decision
    _resume(ctx, session, uploader, dataset, latest, item, target)
    replica.awaits_complete = replica.awaits_complete and awaits_complete
    return latest, replica, decision


def _new_version(
    ctx: ServerContext,
    session: Session,
    uploader: Uploader,
    dataset: Dataset,
    version: int,
    item: DatafileRegister,
    target: Target,
) -> Datafile:
    datafile = Datafile(
        dataset_id=dataset.id,
        directory=item.directory,
        filename=item.filename,
        version=version,
        size=item.size,
        mtime=item.mtime,
    )
    replica = Replica(
        **replica_values(ctx, uploader, True, utcnow(), target, dataset.id, version, item)
    )
    datafile.replicas.append(replica)
    try:
        with session.begin_nested():
            session.add(datafile)
    except IntegrityError:
        # Another request registered this version at the same moment.
        raise Conflict(
            f"{item.dataset}/{join_key(item.directory, item.filename)}: version {version} "
            "was registered by another request at the same time; register again"
        ) from None
    if item.size == 0:
        stage_empty(ctx, session, replica)
    return datafile


def _resume(
    ctx: ServerContext,
    session: Session,
    uploader: Uploader,
    dataset: Dataset,
    datafile: Datafile,
    item: DatafileRegister,
    target: Target,
) -> None:
    """Continue an unfinished (or failed) version; start it over where that is needed."""
    replica = datafile.replicas[-1]
    moved = None
    if replica.method != target.method or replica.box_id != target.box_id:
        # Sent another way this time (sftp was approved, or fell back to http):
        # the partial bytes of the old way are of no use to the new one.
        moved = location(
            uploader, target, dataset.id, datafile.version, item.directory, item.filename
        )
    touched = item.mtime is not None and datafile.mtime is not None and item.mtime != datafile.mtime
    if moved or datafile.size != item.size or touched or replica.state == S.failed:
        # The file changed before it was verified, or a retry after a failure:
        # start over from byte zero; nothing verified is touched.
        datafile.size = item.size
        reset_replica(ctx, session, replica, moved)
        if item.size == 0:
            stage_empty(ctx, session, replica)
    datafile.mtime = item.mtime


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
    datasets: dict[Identity, Dataset] = {}
    for item in cleaned:
        identity = Identity.of(item)
        if identity not in datasets:
            datasets[identity] = _dataset(session, uploader, identity)
    latest: dict[tuple[int, str, str], VersionRow] = {}
    for identity, dataset in datasets.items():
        pairs = {(i.directory, i.filename) for i in cleaned if Identity.of(i) == identity}
        for (directory, filename), row in latest_of(session, dataset.id, pairs).items():
            latest[(dataset.id, directory, filename)] = row

    # Skips are answered from plain rows (a rerun is mostly skips); new versions
    # are inserted together, two statements for the whole batch; unfinished ones
    # go one by one, since each may need its staged bytes reset.
    answers: list[RegisterAnswer | None] = []
    fresh: dict[tuple[int, str, str], list[int]] = {}
    fresh_items: list[tuple[int, int, DatafileRegister]] = []
    touched: list[dict[str, object]] = []
    for index, item in enumerate(cleaned):
        dataset = datasets[Identity.of(item)]
        where = (dataset.id, item.directory, item.filename)
        if where in fresh:  # NFC twins in one batch share one datafile
            fresh[where].append(index)
            answers.append(None)
            continue
        found = latest.get(where)
        decision = decide(found, item)
        if decision == "new":
            fresh[where] = [index]
            fresh_items.append((dataset.id, found.version + 1 if found else 1, item))
            answers.append(None)
            continue
        if decision in ("skip", "hash"):
            assert found is not None
            if decision == "skip" and item.mtime is not None and item.mtime != found.mtime:
                touched.append({"b_id": found.id, "v_mtime": item.mtime})
            answers.append(
                _answer(
                    (found.id, found.version, found.sha256),
                    found.state,
                    "",
                    None,
                    0,
                    decision,
                    base_url,
                    target,
                )
            )
            continue
        assert found is not None
        datafile = session.get(Datafile, found.id, options=[joinedload(Datafile.replicas)])
        assert datafile is not None
        datafile, replica, decision = register_one(
            ctx, session, uploader, item, dataset=dataset, latest=datafile, target=target
        )
        answers.append(
            _answer(
                datafile,
                replica.state,
                replica.key,
                replica.upload_token,
                replica.bytes_staged or 0,
                decision,
                base_url,
                target,
            )
        )
    if touched:  # same bytes, touched: the new mtime is recorded
        table = Datafile.__table__
        assert isinstance(table, Table)
        session.connection().execute(
            update(table).where(table.c.id == bindparam("b_id")).values(mtime=bindparam("v_mtime")),
            touched,
        )
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
    items: list[tuple[int, int, DatafileRegister]],
    base_url: str,
    target: Target,
) -> list[RegisterAnswer]:
    """Insert new versions (dataset id, version, item) together."""
    now = utcnow()
    values = [
        {
            "dataset_id": dataset_id,
            "directory": item.directory,
            "filename": item.filename,
            "version": version,
            "size": item.size,
            "mtime": item.mtime,
            "created_at": now,
        }
        for dataset_id, version, item in items
    ]
    try:
        with session.begin_nested():
            ids = session.scalars(
                insert(Datafile).returning(Datafile.id, sort_by_parameter_order=True), values
            ).all()
    except IntegrityError:
        raise Conflict(
            "another request registered some of these files at the same moment; register again"
        ) from None
    rows = [
        {
            "datafile_id": datafile_id,
            **replica_values(ctx, uploader, True, now, target, dataset_id, version, item),
        }
        for datafile_id, (dataset_id, version, item) in zip(ids, items, strict=True)
    ]
    # Core, not the ORM's bulk path: no instances are needed for new rows.
    table = Replica.__table__
    assert isinstance(table, Table)
    session.connection().execute(insert(table), rows)
    answers = []
    for datafile_id, row, (_, version, item) in zip(ids, rows, items, strict=True):
        state, key, token = str(row["state"]), str(row["key"]), row["upload_token"]
        if item.size == 0:
            replica = session.scalars(
                select(Replica).where(Replica.datafile_id == datafile_id)
            ).one()
            stage_empty(ctx, session, replica)
            state = replica.state
        answers.append(
            _answer(
                (datafile_id, version, None),
                state,
                key,
                str(token) if token else None,
                0,
                "new",
                base_url,
                target,
            )
        )
    return answers


def _answer(
    datafile: Datafile | tuple[int, int, str | None],
    state: str,
    key: str,
    token: str | None,
    offset: int,
    decision: Decision,
    base_url: str,
    target: Target,
) -> RegisterAnswer:
    """The answer for one file: a version (row, or its id, number and sha256)."""
    if isinstance(datafile, Datafile):
        datafile_id, version, sha256 = datafile.id, datafile.version, datafile.sha256
    else:
        datafile_id, version, sha256 = datafile
    if decision in ("skip", "hash"):
        return RegisterAnswer(
            id=datafile_id, version=version, state=state, action=decision, sha256=sha256
        )
    if target.sftp is not None:
        return RegisterAnswer(
            id=datafile_id,
            version=version,
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
        version=version,
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
        version=datafile.version,
        dataset=datafile.dataset.name,
        experiment=datafile.dataset.experiment,
        owner=datafile.dataset.owner,
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
        fixity=replica.fixity,
        audited_at=replica.audited_at.isoformat() + "Z" if replica.audited_at else None,
    )


def latest_only(query: Select[Any]) -> Select[Any]:
    """Only the newest version of each path."""
    newer = aliased(Datafile)
    return query.where(
        Datafile.version
        == select(func.max(newer.version))
        .where(
            newer.dataset_id == Datafile.dataset_id,
            newer.directory == Datafile.directory,
            newer.filename == Datafile.filename,
        )
        .correlate(Datafile)
        .scalar_subquery()
    )


def list_datafiles(
    session: Session,
    uploader: Uploader,
    *,
    dataset: str | None,
    state: str | None,
    cursor: str | None,
    limit: int,
    owner: str | None = None,
    experiment: str | None = None,
    versions: str = "latest",
) -> DatafilePage:
    """One page of the uploader's datafiles: the latest version of each path, or
    every version with ``versions="all"``."""
    query = (
        select(Datafile)
        .join(Datafile.dataset)
        .options(joinedload(Datafile.dataset), joinedload(Datafile.replicas))
        .where(Dataset.uploader_id == uploader.id)
        .order_by(Datafile.id)
    )
    if versions not in ("latest", "all"):
        raise InvalidInput("versions", "must be latest or all", versions)
    if versions == "latest":
        query = latest_only(query)
    for column, value in ((Dataset.name, dataset), (Dataset.owner, owner)):
        if value is not None:
            query = query.where(column == value)
    if experiment is not None:
        query = query.where(Dataset.experiment == experiment)
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


def version_of(session: Session, uploader: Uploader, datafile_id: int, version: int) -> Datafile:
    """Version ``version`` of the path that datafile ``datafile_id`` is a version of."""
    datafile = get_owned(session, uploader, datafile_id)
    if version == datafile.version:
        return datafile
    found = session.scalar(
        select(Datafile)
        .options(joinedload(Datafile.dataset), joinedload(Datafile.replicas))
        .where(
            Datafile.dataset_id == datafile.dataset_id,
            Datafile.directory == datafile.directory,
            Datafile.filename == datafile.filename,
            Datafile.version == version,
        )
    )
    if found is None:
        newest = session.scalar(
            select(func.max(Datafile.version)).where(
                Datafile.dataset_id == datafile.dataset_id,
                Datafile.directory == datafile.directory,
                Datafile.filename == datafile.filename,
            )
        )
        raise NotFound(f"no version {version}: datafile {datafile_id} has versions 1 to {newest}")
    return found


def check_batch(session: Session, uploader: Uploader, items: list[CheckItem]) -> list[CheckAnswer]:
    """For each local file (size and sha256), what the catalog says of it.

    The reference is the newest *stored* version of its path: ``stored`` when it
    has this size and sha256 (``corrupt`` or ``missing`` when an audit found the
    stored copy so), ``in progress`` when a newer version is still on its way,
    ``differs`` when the stored bytes are others, ``missing`` when nothing of
    the path is stored. Nothing is created or changed.
    """
    cleaned: list[tuple[Identity, str, str, CheckItem]] = []
    for i, item in enumerate(items):
        # The same names and digest rules as a registration's.
        probe = clean_item(DatafileRegister.model_validate(item.model_dump()), i)
        cleaned.append((Identity.of(probe), probe.directory, probe.filename, item))
    datasets: dict[Identity, Dataset | None] = {}
    for identity, *_ in cleaned:
        if identity not in datasets:
            datasets[identity] = find_dataset(session, uploader, identity)
    history: dict[tuple[int, str, str], list[VersionRow]] = {}
    for identity, dataset in datasets.items():
        if dataset is None:
            continue
        pairs = {(d, f) for ident, d, f, _ in cleaned if ident == identity}
        for (directory, filename), found in version_rows(session, dataset.id, pairs).items():
            history[(dataset.id, directory, filename)] = found
    answers = []
    for identity, directory, filename, item in cleaned:
        dataset = datasets[identity]
        versions = history.get((dataset.id, directory, filename), []) if dataset else []
        answers.append(_check_one(versions, item.size, item.sha256.lower()))
    return answers


def _check_one(versions: list[VersionRow], size: int, sha256: str) -> CheckAnswer:
    stored = [v for v in versions if v.state == S.stored]
    newest = stored[-1] if stored else None
    if newest is not None and (newest.size, newest.sha256) == (size, sha256):
        answer = CheckAnswer(
            state="stored",
            id=newest.id,
            version=newest.version,
            size=newest.size,
            sha256=newest.sha256,
        )
        if newest.fixity in LOST:
            when = newest.audited_at.isoformat() + "Z" if newest.audited_at else "?"
            answer.state = "corrupt" if newest.fixity == "corrupt" else "missing"
            answer.detail = f"the audit of {when} found the stored copy {newest.fixity}"
        return answer
    later = [v for v in versions if newest is None or v.version > newest.version]
    if any(v.state != S.failed for v in later):
        pending = later[-1]
        return CheckAnswer(
            state="in progress",
            id=pending.id,
            version=pending.version,
            size=pending.size,
            detail=f"version {pending.version} is {pending.state}",
        )
    if newest is not None:
        return CheckAnswer(
            state="differs",
            id=newest.id,
            version=newest.version,
            size=newest.size,
            sha256=newest.sha256,
            detail=f"stored version {newest.version} has {newest.size} bytes, "
            f"sha256 {newest.sha256}",
        )
    return CheckAnswer(state="missing", detail="no version of this file is stored")


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
        if boxes.hashes_on_write(replica.box.attributes):
            raise Conflict(
                f"datafile {datafile.id}: the staging endpoint holds {replica.bytes_staged} of "
                f"{datafile.size} bytes; upload the rest (and rename NAME.part to NAME) "
                "before completing"
            )
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
