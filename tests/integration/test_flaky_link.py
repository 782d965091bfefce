"""The instrument PC on a bad network: the server is down, the name is wrong, the
link drops every few MiB. Each answer is one line, fast, or an upload that gets through."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import StageboxServer, free_port, stagebox_cmd

pytestmark = pytest.mark.integration


class ResettingProxy:
    """A TCP proxy on 127.0.0.1 that forwards bytes both ways and resets each
    connection (RST on both sides) after a random 1-3 MiB from the client: less
    than the server's 4 MiB write piece, and the RST also drops what is still
    buffered on the way (more of it the busier the machine)."""

    def __init__(self, upstream: int, low: int = 1 << 20, high: int = 3 << 20) -> None:
        self.upstream = upstream
        self.low, self.high = low, high
        self.random = random.Random(13)
        self.resets = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> ResettingProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        ).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            self._reset(client_w)
            return
        budget = self.random.randint(self.low, self.high)

        async def upstream() -> None:
            nonlocal budget
            while data := await client_r.read(1 << 16):
                budget -= len(data)
                if budget <= 0:
                    self.resets += 1
                    return
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(1 << 16):
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        self._reset(client_w)
        self._reset(server_w)


def run_cli(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(stagebox_cmd(*args), capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def cli_start_seconds() -> float:
    """How long the CLI takes to start and parse its arguments here (a busy machine is slow)."""
    return run_cli("upload", "--help")[1]


def a_tree(tmp_path: Path) -> Path:
    (tmp_path / "src" / "ds").mkdir(parents=True)
    (tmp_path / "src" / "ds" / "a.txt").write_bytes(b"alpha")
    return tmp_path / "src"


def assert_one_line(stderr: str, expected: str) -> None:
    """One line says what failed: no progress bar left above it, never a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"stagebox: {expected}"], stderr


def test_server_down_is_one_line_within_two_seconds(tmp_path: Path, state_dir: Path):
    # given nobody listens on a port
    port = free_port()
    started = cli_start_seconds()
    # when an upload is pointed at it
    proc, took = run_cli(
        "upload", str(a_tree(tmp_path)), "--server", f"http://127.0.0.1:{port}", "--token", "t"
    )
    # then it fails at once with one line that says what to check
    assert proc.returncode == 1, proc.stderr
    assert_one_line(
        proc.stderr,
        f"cannot reach http://127.0.0.1:{port} (connection refused): "
        "is stagebox serve running there?",
    )
    assert took - started < 2, (took, started)


def test_unknown_host_is_one_line_within_two_seconds(tmp_path: Path, state_dir: Path):
    started = cli_start_seconds()
    proc, took = run_cli(
        "upload", str(a_tree(tmp_path)), "--server", "http://nohost.invalid:8080", "--token", "t"
    )
    assert proc.returncode == 1, proc.stderr
    assert_one_line(
        proc.stderr,
        "cannot reach http://nohost.invalid:8080 (unknown host nohost.invalid): "
        "check the server URL",
    )
    assert took - started < 2, (took, started)


def test_https_against_the_http_port_says_to_use_http(
    server: StageboxServer, token: str, tmp_path: Path
):
    started = cli_start_seconds()
    https = server.url.replace("http://", "https://")
    proc, took = run_cli("upload", str(a_tree(tmp_path)), "--server", https, "--token", token)
    assert proc.returncode == 1, proc.stderr
    assert_one_line(
        proc.stderr, f"cannot reach {https} (the port does not speak https): try {server.url}"
    )
    assert took - started < 2, (took, started)


def test_upload_through_a_link_that_resets_every_few_mib_ends_verified(
    server: StageboxServer, token: str, tmp_path: Path
):
    # given a 64 MiB file and a link that resets the connection every 1-3 MiB
    src = tmp_path / "src"
    (src / "ds").mkdir(parents=True)
    big = src / "ds" / "big.bin"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    sha256 = hashlib.sha256(big.read_bytes()).hexdigest()
    with ResettingProxy(server.port) as proxy:
        # when it is uploaded over http through that link
        proc, took = run_cli(
            "upload", str(src), "--server", proxy.url, "--token", token, "--json", timeout=150
        )
    # then every reset was retried from the server's offset and the file is stored whole
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    report = json.loads(proc.stdout)
    assert [f["state"] for f in report["files"]] == ["verified"], report
    assert proxy.resets >= 10, proxy.resets
    assert "connection reset" in proc.stderr or "disconnected" in proc.stderr, proc.stderr
    listing = httpx.get(
        f"{server.url}/api/v1/datafiles", headers={"Authorization": f"Bearer {token}"}
    ).json()["items"]
    assert [(i["filename"], i["sha256"]) for i in listing] == [("big.bin", sha256)]
    stored = [p for p in (server.data_dir / "store").rglob("big.bin") if p.is_file()]
    assert len(stored) == 1
    assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == sha256
