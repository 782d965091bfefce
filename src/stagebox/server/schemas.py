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


class BatchRegister(BaseModel):
    files: list[DatafileRegister] = Field(max_length=MAX_BATCH)
    method: Literal["http", "sftp"] = "http"


class RegisterAnswer(BaseModel):
    id: int
    state: str
    action: Literal["skip", "upload"]
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
    dataset: str
    experiment: str
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
