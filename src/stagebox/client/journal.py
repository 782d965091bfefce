"""The client's journal: what one server already verified, and open uploads.

One SQLite file per server URL under the user's state dir (``STAGEBOX_STATE_DIR``
overrides it). A file whose path, size and mtime match a verified row is not
read again on a rescan.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from platformdirs import user_state_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS verified (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    datafile_id INTEGER,
    verified_at REAL DEFAULT (julianday('now'))
);
CREATE TABLE IF NOT EXISTS uploads (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    datafile_id INTEGER NOT NULL,
    upload_url TEXT NOT NULL
);
"""


def state_dir() -> Path:
    return Path(os.environ.get("STAGEBOX_STATE_DIR") or user_state_dir("stagebox"))


def journal_path(server: str) -> Path:
    digest = hashlib.sha256(server.rstrip("/").encode()).hexdigest()[:16]
    return state_dir() / f"journal-{digest}.db"


class Journal:
    """Thread-safe; every write is its own small transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @classmethod
    def for_server(cls, server: str) -> Journal:
        return cls(journal_path(server))

    def is_verified(self, path: Path, size: int, mtime_ns: int) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns FROM verified WHERE path = ?", (str(path),)
            ).fetchone()
        return row is not None and tuple(row) == (size, mtime_ns)

    def verified_among(self, paths: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) of those of ``paths`` that are verified: one query per batch."""
        found: dict[str, tuple[int, int]] = {}
        with self._lock:
            for start in range(0, len(paths), 500):
                chunk = paths[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT path, size, mtime_ns FROM verified WHERE path IN ({marks})", chunk
                ).fetchall()
                found.update((path, (size, mtime)) for path, size, mtime in rows)
        return found

    def record_verified(
        self, items: Sequence[tuple[Path, int, int, str | None, int | None]]
    ) -> None:
        """Rows of (path, size, mtime_ns, sha256, datafile_id); clears open uploads."""
        if not items:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO verified (path, size, mtime_ns, sha256, datafile_id)"
                " VALUES (?, ?, ?, ?, ?)",
                [(str(p), s, m, h, i) for p, s, m, h, i in items],
            )
            self._db.executemany(
                "DELETE FROM uploads WHERE path = ?", [(str(item[0]),) for item in items]
            )
            self._db.execute("COMMIT")

    def record_upload(
        self, path: Path, size: int, mtime_ns: int, datafile_id: int, url: str
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?)",
                (str(path), size, mtime_ns, datafile_id, url),
            )

    def open_upload(self, path: Path) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT upload_url FROM uploads WHERE path = ?", (str(path),)
            ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
