"""``stagebox demo``: a throwaway server, a sample tree, one upload, the result."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

SAMPLE = {
    "Alice/Exp-2026-11/Dataset-A/image_0001.tif": 256 * 1024,
    "Alice/Exp-2026-11/Dataset-A/image_0002.tif": 256 * 1024,
    "Alice/Exp-2026-11/Dataset-A/metadata/run.json": 800,
    "Alice/Exp-2026-11/Dataset-B/stack.raw": 48 * 1024 * 1024,
    "Bob/Calibration/Dataset-C/notes.txt": 1200,
    "Bob/Calibration/Dataset-C/empty.flag": 0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make_sample(root: Path) -> None:
    for rel, size in SAMPLE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def demo() -> None:
    """Start a server on a temporary data dir, upload a sample tree, show the catalog."""
    console = Console()
    stagebox = [sys.executable, "-m", "stagebox"]
    with tempfile.TemporaryDirectory(prefix="stagebox-demo-") as tmp:
        root = Path(tmp)
        data_dir, src = root / "server", root / "instrument-pc"
        _make_sample(src)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "STAGEBOX_STATE_DIR": str(root / "client-state")}
        token = subprocess.run(
            [*stagebox, "admin", "--data-dir", str(data_dir), "uploader", "add", "demo-pc"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        console.print(f"[bold]server[/] {url}  data dir {data_dir}")
        server = subprocess.Popen(
            [*stagebox, "serve", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_healthy(url)
            console.print("[bold]upload[/] structure username/experiment/dataset")
            upload = [*stagebox, "upload", str(src), "--server", url, "--token", token]
            result = subprocess.run(
                [*upload, "--structure", "username/experiment/dataset"], env=env
            )
            console.print("[bold]rerun[/] (everything is skipped: nothing is read or sent)")
            subprocess.run([*upload, "--structure", "username/experiment/dataset"], env=env)
            _show_catalog(console, url, token)
        finally:
            server.terminate()
            server.wait(timeout=30)
    raise typer.Exit(result.returncode)


def _wait_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the demo server did not start")


def _show_catalog(console: Console, url: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 10
    while True:  # promotion runs in the background: wait until it settles
        items = httpx.get(f"{url}/api/v1/datafiles", headers=headers).json()["items"]
        if all(i["state"] in ("stored", "failed") for i in items) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    table = Table("dataset", "directory", "filename", "size", "state", "sha256", title="catalog")
    for i in items:
        table.add_row(
            f"{i['experiment']}/{i['dataset']}",
            i["directory"],
            i["filename"],
            f"{i['size']:,}",
            i["state"],
            (i["sha256"] or "")[:16] + "…",
        )
    console.print(table)
