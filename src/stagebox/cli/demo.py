"""``stagebox demo``: a throwaway server, a sample tree, one upload, the result."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from stagebox.cli.output import print_table

SAMPLE = {
    "Alice/Exp-2026-11/Dataset-A/image_0001.tif": 256 * 1024,
    "Alice/Exp-2026-11/Dataset-A/image_0002.tif": 256 * 1024,
    "Alice/Exp-2026-11/Dataset-A/metadata/run.json": 800,
    "Alice/Exp-2026-11/Dataset-B/stack.raw": 48 * 1024 * 1024,
    "Bob/Calibration/Dataset-C/notes.txt": 1200,
    "Bob/Calibration/Dataset-C/empty.flag": 0,
}


def _make_sample(root: Path) -> None:
    for rel, size in SAMPLE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def demo() -> None:
    """Start a server on a temporary data dir, upload a sample tree, show the catalog."""
    import stagebox.server.app  # noqa: F401 - here, so a client-only install is told at once
    from stagebox.server.process import ServerProcess, stagebox_cmd

    console = Console()
    with tempfile.TemporaryDirectory(prefix="stagebox-demo-") as tmp:
        root = Path(tmp)
        data_dir, src = root / "server", root / "instrument-pc"
        _make_sample(src)
        env = {**os.environ, "STAGEBOX_STATE_DIR": str(root / "client-state")}
        server = ServerProcess(data_dir)
        server.admin("init")
        token = server.add_uploader("demo-pc")
        url = server.url
        console.print(f"[bold]server[/] {url}  data dir {data_dir}")
        server.start()
        try:
            console.print("[bold]upload[/] structure username/experiment/dataset")
            upload = [*stagebox_cmd("upload"), str(src), "--server", url, "--token", token]
            result = subprocess.run(
                [*upload, "--structure", "username/experiment/dataset"], env=env
            )
            console.print("[bold]rerun[/] (everything is skipped: nothing is read or sent)")
            subprocess.run([*upload, "--structure", "username/experiment/dataset"], env=env)
            _show_catalog(console, url, token)
        finally:
            server.stop()
    raise typer.Exit(result.returncode)


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
    print_table(table)
