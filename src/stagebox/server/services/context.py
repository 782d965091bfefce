"""What every service needs: settings, the catalog, the boxes and the task runner."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from stagebox.checksums import MultiHasher
from stagebox.config import Settings
from stagebox.errors import ConfigError
from stagebox.server.db.models import BoxRole, StorageBox
from stagebox.server.db.session import Catalog
from stagebox.storage import LocalBackend, StorageBackend
from stagebox.tasks.runner import TaskRunner

STAGING_BOX = "staging"
STORE_BOX = "store"


def backend_for(box: StorageBox, settings: Settings) -> StorageBackend:
    """Instantiate the backend a catalog box row describes."""
    if box.backend == "local":
        return LocalBackend(
            box.name,
            box.attributes["path"],
            durable=settings.durable,
            direct_io=settings.direct_io,
            # An sftp staging root is shared with the staging account's group.
            dir_mode=0o2770 if box.attributes.get("sftp_host") else None,
        )
    if box.backend == "s3":
        from stagebox.storage.s3 import S3Backend

        attrs = box.attributes
        return S3Backend(
            box.name,
            attrs["bucket"],
            prefix=attrs.get("prefix") or "",
            endpoint_url=attrs.get("endpoint_url"),
            region=attrs.get("region"),
            part_size=settings.s3_part_size,
            checksums_when_required=settings.s3_request_checksum_calculation == "when_required",
        )
    raise NotImplementedError(f"box {box.name}: backend {box.backend!r} is not available")


@dataclass
class UploadState:
    """In-memory state of one resumable upload: a lock and the running hash."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    hasher: MultiHasher | None = None


@dataclass
class ServerContext:
    settings: Settings
    catalog: Catalog
    runner: TaskRunner
    _backends: dict[int, StorageBackend] = field(default_factory=dict)
    _uploads: dict[str, UploadState] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    staging_box_id: int = 0
    store_box_id: int = 0

    def ensure_embedded_boxes(self) -> None:
        """Create the embedded staging and permanent boxes on first start; with
        ``staging_box`` set, http uploads are staged in that box instead."""
        wanted = {
            STAGING_BOX: (BoxRole.staging, self.settings.staging_path),
            STORE_BOX: (BoxRole.permanent, self.settings.store_path),
        }
        with self.catalog.session() as s:
            for name, (role, path) in wanted.items():
                box = s.scalar(select(StorageBox).where(StorageBox.name == name))
                if box is None:
                    box = StorageBox(
                        name=name, backend="local", role=role, attributes={"path": str(path)}
                    )
                    s.add(box)
                    s.flush()
                if name == STAGING_BOX:
                    self.staging_box_id = box.id
                else:
                    self.store_box_id = box.id
            if self.settings.staging_box:
                self.staging_box_id = self._configured_staging_box(s, self.settings.staging_box)

    @staticmethod
    def _configured_staging_box(session: Session, name: str) -> int:
        """The box ``staging_box`` names: an admin-added box with the staging role."""
        box = session.scalar(select(StorageBox).where(StorageBox.name == name))
        if box is None or box.role != BoxRole.staging:
            raise ConfigError(
                f"staging_box {name!r}: no staging box of that name; add it with "
                f"'stagebox admin box add {name} --role staging ...'"
            )
        return box.id

    def backend(self, box_id: int) -> StorageBackend:
        with self._guard:
            backend = self._backends.get(box_id)
            if backend is None:
                with self.catalog.session() as s:
                    box = s.get(StorageBox, box_id)
                    if box is None:
                        raise KeyError(f"no storage box {box_id}")
                    backend = backend_for(box, self.settings)
                self._backends[box_id] = backend
            return backend

    @property
    def staging(self) -> StorageBackend:
        return self.backend(self.staging_box_id)

    @property
    def store(self) -> StorageBackend:
        return self.backend(self.store_box_id)

    def upload_state(self, token: str) -> UploadState:
        with self._guard:
            return self._uploads.setdefault(token, UploadState())

    def forget_upload(self, token: str) -> None:
        with self._guard:
            self._uploads.pop(token, None)
