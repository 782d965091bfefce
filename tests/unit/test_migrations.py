"""Migrations carry an existing catalog forward with its data intact."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from stagebox.server.db.session import Catalog


def test_0004_gives_existing_files_version_1_and_owners_their_own_datasets(tmp_path):
    # given a catalog at 0003 holding one stored file in alice's dataset ds1
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.migrate("0003")
    now = "2026-11-30 10:00:00"
    with catalog.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO uploaders (id, uuid, name, hostname, os, mac_address, client_version,"
                " created_at) VALUES (1, 'u-1', 'pc', '', '', '', '', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO storage_boxes (id, name, backend, role, attributes, created_at)"
                " VALUES (1, 'store', 'local', 'permanent', '{}', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO datasets (id, uploader_id, experiment, name, owner, created_at)"
                " VALUES (1, 1, 'exp1', 'ds1', 'alice', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO datafiles (id, dataset_id, directory, filename, size, sha256,"
                " created_at) VALUES (1, 1, '', 'a.tif', 5, :sha, :now)"
            ),
            {"sha": "ab" * 32, "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO replicas (id, datafile_id, box_id, key, state, method, bytes_staged,"
                " awaits_complete, attempts, created_at, updated_at) VALUES"
                " (1, 1, 1, 'u-1/1/a.tif', 'stored', 'http', 5, 0, 0, :now, :now)"
            ),
            {"now": now},
        )

    # when it is migrated to the head
    catalog.migrate()

    with catalog.engine.begin() as conn:
        # then the file is version 1, its replica and key as they were
        row = conn.execute(text("SELECT version, size, sha256 FROM datafiles")).one()
        assert tuple(row) == (1, 5, "ab" * 32)
        replica = conn.execute(text("SELECT key, state, fixity FROM replicas")).one()
        assert tuple(replica) == ("u-1/1/a.tif", "stored", None)
        # and bob may now have a dataset of the same experiment and name
        conn.execute(
            text(
                "INSERT INTO datasets (uploader_id, experiment, name, owner, created_at)"
                " VALUES (1, 'exp1', 'ds1', 'bob', :now)"
            ),
            {"now": now},
        )
        # and a version 2 of the same path is allowed
        conn.execute(
            text(
                "INSERT INTO datafiles (dataset_id, directory, filename, version, size,"
                " created_at) VALUES (1, '', 'a.tif', 2, 6, :now)"
            ),
            {"now": now},
        )
    # but the same owner's dataset twice, or the same version twice, is refused
    for statement in (
        "INSERT INTO datasets (uploader_id, experiment, name, owner, created_at)"
        " VALUES (1, 'exp1', 'ds1', 'alice', :now)",
        "INSERT INTO datafiles (dataset_id, directory, filename, version, size, created_at)"
        " VALUES (1, '', 'a.tif', 2, 7, :now)",
    ):
        with pytest.raises(IntegrityError), catalog.engine.begin() as conn:
            conn.execute(text(statement), {"now": now})
    catalog.dispose()


def test_head_is_alembics_newest_migration():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from stagebox.server.db import session

    cfg = Config()
    cfg.set_main_option("script_location", str(session.MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_heads() == [session.HEAD]


def test_a_current_catalog_starts_without_alembic_and_an_old_one_is_carried_forward(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    old = Catalog(url)
    old.migrate("0004")
    assert old.revision() == "0004"
    old.dispose()
    probe = (
        "import sys; from stagebox.server.db.session import Catalog, HEAD;"
        " c = Catalog(sys.argv[1]); c.migrate();"
        " print(c.revision() == HEAD, 'alembic' in sys.modules)"
    )
    # an old catalog: Alembic is loaded and migrates it to the head
    first = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True)
    assert first.stdout.split() == ["True", "True"], first.stderr
    # a current one: recognised by its revision alone
    again = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True)
    assert again.stdout.split() == ["True", "False"], again.stderr
