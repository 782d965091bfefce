"""This installation's identity: its SSH key, its machine, what each server knows of it.

Everything lives under the user's config dir (``STAGEBOX_CONFIG_DIR`` overrides
it): ``ssh/id_ed25519`` (mode 0600) and its ``.pub``, ``known_hosts`` for
staging hosts, and ``servers/<server>.json`` with the uploader uuid and the
registration request each server gave.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import uuid
from pathlib import Path
from typing import Any

from platformdirs import user_config_dir

from stagebox import __version__


def config_dir() -> Path:
    return Path(os.environ.get("STAGEBOX_CONFIG_DIR") or user_config_dir("stagebox"))


def key_path() -> Path:
    return config_dir() / "ssh" / "id_ed25519"


def known_hosts_path() -> Path:
    return config_dir() / "known_hosts"


def ensure_key() -> tuple[Path, str]:
    """The private key's path and the public key line, generating the pair once."""
    import asyncssh

    path = key_path()
    pub = path.with_name(path.name + ".pub")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"stagebox@{hostname()}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        pub.write_bytes(key.export_public_key())
    elif not pub.exists():
        pub.write_bytes(asyncssh.read_private_key(str(path)).export_public_key())
    return path, pub.read_text().strip()


def hostname() -> str:
    return socket.gethostname()


def mac_address() -> str:
    """MAC of the interface the default route leaves by (Linux), else the node id."""
    try:
        with open("/proc/net/route") as routes:
            for line in routes.readlines()[1:]:
                fields = line.split()
                if len(fields) > 1 and fields[1] == "00000000":
                    address = Path(f"/sys/class/net/{fields[0]}/address").read_text().strip()
                    if address and address != "00:00:00:00:00:00":
                        return address
    except OSError:
        pass
    node = uuid.getnode()
    return ":".join(f"{(node >> shift) & 0xFF:02x}" for shift in range(40, -1, -8))


def machine() -> dict[str, str]:
    return {
        "hostname": hostname(),
        "os": platform.platform(),
        "mac_address": mac_address(),
        "client_version": __version__,
    }


def _server_file(server: str) -> Path:
    slug = hashlib.sha256(server.rstrip("/").encode()).hexdigest()[:16]
    return config_dir() / "servers" / f"{slug}.json"


def load_server(server: str) -> dict[str, Any]:
    path = _server_file(server)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def save_server(server: str, data: dict[str, Any]) -> None:
    path = _server_file(server)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"server": server.rstrip("/"), **data}, indent=2))
    tmp.replace(path)
