"""Engine, sessions and migrations for the catalog."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration (tests/unit/test_migrations.py checks it against Alembic's head):
# a catalog already there is recognised without loading Alembic, which costs every
# admin command and server start about a third of a second.
HEAD = "0005"


# -- one writer at a time, woken at once ----------------------------------------------
#
# SQLite lets one connection write at a time; the others wait in its busy handler,
# which sleeps and retries (1, 2, 5 ... 100 ms) instead of waking when the lock is
# free. With a few requests writing at once (an uploader's bundles and its next
# registrations), a write of 30 ms waited up to 2.8 s and the small-files upload
# spent most of its time asleep. Writers of one process take a lock of the
# process first, so the next one starts the moment the last one commits; other
# processes (the admin CLI, a second server) still meet in SQLite's handler.

READS = ("SELECT", "PRAGMA", "EXPLAIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT", "END")
GATE_TIMEOUT = 30.0  # as long as busy_timeout: then "database is locked", as before
_gates: dict[str, threading.Lock] = {}
_gates_lock = threading.Lock()


def _gate(database: str) -> threading.Lock:
    key = database if database in ("", ":memory:") else str(Path(database).resolve())
    with _gates_lock:
        return _gates.setdefault(key, threading.Lock())


def _writes(sql: str) -> bool:
    return not sql.lstrip().upper().startswith(READS)


class _GatedCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> _GatedCursor:
        if _writes(sql):
            self.connection.enter()  # type: ignore[attr-defined]
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> _GatedCursor:
        if _writes(sql):
            self.connection.enter()  # type: ignore[attr-defined]
        return super().executemany(sql, parameters)


class GatedConnection(sqlite3.Connection):
    """A sqlite3 connection that holds its database's gate from its first write
    until its transaction ends (commit, rollback or close)."""

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._gate = _gate(str(database))
        self._held = False

    def enter(self) -> None:
        if not self._held:
            if not self._gate.acquire(timeout=GATE_TIMEOUT):
                raise sqlite3.OperationalError("database is locked")
            self._held = True

    def _leave(self, closed: bool = False) -> None:
        if self._held and (closed or not self.in_transaction):
            self._held = False
            self._gate.release()

    def cursor(self, factory: Any = _GatedCursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = self.cursor().execute(sql, parameters)
        return cursor

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._leave()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._leave()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._leave(closed=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _begin_before_savepoint(conn: Connection, _name: str | None) -> None:
    """Open the transaction a SAVEPOINT belongs in, if none is open yet.

    Python's sqlite3 driver begins a transaction only before a write. A SAVEPOINT
    sent first would begin its own, and releasing it would commit what it held
    ahead of the rest of the session. IMMEDIATE, since a savepoint is taken to
    write: the write lock is waited for (busy_timeout) now, not refused later.
    """
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Catalog:
    """The catalog database: an engine, a session factory and its migrations."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {
                "check_same_thread": False,
                "timeout": 30,
                "factory": GatedConnection,
            }
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "savepoint", _begin_before_savepoint)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def revision(self) -> str | None:
        """The catalog's schema revision (None for a catalog with no tables yet)."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no alembic_version table: nothing migrated yet
            return None

    def migrate(self, revision: str = "head") -> None:
        """Apply every Alembic migration not yet applied (up to ``revision``)."""
        if revision in ("head", HEAD) and self.revision() == HEAD:
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        sqlite = self.url.startswith("sqlite")
        with self.engine.connect() as conn:
            if sqlite:
                # SQLite alters a table by copying it: with foreign keys enforced,
                # dropping the old copy of a referenced table would fail. The
                # pragma only takes effect outside a transaction.
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            if sqlite:
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
                if broken:
                    raise RuntimeError(f"catalog migration left broken references: {broken[:5]}")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
