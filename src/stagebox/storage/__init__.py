"""Server-side storage boxes: the contract and its backends."""

from stagebox.storage.base import ObjectInfo, PromoteResult, StagedWriter, StorageBackend
from stagebox.storage.local import LocalBackend

__all__ = ["LocalBackend", "ObjectInfo", "PromoteResult", "StagedWriter", "StorageBackend"]
