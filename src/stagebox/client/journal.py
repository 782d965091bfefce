"""The client's journal: what one server holds stored, and open uploads.

One SQLite file per server URL under the user's state dir (``STAGEBOX_STATE_DIR``
overrides it). A row says: this uploader's file at (owner, experiment, dataset,
directory, filename) was stored with this size, mtime and sha256. A journal hit
lets the client declare the sha256 at registration instead of reading the file
again; the server still decides, in the same batch call, whether it is skipped.
So switching token (another uploader), structure or dataset name never skips
a file: the key differs, and the server is asked anyway.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from platformdirs import user_state_dir

from stagebox.client.scan import LocalFile

SCHEMA = """
DROP TABLE IF EXISTS verified;
CREATE TABLE IF NOT EXISTS stored (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    datafile_id INTEGER,
    stored_at REAL DEFAULT (julianday('now'))
);
CREATE TABLE IF NOT EXISTS uploads (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    datafile_id INTEGER NOT NULL,
    upload_url TEXT NOT NULL
);
"""
# Names never hold control characters (the server refuses them), so this
# separator cannot make two keys alike.
SEP = "\x1f"


class Seen(NamedTuple):
    size: int
    mtime_ns: int
    sha256: str


def state_dir() -> Path:
    return Path(os.environ.get("STAGEBOX_STATE_DIR") or user_state_dir("stagebox"))


def journal_path(server: str) -> Path:
    digest = hashlib.sha256(server.rstrip("/").encode()).hexdigest()[:16]
    return state_dir() / f"journal-{digest}.db"


def journal_key(uploader: str, file: LocalFile) -> str:
    """The catalog identity of ``file`` for one uploader."""
    parts = (
        uploader,
        file.owner or "",
        file.experiment or "",
        file.dataset,
        file.directory,
        file.filename,
    )
    return SEP.join(parts)


JOURNAL_WAIT = 60.0  # seconds a journal write waits for another process's


class Journal:
    """Thread-safe; every write is its own small transaction.

    ``uploader`` (the server's uuid of the token's uploader) scopes every row:
    set it once the server said who the token belongs to.
    """

    def __init__(self, path: Path, uploader: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.uploader = uploader
        self._lock = threading.Lock()
        # Two uploads on one machine share the journal: wait for the other's
        # write (sqlite's default is 5 s, too short on a busy instrument PC).
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=JOURNAL_WAIT
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @classmethod
    def for_server(cls, server: str) -> Journal:
        return cls(journal_path(server))

    def key(self, file: LocalFile) -> str:
        return journal_key(self.uploader, file)

    def seen(self, files: Sequence[LocalFile]) -> dict[str, Seen]:
        """What was stored of those of ``files`` the journal knows: one query per 500."""
        keys = [self.key(f) for f in files]
        found: dict[str, Seen] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, size, mtime_ns, sha256 FROM stored WHERE key IN ({marks})", chunk
                ).fetchall()
                found.update((key, Seen(size, mtime, sha)) for key, size, mtime, sha in rows)
        return found

    def unchanged_sha256(self, file: LocalFile, seen: dict[str, Seen]) -> str | None:
        """The stored sha256 of ``file`` when its size and mtime are what was stored."""
        hit = seen.get(self.key(file))
        if hit is not None and (hit.size, hit.mtime_ns) == (file.size, file.mtime_ns):
            return hit.sha256
        return None

    def record_stored(self, items: Sequence[tuple[LocalFile, str, int | None]]) -> None:
        """Rows of (file, sha256, datafile id) the server holds stored; clears open uploads."""
        rows = [(self.key(f), f.size, f.mtime_ns, sha, i) for f, sha, i in items]
        if not rows:
            return
        paths = [(str(f.path),) for f, _, _ in items]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO stored (key, size, mtime_ns, sha256, datafile_id)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            self._db.executemany("DELETE FROM uploads WHERE path = ?", paths)
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
