"""One settings model for the server and workers: TOML file + ``STAGEBOX_*`` env.

Precedence, highest first: explicit arguments (the CLI), environment variables,
the TOML file named by ``STAGEBOX_CONFIG`` (or passed as ``config_file``), defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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
    public_url: str | None = Field(
        None, description="base URL clients reach; from the request if unset"
    )
    log_level: str = "info"

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
        config_file = os.environ.get("STAGEBOX_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
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


def load_settings(**overrides: Any) -> Settings:
    """Build settings, dropping ``None`` overrides so env and file still apply."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
