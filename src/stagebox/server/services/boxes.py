"""Storage boxes an admin adds: where bytes are staged or kept, and how uploaders reach them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stagebox.errors import Conflict, InvalidInput, NotFound
from stagebox.names import clean_component, clean_directory
from stagebox.server.db.models import BoxRole, StorageBox

# internal-sftp splits its arguments on whitespace and honours quotes, so a root
# that goes into a forced command must hold none of them.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@%=,:-]*$")
_HOST = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_URL = re.compile(r"^https?://[A-Za-z0-9.:\[\]_-]+(/[^\s]*)?$")
_REGION = re.compile(r"^[a-z0-9-]{2,32}$")
# Linux's PATH_MAX less its NUL, and NAME_MAX: longer cannot be created.
MAX_PATH = 4095
MAX_NAME = 255
# Who serves an sftp box: stagebox itself, behind OpenSSH's sshd or with its own SSH;
# ``openssh`` (sshd's internal-sftp, one staging account for every uploader) only
# for a box added before it was retired, which the server still serves until its
# uploads are done (README: Moving from the OpenSSH staging host).
ENDPOINTS = ("openssh", "sshd", "stagebox")
RETIRED = (
    "openssh (sshd's internal-sftp, one staging account for every uploader) is retired "
    "for new boxes: each uploader could read and overwrite the others' staged files; "
    "use sshd (sshd stays on the wire) or stagebox"
)
# Endpoints where stagebox serves the files (and hashes them as they arrive):
# ``stagebox`` speaks SSH itself, ``sshd`` has OpenSSH's sshd hand it each session.
SERVED = ("stagebox", "sshd")
# Where an ``sshd`` box's session socket is unless --sftp-socket says (systemd's
# RuntimeDirectory=stagebox makes it, owned by the service's account).
SOCKET_DIR = "/run/stagebox"


def _absolute(value: str, field: str) -> str:
    if not value.startswith("/"):
        raise InvalidInput(field, "must be an absolute path", value)
    if not _SAFE_PATH.match(value) or "/../" in value + "/" or "/./" in value + "/":
        raise InvalidInput(
            field,
            "may hold only letters, digits and . _ / + @ % = , : - (no spaces, quotes or '..')",
            value,
        )
    if len(value) > MAX_PATH or any(len(part) > MAX_NAME for part in value.split("/")):
        raise InvalidInput(
            field, f"must be at most {MAX_PATH} bytes, {MAX_NAME} between two slashes", value
        )
    return value.rstrip("/") or "/"


def add_box(
    session: Session,
    name: str,
    *,
    role: str,
    backend: str = "local",
    path: str | None = None,
    sftp_host: str | None = None,
    sftp_port: int | None = None,
    sftp_user: str | None = None,
    sftp_root: str | None = None,
    sftp_endpoint: str | None = None,
    sftp_socket: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> StorageBox:
    """Validate and add a box; every error names the option that broke a rule."""
    name = clean_component(name, "name")
    if role not in BoxRole.__members__:
        raise InvalidInput("role", f"must be one of {', '.join(BoxRole)}", role)
    sftp = {
        "sftp_host": sftp_host,
        "sftp_port": sftp_port,
        "sftp_user": sftp_user,
        "sftp_endpoint": sftp_endpoint,
        "sftp_socket": sftp_socket,
    }
    if backend == "s3":
        if path is not None:
            raise InvalidInput("path", "is for local boxes; an s3 box takes --bucket")
        if sftp_root is not None or any(v is not None for v in sftp.values()):
            raise InvalidInput("backend", "an s3 box cannot take sftp attributes", backend)
        return _add(
            session, name, backend, role, s3_attributes(bucket, prefix, endpoint_url, region)
        )
    if backend != "local":
        raise InvalidInput("backend", "must be 'local' or 's3'", backend)
    if bucket is not None or prefix is not None or endpoint_url is not None:
        raise InvalidInput("backend", "--bucket, --prefix and --endpoint-url are for s3 boxes")
    if not path:
        raise InvalidInput("path", "is required for a local box")
    attributes: dict[str, Any] = {"path": _absolute(path, "path")}
    if sftp_root is not None or any(v is not None for v in sftp.values()):
        if role != BoxRole.staging:
            raise InvalidInput("role", "only a staging box can take sftp attributes", role)
        if not sftp_host or not _HOST.match(sftp_host):
            raise InvalidInput("sftp_host", "must be a host name or address", sftp_host)
        if not sftp_user or not _USER.match(sftp_user):
            raise InvalidInput("sftp_user", "must be a POSIX account name", sftp_user)
        port = 22 if sftp_port is None else sftp_port
        if not 1 <= port <= 65535:
            raise InvalidInput("sftp_port", "must be between 1 and 65535", sftp_port)
        endpoint = sftp_endpoint or "sshd"
        if endpoint == "openssh":
            raise InvalidInput("sftp_endpoint", RETIRED, endpoint)
        if endpoint not in SERVED:
            raise InvalidInput("sftp_endpoint", f"must be one of {', '.join(SERVED)}", endpoint)
        attributes.update(
            sftp_host=sftp_host,
            sftp_port=port,
            sftp_user=sftp_user,
            sftp_root=_absolute(sftp_root or attributes["path"], "sftp_root"),
            sftp_endpoint=endpoint,
        )
        if endpoint == "sshd":
            attributes["sftp_socket"] = _absolute(
                sftp_socket or f"{SOCKET_DIR}/{name}.sock", "sftp_socket"
            )
        elif sftp_socket is not None:
            raise InvalidInput("sftp_socket", "is for --sftp-endpoint sshd", sftp_socket)
    try:
        Path(attributes["path"]).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput("path", f"cannot be created ({exc.strerror})", path) from None
    return _add(session, name, backend, role, attributes)


def _add(
    session: Session, name: str, backend: str, role: str, attributes: dict[str, Any]
) -> StorageBox:
    if session.scalar(select(StorageBox).where(StorageBox.name == name)) is not None:
        raise Conflict(f"a box named {name!r} already exists")
    box = StorageBox(name=name, backend=backend, role=role, attributes=attributes)
    session.add(box)
    session.flush()
    return box


def s3_attributes(
    bucket: str | None, prefix: str | None, endpoint_url: str | None, region: str | None
) -> dict[str, Any]:
    """An s3 box's attributes, each checked; credentials come from the AWS chain."""
    if not bucket or not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidInput(
            "bucket", "must be 3-63 lowercase letters, digits, '.' or '-' (S3 bucket rules)", bucket
        )
    clean_prefix = clean_directory(prefix, "prefix") if prefix else ""
    if endpoint_url is not None and not _URL.match(endpoint_url):
        raise InvalidInput("endpoint_url", "must be an http:// or https:// URL", endpoint_url)
    if region is not None and not _REGION.match(region):
        raise InvalidInput("region", "must look like us-east-1", region)
    return {
        "bucket": bucket,
        "prefix": clean_prefix,
        "endpoint_url": endpoint_url,
        "region": region,
    }


def get_box(session: Session, name: str) -> StorageBox:
    box = session.scalar(select(StorageBox).where(StorageBox.name == name))
    if box is None:
        raise NotFound(f"no box named {name!r}")
    return box


def list_boxes(session: Session) -> list[StorageBox]:
    return list(session.scalars(select(StorageBox).order_by(StorageBox.id)))


def is_sftp(box: StorageBox) -> bool:
    return bool(box.attributes.get("sftp_host"))


def hashes_on_write(attributes: dict[str, Any]) -> bool:
    """Served by stagebox's own endpoint: it records a file staged, with its digests,
    once the file is whole; nobody else may decide that by looking at the disk."""
    return attributes.get("sftp_endpoint") in SERVED


def public(box: StorageBox) -> dict[str, Any]:
    return {"name": box.name, "role": box.role, "backend": box.backend, **box.attributes}
