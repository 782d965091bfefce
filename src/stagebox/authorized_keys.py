"""authorized_keys lines for approved SFTP keys, and the fast path sshd calls.

sshd runs ``stagebox admin --data-dir D authorized-keys USER`` (its
AuthorizedKeysCommand) at every connection. Loading the whole CLI and ORM for
that costs most of a second of CPU per connection, so :func:`fast_path` answers
it from the SQLite catalog with the standard library alone. Anything it does not
recognise (another database, an uncommon invocation, an unmigrated catalog)
falls through to the full command, which gives the same lines.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import sys
from pathlib import Path
from typing import Any

from stagebox.errors import ConfigError

APPROVED = """
SELECT b.attributes, u.uuid, r.public_key, u.name, r.id
FROM registration_requests r
JOIN uploaders u ON u.id = r.uploader_id
JOIN storage_boxes b ON b.id = r.box_id
WHERE r.state = 'approved' AND u.revoked_at IS NULL
ORDER BY r.id
"""


def line(
    attrs: dict[str, Any], uploader_uuid: str, public_key: str, name: str, request_id: int
) -> str | None:
    """One key of a box sshd serves, restricted and forced: on an ``sshd`` box to
    stagebox's session relay (the uploader's own root, hashed on write), on an
    ``openssh`` box to internal-sftp starting in the uploader's directory. None
    for a box sshd does not serve."""
    endpoint = attrs.get("sftp_endpoint", "openssh")
    if endpoint == "sshd":
        # The relay is standard library only: any Python 3.10+ the staging account may
        # run will do (STAGEBOX_RELAY_PYTHON), without reading stagebox's install.
        python = os.environ.get("STAGEBOX_RELAY_PYTHON") or sys.executable
        if any(c in python for c in "\r\n\0"):
            raise ConfigError("STAGEBOX_RELAY_PYTHON: a path cannot hold a line break or a NUL")
        relay = Path(__file__).with_name("sftpd") / "relay.py"
        argv = (python, "-I", "-S", str(relay), "--socket", attrs["sftp_socket"], str(request_id))
        command = " ".join(shlex.quote(part) for part in argv)
    elif endpoint == "openssh":
        command = f"internal-sftp -d {attrs['sftp_root']}/{uploader_uuid}"
    else:
        return None
    quoted = command.replace('"', '\\"')  # sshd's only escape inside an option's quotes
    return f'restrict,command="{quoted}" {public_key} stagebox:{name}:{request_id}'


def _parse(argv: list[str]) -> tuple[str, str] | None:
    """``(data_dir, user)`` for ``admin --data-dir D authorized-keys USER``, else None."""
    if len(argv) < 3 or argv[0] != "admin":
        return None
    rest = argv[1:]
    data_dir = os.environ.get("STAGEBOX_DATA_DIR", "")
    if rest[0].startswith("--data-dir="):
        data_dir, rest = rest[0].split("=", 1)[1], rest[1:]
    elif rest[0] == "--data-dir" and len(rest) > 1:
        data_dir, rest = rest[1], rest[2:]
    if len(rest) != 2 or rest[0] != "authorized-keys" or rest[1].startswith("-") or not data_dir:
        return None
    return data_dir, rest[1]


def fast_path(argv: list[str]) -> bool:
    """Print the lines for sshd and return True, or return False to run the full CLI."""
    parsed = _parse(argv)
    if (
        parsed is None
        or os.environ.get("STAGEBOX_CONFIG")
        or os.environ.get("STAGEBOX_DATABASE_URL")
    ):
        return False
    data_dir, user = parsed
    catalog = Path(data_dir) / "catalog.db"
    if not catalog.is_file():
        return False
    try:
        conn = sqlite3.connect(catalog, timeout=30)
        try:
            rows = conn.execute(APPROVED).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    out = []
    for attributes, uploader_uuid, public_key, name, request_id in rows:
        attrs = json.loads(attributes)
        if attrs.get("sftp_user") == user and attrs.get("sftp_root"):
            try:
                text = line(attrs, uploader_uuid, public_key, name, request_id)
            except ConfigError:
                return False  # the full command says what is wrong, in one line
            if text is not None:
                out.append(text + "\n")
    sys.stdout.write("".join(out))
    sys.stdout.flush()
    return True
