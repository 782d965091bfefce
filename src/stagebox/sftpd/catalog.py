"""What the staging endpoint asks the catalog: who a key is, what a path may hold.

Every answer is read at the moment it is needed (a login, an open for writing,
a rename), so an admin's approval or revocation applies at once. These are
plain blocking calls; the endpoint runs them on a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import ColumnElement, select

from stagebox.errors import Conflict
from stagebox.server.db.models import (
    Datafile,
    Dataset,
    RegistrationRequest,
    Replica,
    ReplicaState,
    RequestState,
    StorageBox,
    Uploader,
)
from stagebox.server.db.session import Catalog
from stagebox.server.services.boxes import SERVED
from stagebox.server.services.context import ServerContext
from stagebox.server.services.states import transition

log = logging.getLogger(__name__)
S = ReplicaState
UNFINISHED = (S.registered.value, S.uploading.value)


@dataclass(frozen=True)
class Login:
    """An uploader whose approved key opened this session."""

    uploader_id: int
    uuid: str
    name: str
    request_id: int


@dataclass(frozen=True)
class Upload:
    """A registered datafile version the logged-in uploader may write."""

    replica_id: int
    key: str
    size: int


def sftp_box(catalog: Catalog, name: str | None, kinds: tuple[str, ...] = SERVED) -> StorageBox:
    """The staging box to serve: the one named, or the only one whose
    ``sftp_endpoint`` is one of ``kinds`` (``stagebox``: this endpoint listens for
    SSH itself; ``sshd``: OpenSSH's sshd hands it sessions). Boxes left to
    internal-sftp (``openssh``) are never this endpoint's."""
    with catalog.session() as session:
        boxes = [
            box
            for box in session.scalars(select(StorageBox).order_by(StorageBox.id))
            if box.role == "staging" and box.attributes.get("sftp_host")
        ]
        if name is not None:
            boxes = [box for box in boxes if box.name == name]
            if not boxes:
                raise LookupError(
                    f"no sftp staging box named {name!r} (stagebox admin box list shows them)"
                )
            kind = boxes[0].attributes.get("sftp_endpoint", "openssh")
            if kind not in kinds:
                raise LookupError(f"box {name} has sftp_endpoint {kind}, not {' or '.join(kinds)}")
        boxes = [box for box in boxes if box.attributes.get("sftp_endpoint") in kinds]
        if not boxes:
            raise LookupError(
                "no sftp staging box yet: add one with stagebox admin box add NAME "
                f"--role staging --path DIR --sftp-endpoint {kinds[0]} --sftp-host HOST "
                "--sftp-port PORT --sftp-user USER"
            )
        if len(boxes) > 1:
            names = ", ".join(box.name for box in boxes)
            raise LookupError(f"several sftp staging boxes ({names}): name one with --box")
        box = boxes[0]
        if box.backend != "local":
            raise LookupError(f"box {box.name}: the endpoint serves local boxes only")
        session.expunge(box)
        return box


def login(ctx: ServerContext, box_id: int, fingerprint: str) -> Login | None:
    """The uploader whose approved request on this box has this key, if any."""
    return _login(ctx, box_id, RegistrationRequest.fingerprint == fingerprint)


def login_by_request(ctx: ServerContext, box_id: int, request_id: int) -> Login | None:
    """The uploader of this request, if it is approved on this box (sshd checked its key)."""
    return _login(ctx, box_id, RegistrationRequest.id == request_id)


def _login(ctx: ServerContext, box_id: int, which: ColumnElement[bool]) -> Login | None:
    with ctx.catalog.session() as session:
        row = session.execute(
            select(Uploader.id, Uploader.uuid, Uploader.name, RegistrationRequest.id)
            .join(Uploader, Uploader.id == RegistrationRequest.uploader_id)
            .where(
                which,
                RegistrationRequest.state == RequestState.approved.value,
                RegistrationRequest.box_id == box_id,
                Uploader.revoked_at.is_(None),
            )
            .order_by(RegistrationRequest.id.desc())
        ).first()
    return Login(*row) if row is not None else None


def still_approved(ctx: ServerContext, who: Login) -> bool:
    with ctx.catalog.session() as session:
        state = session.scalar(
            select(RegistrationRequest.state)
            .join(Uploader, Uploader.id == RegistrationRequest.uploader_id)
            .where(RegistrationRequest.id == who.request_id, Uploader.revoked_at.is_(None))
        )
    return state == RequestState.approved.value


def writable(ctx: ServerContext, box_id: int, who: Login, key: str) -> Upload | None:
    """The unfinished sftp upload of ``who`` staged at ``key`` in this box, if any.

    Only a datafile version registered by this uploader, still waiting for its
    bytes, may be written; once staged (or anything later) it is read-only.
    """
    with ctx.catalog.session() as session:
        row = session.execute(
            select(Replica.id, Replica.key, Datafile.size)
            .join(Datafile, Datafile.id == Replica.datafile_id)
            .join(Dataset, Dataset.id == Datafile.dataset_id)
            .join(RegistrationRequest, RegistrationRequest.id == who.request_id)
            .join(Uploader, Uploader.id == Dataset.uploader_id)
            .where(
                Replica.box_id == box_id,
                Replica.key == key,
                Replica.method != "http",
                Replica.state.in_(UNFINISHED),
                Dataset.uploader_id == who.uploader_id,
                RegistrationRequest.state == RequestState.approved.value,
                Uploader.revoked_at.is_(None),
            )
        ).first()
    return Upload(*row) if row is not None else None


def unfinished(ctx: ServerContext, box_id: int) -> list[Upload]:
    """Every upload on this box still waiting for its bytes."""
    with ctx.catalog.session() as session:
        rows = session.execute(
            select(Replica.id, Replica.key, Datafile.size)
            .join(Datafile, Datafile.id == Replica.datafile_id)
            .where(
                Replica.box_id == box_id,
                Replica.method != "http",
                Replica.state.in_(UNFINISHED),
            )
            .order_by(Replica.id)
        ).all()
    return [Upload(*row) for row in rows]


def record_progress(ctx: ServerContext, replica_id: int, size: int) -> None:
    """Bytes seen so far for an upload that is not whole yet (never shown full)."""
    with ctx.catalog.session() as session:
        replica = session.get(Replica, replica_id)
        if replica is None or replica.state not in UNFINISHED:
            return
        seen = max(min(size, replica.datafile.size - 1), 0)
        try:
            if replica.state == S.registered and seen:
                transition(session, replica, S.uploading, bytes_staged=seen)
            else:
                replica.bytes_staged = seen
        except Conflict:
            pass  # someone else moved it; their state stands


def record_staged(
    ctx: ServerContext, replica_id: int, digests: dict[str, str], identity: str | None
) -> bool:
    """The whole file is under its final name, hashed by the endpoint as it arrived.

    Records the server's own digests and the file's identity, so verification
    compares them with the client's without reading the file again and
    promotion refuses a file that is not the one hashed. False if the upload
    is no longer waiting for bytes.
    """
    with ctx.catalog.session() as session:
        replica = session.get(Replica, replica_id)
        if replica is None or replica.state not in UNFINISHED:
            return False
        size = replica.datafile.size
        try:
            if replica.state == S.registered:
                transition(session, replica, S.uploading)
            transition(
                session,
                replica,
                S.staged,
                bytes_staged=size,
                staged_sha256=digests["sha256"],
                staged_md5=digests.get("md5"),
                staged_identity=identity,
            )
        except Conflict:
            return False
    return True
