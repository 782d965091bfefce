"""Request and answer shapes of the HTTP API, shared by routes and services.

Name fields carry the rules of :mod:`stagebox.names` as JSON-schema patterns, for
the description only: the server applies the rules itself and answers a 400 that
names the field and the rule, also for the two a pattern cannot say (a limit of
255 *bytes* of UTF-8, where JSON schema counts characters; no lone surrogate).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

from stagebox.names import MAX_COMPONENT_BYTES, MAX_PATH_BYTES

MAX_BATCH = 1000
# The largest id, size, offset or version the API takes. The catalog's columns
# are 64-bit, but a JSON number past 2**53 is not exact for readers that hold
# numbers as doubles (JavaScript; the validators that check this description),
# so a bound there could not be checked as written. 2**53 bytes are 8 PiB.
MAX_INT = 2**53 - 1

# One path segment: not '.' or '..', no '/', backslash or control character (Cc).
# (A lone surrogate, which is not UTF-8, is refused too; JSON schema cannot say so.)
_SEGMENT = r"(?!\.\.?(?:/|$))[^/\\\x00-\x1f\x7f-\x9f]" + f"{{1,{MAX_COMPONENT_BYTES}}}"
_PATH = f"{_SEGMENT}(?:/{_SEGMENT})*"
COMPONENT = f"^{_SEGMENT}$"
DIRECTORY = f"^(?:{_PATH})?$"
RELATIVE_PATH = f"^{_PATH}$"
SHA256 = r"^[0-9a-fA-F]{64}$"
MD5 = r"^[0-9a-fA-F]{32}$"


def described(pattern: str, max_length: int, **extra: Any) -> dict[str, Any]:
    """The ``json_schema_extra`` of a field whose rule the server checks itself."""
    return {"pattern": pattern, "maxLength": max_length, **extra}


def component(description: str) -> Any:
    """A required name: one path segment (dataset, filename, uploader, box)."""
    return Field(
        description=f"{description}; at most {MAX_COMPONENT_BYTES} bytes of UTF-8",
        json_schema_extra=described(COMPONENT, MAX_COMPONENT_BYTES),
    )


def optional_component(description: str) -> Any:
    """An optional name: absent, null or '' mean none."""
    return Field(
        default=None,
        description=f"{description}; at most {MAX_COMPONENT_BYTES} bytes of UTF-8, '' for none",
        json_schema_extra=described(f"^$|{COMPONENT}", MAX_COMPONENT_BYTES),
    )


def directory_field() -> Any:
    return Field(
        default="",
        description=(
            "a relative path of segments joined by '/', '' for the top; "
            f"at most {MAX_PATH_BYTES} bytes of UTF-8"
        ),
        json_schema_extra=described(DIRECTORY, MAX_PATH_BYTES),
    )


def sha256_field(default: Any = ...) -> Any:
    return Field(
        default=default,
        description="64 hexadecimal digits",
        json_schema_extra={"pattern": SHA256},
    )


def _json_number(value: object) -> object:
    # What JSON schema calls a number: never true or "5", which pydantic would
    # take as 1 and 5; and 5.0 is an integer, which strict pydantic would refuse.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


Integer = Annotated[int, BeforeValidator(_json_number)]
Number = Annotated[float, BeforeValidator(_json_number)]


class ErrorBody(BaseModel):
    """Every refusal: what went wrong, in one line."""

    detail: str


class InvalidInputBody(ErrorBody):
    """A 400: the value that broke a rule (``files[3].filename``) and the rule."""

    field: str
    rule: str


class DatafileRegister(BaseModel):
    dataset: str = component("the dataset")
    directory: str = directory_field()
    filename: str = component("the file's name")
    size: Integer = Field(ge=0, le=MAX_INT)
    mtime: Number | None = Field(default=None, allow_inf_nan=False)
    experiment: str | None = optional_component("the experiment")
    owner: str | None = optional_component("the user, email or group the data belongs to")
    # The client's sha256 of the file, when it knows it without sending it (its
    # journal, or a hash taken because the server answered "hash"): it lets the
    # server tell a touched file from a changed one.
    sha256: str | None = sha256_field(None)


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
    sha256: str = Field(pattern=SHA256)
    md5: str | None = Field(default=None, pattern=MD5)


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
    id: Integer = Field(ge=1, le=MAX_INT)
    size: Integer = Field(ge=0, le=MAX_INT)
    sha256: str = Field(pattern=SHA256)
    md5: str | None = Field(default=None, pattern=MD5)


class BundleManifest(BaseModel):
    files: list[BundleEntry] = Field(max_length=MAX_BATCH)


class StagedBundle(BaseModel):
    path: str = Field(
        description="the bundle file, relative to the uploader's sftp staging directory",
        json_schema_extra=described(RELATIVE_PATH, MAX_PATH_BYTES),
    )


class BundleResult(BaseModel):
    id: int
    state: str
    error: str | None = None


class BundleAnswer(BaseModel):
    files: list[BundleResult]


class CheckItem(BaseModel):
    """One local file the client asks about: is its latest version stored, identical?"""

    dataset: str = component("the dataset")
    directory: str = directory_field()
    filename: str = component("the file's name")
    experiment: str | None = optional_component("the experiment")
    owner: str | None = optional_component("the user, email or group the data belongs to")
    size: Integer = Field(ge=0, le=MAX_INT)
    sha256: str = sha256_field()


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
