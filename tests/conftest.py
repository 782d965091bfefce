from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import StageboxServer


@pytest.fixture(autouse=True)
def hermetic_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's settings: no STAGEBOX_* from the shell, and the
    client config dir (client.toml, SSH key) is the test's own."""
    for name in [n for n in os.environ if n.startswith("STAGEBOX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("STAGEBOX_CONFIG_DIR", str(tmp_path / "client-config"))


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The client's journal lives here, never in the real user state dir."""
    path = tmp_path / "client-state"
    monkeypatch.setenv("STAGEBOX_STATE_DIR", str(path))
    return path


@pytest.fixture
def server(tmp_path: Path, state_dir: Path) -> Iterator[StageboxServer]:
    srv = StageboxServer(tmp_path / "server-data")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def token(server: StageboxServer) -> str:
    return server.add_uploader("alice")


@pytest.fixture
def api(server: StageboxServer, token: str) -> Iterator[httpx.Client]:
    """A raw HTTP client with alice's token, for speaking the API directly."""
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client
