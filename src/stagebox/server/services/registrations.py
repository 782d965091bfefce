"""Registration requests: an uploader asks to stage over SFTP with a key; an admin decides.

Approved keys become ``authorized_keys`` lines, each restricted to the SFTP
server and started in that uploader's own staging directory. sshd reads them
through ``stagebox admin authorized-keys USER`` (its AuthorizedKeysCommand), so
an approval or a revocation takes effect at the next connection.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from stagebox.authorized_keys import line
from stagebox.errors import Conflict, Forbidden, InvalidInput, NotFound
from stagebox.server.db.models import (
    BoxRole,
    RegistrationRequest,
    RequestState,
    StorageBox,
    Uploader,
    utcnow,
)
from stagebox.server.services import boxes

log = logging.getLogger(__name__)
R = RequestState
# Algorithms a request may use; DSA and short RSA keys are refused.
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
MIN_RSA_BITS = 2048
STAGING_DIR_MODE = 0o2770


def parse_public_key(text: str) -> tuple[str, str]:
    """``(canonical "TYPE BASE64" line, SHA256 fingerprint)``, or 400 naming the rule."""
    import asyncssh  # only the server's registration path needs it

    line = text.strip() if isinstance(text, str) else ""
    if not line or "\n" in line or len(line) > 16384:
        raise InvalidInput("public_key", "must be one line in OpenSSH format (TYPE BASE64)")
    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidInput("public_key", f"is not a valid OpenSSH public key ({exc})") from None
    algorithm = key.get_algorithm()
    if algorithm not in KEY_TYPES:
        raise InvalidInput("public_key", f"must be one of {', '.join(KEY_TYPES)}", algorithm)
    if algorithm == "ssh-rsa":
        bits = getattr(key.pyca_key, "key_size", 0)
        if bits < MIN_RSA_BITS:
            raise InvalidInput("public_key", f"an RSA key must have at least {MIN_RSA_BITS} bits")
    canonical = key.export_public_key("openssh").decode().split()[:2]
    return " ".join(canonical), key.get_fingerprint("sha256")


def file_request(session: Session, uploader: Uploader, public_key: str) -> RegistrationRequest:
    """File a request, or return the one this key already has (whatever its state)."""
    line, fingerprint = parse_public_key(public_key)
    found = session.scalar(
        select(RegistrationRequest).where(
            RegistrationRequest.uploader_id == uploader.id,
            RegistrationRequest.fingerprint == fingerprint,
        )
    )
    if found is not None:
        return found
    request = RegistrationRequest(
        uploader_id=uploader.id, public_key=line, fingerprint=fingerprint, state=R.pending
    )
    session.add(request)
    session.flush()
    return request


def get_request(session: Session, request_id: int) -> RegistrationRequest:
    request = session.get(
        RegistrationRequest,
        request_id,
        options=[joinedload(RegistrationRequest.uploader), joinedload(RegistrationRequest.box)],
    )
    if request is None:
        raise NotFound(f"no registration request {request_id}")
    return request


def list_requests(
    session: Session, *, uploader: Uploader | None = None, state: str | None = None
) -> list[RegistrationRequest]:
    query = (
        select(RegistrationRequest)
        .options(joinedload(RegistrationRequest.uploader), joinedload(RegistrationRequest.box))
        .order_by(RegistrationRequest.id)
    )
    if uploader is not None:
        query = query.where(RegistrationRequest.uploader_id == uploader.id)
    if state is not None:
        if state not in R.__members__:
            raise InvalidInput("state", f"must be one of {', '.join(R)}", state)
        query = query.where(RegistrationRequest.state == state)
    return list(session.scalars(query))


def approve(session: Session, request_id: int, box_name: str) -> RegistrationRequest:
    """Approve a pending (or earlier rejected) request and assign its staging box."""
    request = get_request(session, request_id)
    box = boxes.get_box(session, box_name)
    if box.role != BoxRole.staging or not boxes.is_sftp(box):
        raise InvalidInput(
            "box", "must be a staging box with sftp attributes (admin box add --sftp-host ...)"
        )
    if request.uploader.revoked_at is not None:
        raise Conflict(f"uploader {request.uploader.name!r} is revoked")
    if request.state == R.revoked:
        raise Conflict(f"request {request_id} was revoked; the uploader must register again")
    request.state = R.approved
    request.box_id = box.id
    request.reason = None
    request.decided_at = utcnow()
    session.flush()
    _prepare_staging_dir(box, request.uploader)
    return request


def _prepare_staging_dir(box: StorageBox, uploader: Uploader) -> None:
    """Create the uploader's own staging directory (2770) so its first login lands there."""
    path = Path(box.attributes["path"]) / uploader.uuid
    try:
        path.mkdir(mode=STAGING_DIR_MODE, exist_ok=True)
        os.chmod(path, STAGING_DIR_MODE)
    except OSError as exc:  # the client creates it on first upload anyway
        log.warning("could not prepare %s: %s", path, exc.strerror)


def reject(session: Session, request_id: int, reason: str) -> RegistrationRequest:
    """Reject a request (an approved one stops working at the next connection)."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("reason", "must say why the request is rejected")
    request = get_request(session, request_id)
    if request.state == R.revoked:
        raise Conflict(f"request {request_id} was already revoked")
    request.state = R.rejected
    request.reason = reason
    request.decided_at = utcnow()
    return request


def revoke_keys(session: Session, uploader: Uploader) -> int:
    """Revoke every pending or approved request of ``uploader``; returns how many."""
    now = utcnow()
    count = 0
    for request in list_requests(session, uploader=uploader):
        if request.state in (R.pending, R.approved):
            request.state = R.revoked
            request.reason = "uploader revoked"
            request.decided_at = now
            count += 1
    return count


def approved_box(session: Session, uploader: Uploader) -> StorageBox:
    """The staging box of the uploader's newest approved request; 403 saying why not."""
    requests = list_requests(session, uploader=uploader)
    for request in reversed(requests):
        if request.state == R.approved and request.box is not None:
            return request.box
    raise Forbidden(sftp_refusal(requests))


def sftp_refusal(requests: list[RegistrationRequest]) -> str:
    if not requests:
        return "sftp is not approved for this uploader: no registration request (stagebox register)"
    last = requests[-1]
    why = f"request {last.id} is {last.state}"
    if last.reason:
        why += f" ({last.reason})"
    return f"sftp is not approved for this uploader: {why}"


def authorized_keys(
    session: Session, *, box: str | None = None, user: str | None = None
) -> list[str]:
    """One ``authorized_keys`` line per approved key, for one box or one staging account."""
    lines = []
    for request in list_requests(session, state=R.approved):
        target = request.box
        if target is None or request.uploader.revoked_at is not None:
            continue
        if box is not None and target.name != box:
            continue
        if user is not None and target.attributes.get("sftp_user") != user:
            continue
        text = line(
            target.attributes,
            request.uploader.uuid,
            request.public_key,
            request.uploader.name,
            request.id,
        )
        if text is not None:
            lines.append(text)
    return lines


def public(request: RegistrationRequest) -> dict[str, Any]:
    box = request.box
    return {
        "id": request.id,
        "uploader": request.uploader.name,
        "uploader_uuid": request.uploader.uuid,
        "fingerprint": request.fingerprint,
        "state": request.state,
        "reason": request.reason,
        "box": box.name if box is not None else None,
        "sftp": (
            {
                "host": box.attributes["sftp_host"],
                "port": box.attributes["sftp_port"],
                "user": box.attributes["sftp_user"],
                "root": f"{box.attributes['sftp_root']}/{request.uploader.uuid}",
                "endpoint": box.attributes.get("sftp_endpoint", "openssh"),
                "host_key": box.attributes.get("sftp_host_key"),
            }
            if box is not None and request.state == R.approved and boxes.is_sftp(box)
            else None
        ),
        "created_at": request.created_at.isoformat(),
        "decided_at": request.decided_at.isoformat() if request.decided_at else None,
    }
