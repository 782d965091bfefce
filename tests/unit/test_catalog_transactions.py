"""A session is one transaction on SQLite too, savepoints included.

Python's sqlite3 driver opens a transaction only before a write, so a SAVEPOINT
that came first opened its own, and releasing it committed what it held: a
registration into an existing dataset committed its new datafile rows before
their replicas were written. A listing in between (and after a failure, forever)
met a datafile without replicas and answered 500.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from stagebox.server.db.models import Datafile, Uploader
from stagebox.server.schemas import DatafileRegister
from stagebox.server.services import datafiles


class Boom(Exception):
    pass


def test_a_savepoint_that_comes_first_is_rolled_back_with_its_session(ctx):
    with pytest.raises(Boom), ctx.catalog.session() as s:
        with s.begin_nested():
            s.add(Uploader(uuid="u-1", name="early"))
        raise Boom
    with ctx.catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Uploader)) == 0


def test_new_files_in_an_existing_dataset_are_recorded_with_their_replicas_or_not_at_all(
    ctx, alice, monkeypatch
):
    def item(name: str) -> DatafileRegister:
        return DatafileRegister(dataset="ds", filename=name, size=3)

    with ctx.catalog.session() as s:  # the dataset exists
        datafiles.register_batch(ctx, s, s.merge(alice), [item("first")], "http://x")

    def fail(*args, **kwargs):
        raise Boom

    # when the replicas cannot be written after the datafile rows were
    monkeypatch.setattr(datafiles, "replica_values", fail)
    with pytest.raises(Boom), ctx.catalog.session() as s:
        datafiles.register_batch(ctx, s, s.merge(alice), [item("a"), item("b")], "http://x")
    # then neither is left behind, and every datafile has its replica
    with ctx.catalog.session() as s:
        names = s.scalars(select(Datafile.filename)).all()
        assert names == ["first"]
        assert all(df.replicas for df in s.scalars(select(Datafile)))
