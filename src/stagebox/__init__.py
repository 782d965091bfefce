"""stagebox: stage research data, prove every byte arrived, then store it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stagebox.checksums import MultiHasher
from stagebox.errors import StageboxError

if TYPE_CHECKING:
    from stagebox.config import Settings, load_settings

__version__ = "0.1.0"

__all__ = ["MultiHasher", "Settings", "StageboxError", "__version__", "load_settings"]


def __getattr__(name: str) -> Any:
    # Settings pull in pydantic-settings; the upload client does not need them.
    if name in ("Settings", "load_settings"):
        from stagebox import config

        return getattr(config, name)
    raise AttributeError(f"module 'stagebox' has no attribute {name!r}")
