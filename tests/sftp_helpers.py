"""What the sftp tests share: uploader installations, the catalog calls they make."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.integration.test_upload import make_tree
from tests.integration.test_upload import wait_for as _wait_for
from tests.servers import StageboxServer, stagebox_cmd

tree = make_tree  # the sftp tests' name for it

BOX = "sftp-staging"


def as_legacy_openssh(attributes: dict) -> dict:
    """An sftp box's attributes as a box added before the openssh endpoint (sshd's
    internal-sftp, one shared account) was retired for new boxes had them: the
    server still serves such a box, so its paths are still tested."""
    legacy = {k: v for k, v in attributes.items() if k != "sftp_socket"}
    return {**legacy, "sftp_endpoint": "openssh"}


def make_legacy_openssh(data_dir: Path, box: str) -> None:
    """The catalog's box ``box`` turned into one added before the retirement."""
    import sqlite3

    conn = sqlite3.connect(data_dir / "catalog.db", timeout=30)
    try:
        (attributes,) = conn.execute(
            "SELECT attributes FROM storage_boxes WHERE name = ?", (box,)
        ).fetchone()
        legacy = json.dumps(as_legacy_openssh(json.loads(attributes)))
        conn.execute("UPDATE storage_boxes SET attributes = ? WHERE name = ?", (legacy, box))
        conn.commit()
    finally:
        conn.close()


@dataclass
class Machine:
    """One uploader installation: its token, config dir (key, known_hosts) and journal."""

    name: str
    token: str
    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.home / "config"

    @property
    def key(self) -> Path:
        return self.config / "ssh" / "id_ed25519"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "STAGEBOX_CONFIG_DIR": str(self.config),
            "STAGEBOX_STATE_DIR": str(self.home / "state"),
            "STAGEBOX_TOKEN": self.token,
            **self.extra_env,
        }


@dataclass
class Uploaders:
    """A server with one sftp box, and the uploader installations a test makes."""

    base: Path
    server: StageboxServer

    def admin(self, *args: str) -> str:
        proc = subprocess.run(
            stagebox_cmd("admin", "--data-dir", str(self.server.data_dir), *args),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def machine(self, name: str) -> Machine:
        home = self.base / "machines" / name
        home.mkdir(parents=True)
        return Machine(name, self.server.add_uploader(name), home)

    def run(
        self, machine: Machine, *args: str, timeout: float = 180
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            stagebox_cmd(*args), capture_output=True, text=True, env=machine.env(), timeout=timeout
        )

    def register(self, machine: Machine, *args: str) -> subprocess.CompletedProcess:
        return self.run(machine, "register", "--server", self.server.url, *args)

    def request_id(self, machine: Machine) -> int:
        requests = json.loads(self.admin("requests", "list", "--json"))
        return next(r["id"] for r in requests if r["uploader"] == machine.name)

    def approved(self, name: str) -> Machine:
        machine = self.machine(name)
        assert self.register(machine).returncode == 0
        self.admin("requests", "approve", str(self.request_id(machine)), "--box", BOX)
        return machine

    def upload_args(self, src: Path, *args: str) -> list[str]:
        return ["upload", str(src), "--server", self.server.url, "--json", *args]

    def upload(self, machine: Machine, src: Path, *args: str) -> tuple[int, dict, str]:
        proc = self.run(machine, *self.upload_args(src, *args))
        assert proc.stdout, proc.stderr
        return proc.returncode, json.loads(proc.stdout), proc.stderr

    def api(self, machine: Machine) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            headers={"Authorization": f"Bearer {machine.token}"},
            timeout=30,
        )


def failures(report: dict, stderr: str) -> str:
    failed = [f"{f['path']}: {f['error']}" for f in report["files"] if f["state"] == "failed"]
    return "\n".join([*failed[:10], report.get("error") or "", stderr[-3000:]])


def content(api: httpx.Client, datafile_id: int) -> bytes:
    return api.get(f"/api/v1/datafiles/{datafile_id}/content").content


def datafiles(api: httpx.Client) -> list[dict]:
    return api.get("/api/v1/datafiles", params={"limit": 1000}).json()["items"]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    return _wait_for(predicate, timeout, what)


def register_sftp(api: httpx.Client, dataset: str, filename: str, size: int) -> dict:
    answer = api.post(
        "/api/v1/datafiles/batch",
        json={
            "method": "sftp",
            "files": [{"dataset": dataset, "filename": filename, "size": size}],
        },
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["files"][0]


def complete(api: httpx.Client, datafile_id: int, data: bytes) -> httpx.Response:
    return api.post(
        f"/api/v1/datafiles/{datafile_id}/complete",
        json={"sha256": hashlib.sha256(data).hexdigest()},
    )


def settled(api: httpx.Client, datafile_id: int) -> dict:
    return wait_for(
        lambda: (
            (r := api.get(f"/api/v1/datafiles/{datafile_id}").json())["state"]
            in ("stored", "failed")
            and r
        ),
        what="the server to settle the file",
    )


def asyncssh_run(coro):
    return asyncio.run(coro)


def kill_mid_file_then_resume(
    env: Uploaders, machine: Machine, staging: Path, tmp_path: Path, *first_args: str
) -> None:
    """A client killed mid-file; the rerun sends only the rest, and it is stored whole."""
    data = os.urandom(48 << 20)
    src = tree(tmp_path / "src", {"big.bin": data})
    args = env.upload_args(src, "--dataset", "d", "--method", "sftp", *first_args)
    proc = subprocess.Popen(
        stagebox_cmd(*args, "--bwlimit", "8"),
        env=machine.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def partial() -> int:
        parts = list(staging.rglob("big.bin.part"))
        return parts[0].stat().st_size if parts else 0

    try:
        wait_for(lambda: partial() > 8 << 20, what="a partial file in staging")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    sent_before = partial()
    assert 0 < sent_before < len(data)

    code, report, stderr = env.upload(machine, src, "--dataset", "d", "--method", "sftp")
    assert code == 0, failures(report, stderr)
    (result,) = report["files"]
    assert result["state"] == "verified"
    assert result["bytes_sent"] <= len(data) - sent_before  # resumed, not restarted
    with env.api(machine) as api:
        (row,) = datafiles(api)
        assert content(api, row["id"]) == data
    assert list(staging.rglob("big.bin*")) == []
