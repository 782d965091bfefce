"""The ``staging_box`` setting: which box the http path stages uploads in."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagebox.config import Settings
from stagebox.errors import ConfigError
from stagebox.server.db.session import Catalog
from stagebox.server.runtime import build_context
from stagebox.server.services import boxes, datafiles


def add_box(data_dir: Path, name: str, role: str) -> None:
    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(settings.catalog_url)
    catalog.migrate()
    with catalog.session() as s:
        boxes.add_box(s, name, role=role, backend="s3", bucket="stagebox-staging")
    catalog.dispose()


def test_a_named_staging_box_takes_the_http_uploads(tmp_path: Path) -> None:
    add_box(tmp_path / "data", "s3-staging", "staging")
    ctx = build_context(Settings(data_dir=tmp_path / "data", staging_box="s3-staging"))
    try:
        with ctx.catalog.session() as s:
            box = boxes.get_box(s, "s3-staging")
            assert ctx.staging_box_id == box.id
            assert datafiles.http_target(ctx).box_id == box.id
            assert ctx.store_box_id == boxes.get_box(s, "store").id
    finally:
        ctx.runner.shutdown()
        ctx.catalog.dispose()


@pytest.mark.parametrize(("name", "role"), [("absent", None), ("archive", "permanent")])
def test_a_staging_box_that_is_not_one_stops_the_server(tmp_path: Path, name, role) -> None:
    if role:
        add_box(tmp_path / "data", name, role)
    with pytest.raises(ConfigError, match=f"staging_box '{name}'"):
        build_context(Settings(data_dir=tmp_path / "data", staging_box=name))
