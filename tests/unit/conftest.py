"""Fixtures for service-level tests: a real catalog and boxes, tasks run inline."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagebox.config import Settings
from stagebox.server.runtime import build_context
from stagebox.server.services import boxes as box_service
from stagebox.server.services import uploaders


class InlineRunner:
    """Runs submitted tasks at once, so tests see the end state directly."""

    def __init__(self):
        self.tasks = {}
        self.submitted = []

    def register(self, name, fn):
        self.tasks[name] = fn

    def submit(self, task_name, **args):
        self.submitted.append((task_name, args))

    def run_all(self):
        while self.submitted:
            name, args = self.submitted.pop(0)
            self.tasks[name](**args)

    def shutdown(self):
        pass


@pytest.fixture
def ctx(tmp_path):
    ctx = build_context(Settings(data_dir=tmp_path / "data", md5=True))
    runner = InlineRunner()
    runner.tasks = dict(ctx.runner._tasks)
    ctx.runner.shutdown()
    ctx.runner = runner
    yield ctx
    ctx.catalog.dispose()


@pytest.fixture
def alice(ctx):
    with ctx.catalog.session() as s:
        uploader, _ = uploaders.add_uploader(s, "alice")
    return uploader


@pytest.fixture
def receiving(ctx, tmp_path) -> Path:
    """A local receiving box named inbox: bags dropped here are ingested."""
    path = tmp_path / "receiving"
    path.mkdir()
    with ctx.catalog.session() as s:
        box_service.add_box(s, "inbox", role="receiving", path=str(path))
    return path
