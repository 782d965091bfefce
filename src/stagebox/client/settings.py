"""The client's settings: which server, which token, how a tree is laid out.

An instrument PC should run ``stagebox upload /data`` and nothing more, so every
client command takes these from, highest first: its flag, ``STAGEBOX_<NAME>``,
the client config file (``stagebox config set NAME VALUE``), the default.

The file is ``client.toml`` in the client's config dir (``STAGEBOX_CONFIG_DIR``
overrides it), beside the SSH key. It may hold a token, so it is written with
mode 0600 and replaced atomically.
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagebox.client.identity import config_dir
from stagebox.errors import ConfigError


@dataclass(frozen=True)
class Key:
    """One client setting: its name in the file, its flag, and what it means."""

    name: str
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return f"STAGEBOX_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return f"--{self.name.replace('_', '-')}"


KEYS = {
    key.name: key
    for key in (
        Key("server", "server URL, e.g. https://stagebox.example.org"),
        Key("token", "API token", secret=True),
        Key("structure", "folder structure of the trees this machine uploads"),
        Key("method", "auto | sftp | http"),
        Key("cacert", "CA bundle to trust for TLS"),
        Key("ssh", "SSH client for sftp: auto (OpenSSH's ssh if on PATH) | openssh | asyncssh"),
    )
}


def config_file() -> Path:
    return config_dir() / "client.toml"


def read_file(path: Path | None = None) -> dict[str, str]:
    """The config file's settings; an absent file is an empty one. Read once per
    process: a command resolves several settings from it."""
    return dict(_read(path or config_file()))


@functools.cache
def _read(path: Path) -> dict[str, str]:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for name, value in data.items():
        if name not in KEYS:
            raise ConfigError(f"{path}: unknown setting {name!r} (known: {', '.join(KEYS)})")
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {name} must be a string")
    return data


def write_file(values: dict[str, str], path: Path | None = None) -> Path:
    """Replace the file with ``values``, mode 0600 from the first byte."""
    path = path or config_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = "".join(f"{name} = {_toml_string(value)}\n" for name, value in sorted(values.items()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _read.cache_clear()
    return path


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def resolve(name: str, flag: str | None) -> str | None:
    """The setting's value by precedence: flag, environment, config file."""
    if flag is not None:
        return flag
    from_env = os.environ.get(KEYS[name].env)
    if from_env:
        return from_env
    return read_file().get(name)


def source(name: str, flag: str | None) -> str:
    """Where :func:`resolve` found the value, for messages."""
    if flag is not None:
        return KEYS[name].flag
    if os.environ.get(KEYS[name].env):
        return KEYS[name].env
    if name in read_file():
        return str(config_file())
    return "the default"


def required(name: str, flag: str | None) -> str:
    """A setting that must be given somewhere; says every way to give it."""
    value = resolve(name, flag)
    if not value:
        key = KEYS[name]
        raise ConfigError(
            f"no {name}: pass {key.flag}, set {key.env}, "
            f"or run: stagebox config set {name} {name.upper()}"
        )
    return value


def server_url(flag: str | None) -> str:
    """The server's URL, refused at once unless it is an http(s) URL with a host."""
    from urllib.parse import urlsplit

    url = required("server", flag)
    origin = source("server", flag)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"server {url!r} (from {origin}): {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"server {url!r} (from {origin}): must be http://HOST[:PORT] or https://HOST[:PORT]"
        )
    return url.rstrip("/")
