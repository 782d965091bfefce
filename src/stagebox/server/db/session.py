"""Engine, sessions and migrations for the catalog."""

from __future__ import annotations

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
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
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
