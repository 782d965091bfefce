"""One settings model for the server and workers: TOML file + ``STAGEBOX_*`` env.

Precedence, highest first: explicit arguments (the CLI's flags), environment
variables, the TOML file named by ``STAGEBOX_CONFIG``, defaults. Every command
that reads settings goes through :func:`load_settings`, so a bad file, an
unknown setting or a bad value is one :class:`~stagebox.errors.ConfigError`
naming the setting and where it came from, never a traceback.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stagebox.errors import ConfigError


class Settings(BaseSettings):
    """Server settings. Every field may be set as ``STAGEBOX_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="STAGEBOX_", extra="forbid")

    data_dir: Path = Field(Path("./stagebox-data"), description="catalog and embedded boxes")
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; SQLite in data_dir if unset"
    )
    staging_dir: Path | None = Field(None, description="embedded staging box; data_dir/staging")
    store_dir: Path | None = Field(None, description="embedded permanent box; data_dir/store")
    staging_box: str | None = Field(
        None, description="name of the staging box http uploads land in; the embedded one if unset"
    )
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    md5: bool = Field(False, description="also compute md5 (MyTardis compatibility)")
    durable: bool = Field(True, description="fsync promoted bytes before recording them")
    direct_io: bool = Field(True, description="large uploads bypass the page cache (O_DIRECT)")
    task_workers: int = Field(4, ge=1, le=64)
    sweep_interval: float = Field(30.0, gt=0, description="seconds between sweeps of stuck work")
    stale_after: float = Field(300.0, gt=0, description="seconds before idle work counts as stuck")
    upload_expiry_hours: float = Field(24.0 * 7, gt=0, description="tus Upload-Expires horizon")
    max_bundle_bytes: int = Field(64 << 20, gt=0, description="largest small-file bundle body")
    s3_part_size: int = Field(16 << 20, ge=5 << 20, description="multipart part size for s3 boxes")
    s3_request_checksum_calculation: Literal["when_supported", "when_required"] = Field(
        "when_supported", description="'when_required' for S3-compatible stores that reject them"
    )
    ingest_retries: int = Field(3, ge=0, le=20, description="retries of a failed ingest attempt")
    ingest_backoff: float = Field(
        10.0, ge=0, description="seconds before the first retry; doubled for each one after"
    )
    ingest_lease: float = Field(
        300.0, gt=0, description="seconds a worker holds a job between checkpoints"
    )
    audit_enabled: bool = Field(True, description="run fixity audits in the background")
    audit_interval_days: float = Field(
        90.0, gt=0, description="days between fixity audits of each stored object"
    )
    audit_max_mb_s: float = Field(
        25.0, ge=0, description="MB/s the background audit may read (0: no limit)"
    )
    audit_check_interval: float = Field(
        3600.0, gt=0, description="seconds between looks for objects due an audit"
    )
    sftp_port: int | None = Field(
        None, ge=1, le=65535, description="the built-in SFTP/SCP endpoint's port; off if unset"
    )
    sftp_host: str | None = Field(None, description="address the endpoint listens on; host's")
    sftp_sessions: bool = Field(
        False, description="serve the sessions sshd hands over on an sshd box's socket"
    )
    sftp_box: str | None = Field(
        None, description="the sftp staging box the endpoint serves; the only one if unset"
    )
    sftp_login_timeout: float = Field(
        30.0, gt=0, description="seconds a connection may take to authenticate"
    )
    sftp_idle_timeout: float = Field(
        900.0, gt=0, description="seconds a session may send nothing before it is closed"
    )
    sftp_max_connections: int = Field(
        16, ge=1, le=1024, description="connections one uploader may hold at once"
    )
    sftp_max_open_files: int = Field(
        64, ge=1, le=4096, description="files one session may hold open"
    )
    public_url: str | None = Field(
        None, description="base URL clients reach; from the request if unset"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable_file(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = config_path()
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return ("sha256", "md5") if self.md5 else ("sha256",)

    @property
    def catalog_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'catalog.db'}"

    @property
    def staging_path(self) -> Path:
        return self.staging_dir or self.data_dir / "staging"

    @property
    def store_path(self) -> Path:
        return self.store_dir or self.data_dir / "store"


def config_path() -> Path | None:
    """The TOML file ``STAGEBOX_CONFIG`` names, if any."""
    named = os.environ.get("STAGEBOX_CONFIG")
    return Path(named) if named else None


def load_settings(**overrides: Any) -> Settings:
    """Build settings, dropping ``None`` overrides so env and file still apply.

    Raises :class:`ConfigError` for a missing or malformed file, an unknown
    setting or a value that breaks its rule.
    """
    flags = {k: v for k, v in overrides.items() if v is not None}
    file_values = _read_config_file()
    try:
        return Settings(**flags)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        where = setting_source(name, flags, file_values)
        if error["type"] == "extra_forbidden":
            raise ConfigError(f"{where}: unknown setting {name!r}") from None
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"setting {name} (from {where}): {message}") from None


def _read_config_file() -> dict[str, Any]:
    path = config_path()
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"STAGEBOX_CONFIG names {path}, which does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} (STAGEBOX_CONFIG): cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} (STAGEBOX_CONFIG): not valid TOML ({exc})") from None


def setting_source(name: str, flags: dict[str, Any], file_values: dict[str, Any]) -> str:
    """Where setting ``name`` came from: its flag, its variable, the file, or the default."""
    if name in flags:
        return "--" + name.replace("_", "-")
    env = f"STAGEBOX_{name.upper()}"
    if env in os.environ:
        return env
    if name in file_values:
        return str(config_path())
    return "the default"


def setting_origin(name: str, **overrides: Any) -> str:
    """:func:`setting_source` for a caller holding only the flags it was given."""
    flags = {k: v for k, v in overrides.items() if v is not None}
    return setting_source(name, flags, _read_config_file())


def open_data_dir(settings: Settings, origin: Callable[[], str], init: bool = False) -> Settings:
    """Refuse a data dir that does not exist yet, unless ``init`` says to create it.

    A mistyped or forgotten ``--data-dir`` would otherwise make a fresh, empty
    catalog: tokens issued there are refused by the real server, and a server
    started there serves nobody's data.
    """
    data_dir = settings.data_dir.expanduser().absolute()
    catalog = data_dir / "catalog.db"
    exists = data_dir.is_dir() and (settings.database_url is not None or catalog.exists())
    if exists:
        return settings
    if not init:
        raise ConfigError(
            f"no stagebox data dir at {data_dir} (data_dir from {origin()}): point --data-dir, "
            f"STAGEBOX_DATA_DIR or the config file at the server's, or create one with: "
            f"stagebox admin --data-dir {data_dir} init"
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data dir {data_dir}: {exc.strerror}") from None
    return settings


def server_settings(init: bool = False, **flags: Any) -> Settings:
    """Settings for a command that works on the server's data dir (serve, admin, ingest)."""
    settings = load_settings(**flags)
    # Where data_dir came from is worked out only for the message that needs it.
    return open_data_dir(settings, lambda: setting_origin("data_dir", **flags), init)
