"""stagebox: stage research data, prove every byte arrived, then store it."""

from stagebox.checksums import MultiHasher
from stagebox.config import Settings, load_settings
from stagebox.errors import StageboxError

__version__ = "0.1.0"

__all__ = ["MultiHasher", "Settings", "StageboxError", "__version__", "load_settings"]
