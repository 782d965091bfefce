"""The catalog: SQLAlchemy models. Alembic migrations live beside this module."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class ReplicaState(enum.StrEnum):
    registered = "registered"
    uploading = "uploading"
    staged = "staged"
    verified = "verified"
    stored = "stored"
    failed = "failed"


class BoxRole(enum.StrEnum):
    receiving = "receiving"
    staging = "staging"
    permanent = "permanent"


class Uploader(Base):
    __tablename__ = "uploaders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    os: Mapped[str] = mapped_column(String(255), default="")
    mac_address: Mapped[str] = mapped_column(String(64), default="")
    client_version: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="uploader")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uploader_id: Mapped[int] = mapped_column(ForeignKey("uploaders.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    uploader: Mapped[Uploader] = relationship(back_populates="tokens")


class RequestState(enum.StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    revoked = "revoked"


class AdminToken(Base):
    """A bearer token for the admin API; stored only as its SHA-256 hash."""

    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class RegistrationRequest(Base):
    """An uploader asks to stage over SFTP with one public key; an admin decides."""

    __tablename__ = "registration_requests"
    __table_args__ = (UniqueConstraint("uploader_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uploader_id: Mapped[int] = mapped_column(ForeignKey("uploaders.id"), index=True)
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default=RequestState.pending)
    box_id: Mapped[int | None] = mapped_column(ForeignKey("storage_boxes.id"), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    uploader: Mapped[Uploader] = relationship()
    box: Mapped[StorageBox | None] = relationship()


class StorageBox(Base):
    __tablename__ = "storage_boxes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    backend: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(32))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Dataset(Base):
    """A dataset is (uploader, owner, experiment, name); owner and experiment are ''
    when the folder structure names none. Two owners' same-named datasets never meet."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("uploader_id", "owner", "experiment", "name", name="uq_datasets_identity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uploader_id: Mapped[int] = mapped_column(ForeignKey("uploaders.id"))
    experiment: Mapped[str] = mapped_column(String(255), default="")
    name: Mapped[str] = mapped_column(String(255))
    owner: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    uploader: Mapped[Uploader] = relationship()


class Datafile(Base):
    """One numbered version of the file at (dataset, directory, filename).

    A changed file is a new row with the next ``version``, its own replicas and
    its own store key; a version whose digests are recorded is never rewritten.
    """

    __tablename__ = "datafiles"
    __table_args__ = (
        UniqueConstraint(
            "dataset_id", "directory", "filename", "version", name="uq_datafiles_version"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    directory: Mapped[str] = mapped_column(String(1024), default="")
    filename: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float | None] = mapped_column(Float, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    md5: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # "client" when the uploader declared the digest and it matched; "server" when
    # only the server's own hash exists (a stock tus client that declared none).
    checksum_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    dataset: Mapped[Dataset] = relationship()
    replicas: Mapped[list[Replica]] = relationship(
        back_populates="datafile", order_by="Replica.id", cascade="all, delete-orphan"
    )


class Replica(Base):
    """One copy of a datafile in one box; the lifecycle copy moves staging → permanent."""

    __tablename__ = "replicas"
    __table_args__ = (
        Index("ix_replicas_state_updated", "state", "updated_at"),
        Index("ix_replicas_audit", "state", "audited_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    datafile_id: Mapped[int] = mapped_column(ForeignKey("datafiles.id"), index=True)
    box_id: Mapped[int] = mapped_column(ForeignKey("storage_boxes.id"))
    key: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=ReplicaState.registered)
    method: Mapped[str] = mapped_column(String(16), default="http")
    upload_token: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    bytes_staged: Mapped[int] = mapped_column(BigInteger, default=0)
    # The server's own digests of the staged bytes, taken as they were written.
    staged_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    staged_md5: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Which file the server hashed (device, inode, size, mtime) when the bytes
    # arrived behind its back: promotion refuses a file swapped after that.
    staged_identity: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # What the uploader declared (tus metadata or /complete), awaiting comparison.
    declared_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    declared_md5: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Registered through the API: the client will call /complete with its digests.
    awaits_complete: Mapped[bool] = mapped_column(Boolean, default=True)
    upload_metadata: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    stored_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # The last fixity audit of a stored copy: ok, corrupt or missing (never repaired).
    fixity: Mapped[str | None] = mapped_column(String(16), nullable=True)
    audited_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    datafile: Mapped[Datafile] = relationship(back_populates="replicas")
    box: Mapped[StorageBox] = relationship()


class IngestStatus(enum.StrEnum):
    """``cancelled``: an operator stopped the job before it stored anything."""

    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class IngestStage(enum.StrEnum):
    """The stages of one bag, in order; ``done`` once cleanup has run."""

    stage = "stage"
    validate = "validate"
    verify = "verify"
    store = "store"
    record = "record"
    cleanup = "cleanup"
    done = "done"


class IngestJob(Base):
    """One tarred bag taken from a receiving box into staging and then storage.

    ``stage`` is the next stage to run; a stage is recorded only once it has
    finished, so an attempt killed at any point resumes at that stage.
    """

    __tablename__ = "ingest_jobs"
    __table_args__ = (
        UniqueConstraint("receiving_box_id", "bag", "etag"),
        Index("ix_ingest_jobs_status", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The tar's key in the receiving box, and the bag's name (the key's stem).
    bag: Mapped[str] = mapped_column(String(1024))
    name: Mapped[str] = mapped_column(String(255), index=True)
    etag: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    receiving_box_id: Mapped[int] = mapped_column(ForeignKey("storage_boxes.id"))
    staging_box_id: Mapped[int] = mapped_column(ForeignKey("storage_boxes.id"))
    permanent_box_id: Mapped[int] = mapped_column(ForeignKey("storage_boxes.id"))
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    delete_received: Mapped[bool] = mapped_column(Boolean, default=False)
    stage: Mapped[str] = mapped_column(String(16), default=IngestStage.stage)
    status: Mapped[str] = mapped_column(String(16), default=IngestStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_staged: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the tar reader refused while staging, as [entry, rule] pairs, whether
    # the tar held a data/ directory and its serialization (tar, tar.gz...):
    # kept for the validate stage.
    problems: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    payload_dir: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    serialization: Mapped[str | None] = mapped_column(String(16), nullable=True)
    errors: Mapped[list[str]] = mapped_column(JSON, default=list)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    superseded_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class IngestFile(Base):
    """One regular file of a bag: where it was staged, its digests, where it is kept."""

    __tablename__ = "ingest_files"
    __table_args__ = (UniqueConstraint("job_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("ingest_jobs.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    uuid: Mapped[str] = mapped_column(String(36))
    size: Mapped[int] = mapped_column(BigInteger)
    is_tag: Mapped[bool] = mapped_column(Boolean, default=False)
    md5: Mapped[str] = mapped_column(String(32))
    sha1: Mapped[str] = mapped_column(String(40))
    sha256: Mapped[str] = mapped_column(String(64))
    sha512: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="staged")
    # Where the file is kept once stored (the permanent box and its key).
    stored_box_id: Mapped[int | None] = mapped_column(ForeignKey("storage_boxes.id"), nullable=True)
    stored_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    staged_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    stored_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    fixity: Mapped[str | None] = mapped_column(String(16), nullable=True)
    audited_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class AuditResult(enum.StrEnum):
    ok = "ok"
    corrupt = "corrupt"
    missing = "missing"


class Audit(Base):
    """One fixity check of one stored object: a datafile's replica or a bag's file."""

    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica_id: Mapped[int | None] = mapped_column(
        ForeignKey("replicas.id"), index=True, nullable=True
    )
    ingest_file_id: Mapped[int | None] = mapped_column(
        ForeignKey("ingest_files.id"), index=True, nullable=True
    )
    box_id: Mapped[int] = mapped_column(ForeignKey("storage_boxes.id"))
    key: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    checked_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
