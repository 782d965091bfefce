"""Uploaders and their API tokens. Tokens are stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stagebox.errors import AuthError, Conflict, InvalidInput, NotFound
from stagebox.names import clean_component
from stagebox.server.db.models import AdminToken, ApiToken, Uploader, utcnow

TOKEN_PREFIX = "sbx_"
ADMIN_PREFIX = "sbxa_"


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a fast hash is as good as a slow one here.
    return hashlib.sha256(token.encode()).hexdigest()


def add_uploader(session: Session, name: str) -> tuple[Uploader, str]:
    """Create an uploader and return it with its first token (shown once)."""
    name = clean_component(name, "name")
    if session.scalar(select(Uploader).where(Uploader.name == name)) is not None:
        raise Conflict(f"an uploader named {name!r} already exists")
    uploader = Uploader(uuid=str(uuid.uuid4()), name=name)
    session.add(uploader)
    session.flush()
    return uploader, issue_token(session, uploader)


def issue_token(session: Session, uploader: Uploader) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(uploader_id=uploader.id, token_hash=hash_token(token), hint=token[:8]))
    return token


def get_uploader(session: Session, name: str) -> Uploader:
    uploader = session.scalar(select(Uploader).where(Uploader.name == name))
    if uploader is None:
        raise NotFound(f"no uploader named {name!r}")
    return uploader


def revoke_uploader(session: Session, name: str) -> Uploader:
    """Revoke the uploader, every token it holds and every key it registered."""
    from stagebox.server.services.registrations import revoke_keys

    uploader = get_uploader(session, name)
    now = utcnow()
    uploader.revoked_at = uploader.revoked_at or now
    for token in uploader.tokens:
        token.revoked_at = token.revoked_at or now
    revoke_keys(session, uploader)
    return uploader


# The longest value of each machine field an uploader may describe.
MACHINE_LIMITS = {"hostname": 255, "os": 255, "mac_address": 64, "client_version": 64}


def _describe(value: str, field: str) -> str:
    """The value stripped; the rule is checked on the value as sent, as described."""
    value = value or ""
    limit = MACHINE_LIMITS[field]
    if len(value) > limit or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidInput(field, f"must be at most {limit} printable characters", value)
    return value.strip()


def describe(
    session: Session,
    uploader: Uploader,
    *,
    hostname: str,
    os: str,
    mac_address: str,
    client_version: str,
) -> Uploader:
    """Record the machine an uploader runs on (what an admin sees before approving)."""
    uploader.hostname = _describe(hostname, "hostname")
    uploader.os = _describe(os, "os")
    uploader.mac_address = _describe(mac_address, "mac_address")
    uploader.client_version = _describe(client_version, "client_version")
    session.flush()
    return uploader


def machine(uploader: Uploader) -> dict[str, Any]:
    """Who an uploader is and the machine it described (its own view of itself)."""
    return {
        "uuid": uploader.uuid,
        "name": uploader.name,
        "hostname": uploader.hostname,
        "os": uploader.os,
        "mac_address": uploader.mac_address,
        "client_version": uploader.client_version,
    }


def public(uploader: Uploader) -> dict[str, Any]:
    """The admin's view: the machine, plus state and live token count."""
    return {
        **machine(uploader),
        "state": "revoked" if uploader.revoked_at else "active",
        "tokens": sum(1 for t in uploader.tokens if t.revoked_at is None),
        "created_at": uploader.created_at.isoformat(),
    }


def add_admin_token(session: Session, name: str) -> str:
    """A new admin API token (shown once); ``name`` says who holds it."""
    name = clean_component(name, "name")
    token = ADMIN_PREFIX + secrets.token_urlsafe(32)
    session.add(AdminToken(name=name, token_hash=hash_token(token), hint=token[:9]))
    return token


def authenticate_admin(session: Session, token: str) -> AdminToken:
    row = session.scalar(select(AdminToken).where(AdminToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        raise AuthError("unknown or revoked admin token")
    return row


def list_uploaders(session: Session) -> list[Uploader]:
    return list(session.scalars(select(Uploader).order_by(Uploader.id)))


def authenticate(session: Session, token: str) -> Uploader:
    """The uploader a bearer token belongs to; AuthError if unknown or revoked."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None or row.uploader.revoked_at is not None:
        raise AuthError("unknown or revoked token")
    return row.uploader
