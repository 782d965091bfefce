"""The API is what its OpenAPI description says: schemathesis, every check, against
a real ``stagebox serve`` on loopback, with an uploader's token and an admin's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import httpx
import pytest

from tests.servers import StageboxServer

HERE = Path(__file__).parent
# Bounded for two shared cores: at most this many generated cases per operation
# and phase. The seed makes a run repeatable; a failure prints each case as curl.
MAX_EXAMPLES = "30"
SEED = "13"


def schemathesis(server: StageboxServer, token: str, cwd: Path, *selection: str) -> tuple[int, str]:
    """Run ``schemathesis run`` with every check; returns its exit code and output."""
    argv = [
        sys.executable, "-m", "schemathesis.cli", "--no-color",
        "--config-file", str(HERE / "openapi_schemathesis.toml"),
        "run", f"{server.url}/openapi.json",
        "--checks", "all",
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", MAX_EXAMPLES,
        "--seed", SEED,
        # One worker: hypothesis describes its strategies with ast.parse, which
        # is not thread-safe on Python 3.11 (SystemError: AST constructor recursion).
        "--workers", "1",
        "--request-timeout", "20",
        "--generation-database", "none",
        *selection,
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "openapi_hooks.py")}
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    return proc.returncode, proc.stdout + proc.stderr


def seed(api: httpx.Client) -> None:
    """Things for the generated requests to find: a stored (empty) file, a pending
    registration request with a real key."""
    files = [{"dataset": "d", "filename": "empty", "size": 0}]
    assert api.post("/api/v1/datafiles/batch", json={"files": files}).status_code == 200
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    assert api.post("/api/v1/registrations", json={"public_key": key}).status_code == 201


@pytest.mark.timeout(600)
def test_every_answer_is_what_the_description_says(
    server: StageboxServer, api: httpx.Client, token: str, tmp_path: Path
):
    # given a server with an uploader who has stored a file and filed a request
    seed(api)
    boxes_before = server.admin("box", "list", "--json")
    admin_token = server.admin("token", "add", "schemathesis")
    started = time.monotonic()
    # when schemathesis tries the uploader's routes, then the admin's (which
    # revoke the uploaders they find, alice among them, so they come second)
    rc, out = schemathesis(server, token, tmp_path / "uploader", "--exclude-tag", "admin")
    # then every answer is documented, with its body and headers as described
    assert rc == 0, out[-20000:]
    rc, out = schemathesis(server, admin_token, tmp_path / "admin", "--include-tag", "admin")
    assert rc == 0, out[-20000:]
    # and no box was added (each would have made a directory where it said)
    assert server.admin("box", "list", "--json") == boxes_before
    assert time.monotonic() - started < 300


def test_an_id_past_the_catalog_range_is_422_not_a_server_error(
    server: StageboxServer, api: httpx.Client
):
    # given an admin
    admin = {"Authorization": f"Bearer {server.admin('token', 'add', 'root')}"}
    # when ids far past 64 bits are asked for
    approve = httpx.post(
        f"{server.url}/api/v1/admin/requests/31178773981080567808/approve",
        json={"box": "sftp"},
        headers=admin,
    )
    content = api.get("/api/v1/datafiles/233255139324041166848/content")
    # then each is refused as described, naming the parameter
    assert approve.status_code == 422, approve.text
    assert approve.json()["detail"][0]["loc"] == ["path", "request_id"]
    assert content.status_code == 422, content.text


def test_a_method_a_path_does_not_take_is_405_naming_every_method_it_does(
    server: StageboxServer, api: httpx.Client
):
    # when a path is asked with a method none of its routes has
    batch = api.get("/api/v1/datafiles/batch")
    uploader = api.request("OPTIONS", "/api/v1/uploader")
    # then it is 405 whose Allow names the methods of all its routes
    assert batch.status_code == 405 and batch.headers["allow"] == "POST"
    assert uploader.status_code == 405 and uploader.headers["allow"] == "GET, PUT"
