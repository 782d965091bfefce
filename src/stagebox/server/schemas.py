"""Request and answer shapes of the HTTP API, shared by routes and services."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

MAX_BATCH = 1000


class DatafileRegister(BaseModel):
    dataset: str
    directory: str = ""
    filename: str
    size: int = Field(ge=0)
    mtime: float | None = None
    experiment: str | None = None
    owner: str | None = None
    # The client's sha256 of the file, when it knows it without sending it (its
    # journal, or a hash taken because the server answered "hash"): it lets the
    # server tell a touched file from a changed one.
    sha256: str | None = Field(default=None, description="64 hexadecimal digits")


class BatchRegister(BaseModel):
    files: list[DatafileRegister] = Field(max_length=MAX_BATCH)
    method: Literal["http", "sftp"] = "http"


class RegisterAnswer(BaseModel):
    """``skip``: the latest version holds these bytes, stored. ``upload``: send
    them (a new file, or a new version). ``hash``: a stored version has this size
    but another mtime; register again with the file's sha256 to decide."""

    id: int
    version: int = 1
    state: str
    action: Literal["skip", "upload", "hash"]
    method: str = "http"
    upload_url: str | None = None
    offset: int = 0
    sha256: str | None = None
    # sftp: the absolute path on the staging host, and how to reach it.
    sftp_path: str | None = None
    sftp_host: str | None = None
    sftp_port: int | None = None
    sftp_user: str | None = None


class BatchAnswer(BaseModel):
    files: list[RegisterAnswer]


class CompleteRequest(BaseModel):
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    md5: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$")


class DatafilePublic(BaseModel):
    id: int
    version: int
    dataset: str
    experiment: str
    owner: str
    directory: str
    filename: str
    size: int
    mtime: float | None
    sha256: str | None
    md5: str | None
    checksum_source: str | None
    state: str
    bytes_staged: int
    error: str | None
    upload_url: str | None = None
    # The last fixity audit of the stored copy: ok, corrupt or missing.
    fixity: str | None = None
    audited_at: str | None = None


class DatafilePage(BaseModel):
    items: list[DatafilePublic]
    next_cursor: str | None


class BundleEntry(BaseModel):
    id: int
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    md5: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$")


class BundleManifest(BaseModel):
    files: list[BundleEntry] = Field(max_length=MAX_BATCH)


class StagedBundle(BaseModel):
    path: str


class BundleResult(BaseModel):
    id: int
    state: str
    error: str | None = None


class BundleAnswer(BaseModel):
    files: list[BundleResult]


class CheckItem(BaseModel):
    """One local file the client asks about: is its latest version stored, identical?"""

    dataset: str
    directory: str = ""
    filename: str
    experiment: str | None = None
    owner: str | None = None
    size: int = Field(ge=0)
    sha256: str = Field(description="64 hexadecimal digits")


class CheckBatch(BaseModel):
    files: list[CheckItem] = Field(max_length=MAX_BATCH)


class CheckAnswer(BaseModel):
    """``stored``, ``differs``, ``missing``, ``corrupt`` (a failed audit) or
    ``in progress``, from the catalog's recorded digests."""

    state: Literal["stored", "differs", "missing", "corrupt", "in progress"]
    id: int | None = None
    version: int | None = None
    size: int | None = None
    sha256: str | None = None
    detail: str | None = None


class CheckAnswers(BaseModel):
    files: list[CheckAnswer]
