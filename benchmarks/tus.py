"""The http case's tus sides: a stock tus client (two ``curl`` commands: POST to create,
one PATCH with the whole file) against stagebox's ``/files/`` and against the Node
reference server ``@tus/server`` with its ``FileStore``.

``@tus/server`` and ``@tus/file-store`` are installed from npm into ``benchmarks/work/node``
on first use (``tus_node_reason`` says why they cannot be where that fails); the server is
``benchmarks/tus_server.mjs``, copied there so its imports resolve. It runs once per case,
its store emptied before every run, as the ssh peers share one sshd. A stagebox run gets a
fresh server, as every stagebox run does.

Checks after the clock stops: curl's PATCH must answer 204 with ``Upload-Offset`` equal to
the file's size; stagebox must then store the file with the workload's sha256 (curl
declares none: the server's running hash is the only one); @tus/server's store must hold
one file of that size.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import psutil

from benchmarks.measure import Measurement, run_measured
from benchmarks.servers import stop_group
from benchmarks.sides import Bench, Record, RunFailed, fresh_server, record, wait_stored
from stagebox.server.process import free_port, wait_listening

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "tus_server.mjs"
PACKAGES = ("@tus/server@^2", "@tus/file-store@^2")  # 2.x needs node >= 20.19


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@cache
def tus_node_reason(node_dir: Path) -> str | None:
    """None when ``node_dir`` holds @tus/server and @tus/file-store (npm-installing them
    the first time), else why not; the result is kept for the harness's lifetime."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node or npm not found (make bench-deps installs nodejs and npm)"
    modules = node_dir / "node_modules" / "@tus"
    if not all((modules / name / "package.json").exists() for name in ("server", "file-store")):
        node_dir.mkdir(parents=True, exist_ok=True)
        print(f"  installing {' '.join(PACKAGES)} into {node_dir} (npm)", flush=True)
        cmd = [npm, "install", "--prefix", str(node_dir), "--no-audit", "--no-fund", *PACKAGES]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"npm install {' '.join(PACKAGES)} failed: {exc}"
        if out.returncode != 0:
            return f"npm install {' '.join(PACKAGES)} exit {out.returncode}: {_tail(out.stderr, 5)}"
    shutil.copy(SCRIPT, node_dir / SCRIPT.name)
    return None


def tus_node_versions(node_dir: Path) -> dict[str, str]:
    """node's and the installed @tus packages' versions, for the report."""
    try:
        found = {
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
        }
    except OSError as exc:
        return {"node": f"unavailable ({exc})"}
    for name in ("server", "file-store"):
        meta = node_dir / "node_modules" / "@tus" / name / "package.json"
        if meta.exists():
            found[f"@tus/{name}"] = json.loads(meta.read_text())["version"]
    return {k: v.strip() for k, v in found.items()}


@dataclass
class TusNodeServer:
    """``node tus_server.mjs PORT STORE`` on 127.0.0.1, started once per case."""

    node_dir: Path
    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files"

    @property
    def store(self) -> Path:
        return self.root / "files"

    @property
    def log_path(self) -> Path:
        return self.root / "tus-server.log"

    @property
    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def start(self, timeout: float = 30.0) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.store.mkdir(parents=True)
        cmd = ["node", str(self.node_dir / SCRIPT.name), str(self.port), str(self.store)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_listening(self.port, self.proc, self.log_path, timeout)
        except BaseException:
            self.stop()
            raise

    def empty(self) -> None:
        """Remove every upload (the data and its ``.json`` record) from the store."""
        for entry in self.store.iterdir():
            entry.unlink()

    def uploads(self) -> list[int]:
        """Sizes of the uploads in the store (its ``<id>.json`` records left out)."""
        return [p.stat().st_size for p in self.store.iterdir() if p.suffix != ".json"]

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        self.proc = None
        shutil.rmtree(self.store, ignore_errors=True)


def curl_tus_script(
    path: Path, endpoint: str, metadata: Mapping[str, str], headers: Mapping[str, str]
) -> str:
    """A stock client's upload with curl: POST (creation), then one PATCH of the whole file.

    ``-T`` streams the file (``--data-binary @FILE`` would read all of it into memory
    first); the empty ``Expect:`` stops curl from waiting for a 100 Continue. The PATCH
    prints its status and ``Upload-Offset``.
    """
    size = path.stat().st_size
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in metadata.items())
    extra = " ".join(f"-H {shlex.quote(f'{k}: {v}')}" for k, v in headers.items())
    q = shlex.quote
    return (
        "set -e\n"
        f"location=$(curl -sS -f -o /dev/null -w '%header{{location}}' -X POST {extra} "
        f"-H 'Tus-Resumable: 1.0.0' -H 'Upload-Length: {size}' "
        f"-H {q('Upload-Metadata: ' + meta)} {q(endpoint)})\n"
        'test -n "$location"\n'
        f"curl -sS -f -o /dev/null -w '%{{http_code}} %header{{upload-offset}}\\n' -X PATCH "
        f"{extra} -H 'Tus-Resumable: 1.0.0' "
        "-H 'Content-Type: application/offset+octet-stream' -H 'Upload-Offset: 0' "
        f"-H 'Expect:' -T {q(str(path))} \"$location\"\n"
    )


def _curl(run_dir: Path, script: str, server: psutil.Process) -> Measurement:
    """Run the script (kept in the run dir, for a failed run's post-mortem), measured."""
    (run_dir / "curl-tus.sh").write_text(script)
    os.sync()
    return run_measured(
        ["sh", str(run_dir / "curl-tus.sh")],
        stdout=run_dir / "curl.out",
        stderr=run_dir / "curl.err",
        server=server,
    )


def _check_patch(m: Measurement, run_dir: Path, size: int, label: str) -> None:
    answer = (run_dir / "curl.out").read_text().strip()
    if m.exit_code != 0 or answer != f"204 {size}":
        raise RunFailed(
            f"curl tus upload ({label}) exit {m.exit_code}, PATCH answered {answer!r}, "
            f"expected '204 {size}':\n{_tail((run_dir / 'curl.err').read_text())}"
        )


def curl_to_stagebox(b: Bench, path: Path, label: str, sha256: str) -> Record:
    """curl POST + PATCH to a fresh stagebox server's ``/files/``; the file must end stored
    with ``sha256``."""
    run_dir = b.fresh_dir(label)
    size = path.stat().st_size
    dataset = f"bench-{run_dir.name}"
    with fresh_server(b, run_dir) as (server, token):
        script = curl_tus_script(
            path,
            f"{server.url}/files/",
            {"filename": path.name, "dataset": dataset},
            {"Authorization": f"Bearer {token}"},
        )
        m = _curl(run_dir, script, server.process)
        _check_patch(m, run_dir, size, label)
        items = wait_stored(server, token, dataset)
    got = [(i["state"], i["size"], i["sha256"]) for i in items]
    if got != [("stored", size, sha256)]:
        raise RunFailed(f"curl to stagebox ({label}): {got}, expected stored {size} {sha256}")
    shutil.rmtree(run_dir)
    return record(m, files=1, bytes=size)


def curl_to_tus_node(b: Bench, path: Path, label: str, node: TusNodeServer) -> Record:
    """curl POST + PATCH to @tus/server; its store must then hold one file of the size."""
    run_dir = b.fresh_dir(label)
    size = path.stat().st_size
    node.empty()
    script = curl_tus_script(path, node.url, {"filename": path.name}, {})
    m = _curl(run_dir, script, node.process)
    _check_patch(m, run_dir, size, label)
    if node.uploads() != [size]:
        raise RunFailed(f"@tus/server ({label}) stored {node.uploads()}, expected [{size}]")
    node.empty()
    shutil.rmtree(run_dir)
    return record(m, files=1, bytes=size)
