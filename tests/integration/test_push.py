"""``stagebox push`` to a real OpenSSH sshd on 127.0.0.1, and to a stagebox server.

The push target is the staging account of tests/sshd.py (internal-sftp only, as
an app server's push account may well be), with the push key in its
authorized keys and a setgid data directory standing in for /srv/data.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import httpx
import pytest
import yaml

from stagebox.packages.declaration import Declaration
from stagebox.packages.pack import PackResult, pack
from stagebox.packages.push import SshDestination, push_ssh
from stagebox.packages.record import Package, PushFile, record_path
from stagebox.packages.yamlfile import Variables
from tests.servers import StageboxServer, free_port, stagebox_cmd
from tests.sshd import STAGING_USER, StagingHost, remove, staging_root, traversable_dir

DECLARATION = """\
pipeline: demo
package:
  find:
    uploadType: demoApp
    extraPushFiles:
      - $DATA_FILE_PREFIX.find.log
    files:
      calls:
        type: tab-delimited
        file: $DATA_FILE_PREFIX.calls.txt
      signal:
        type: binary
        file: $DATA_FILE_PREFIX.signal.gz
"""


@dataclass
class PushHost:
    host: StagingHost
    key: Path
    data: Path  # the push directory, as the test (root) sees it


@pytest.fixture(scope="module")
def push_host() -> Iterator[PushHost]:
    base = traversable_dir("stagebox-push-")
    key = base / "mdi-push-key.pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    keys_file = base / "authorized_keys"
    keys_file.write_text(key.with_suffix(".pem.pub").read_text())
    os.chmod(keys_file, 0o644)
    host = StagingHost(base / "sshd", keys_file=keys_file)
    host.start()
    try:
        yield PushHost(host, key, staging_root(base / "srv-data"))
    finally:
        host.stop()
        remove(base)


@dataclass
class Job:
    dir: Path
    declaration: Path
    known_hosts: Path
    push: PushHost
    data: Path  # this test's own push directory

    def pack(self) -> PackResult:
        return pack(
            Declaration.read(self.declaration),
            "find",
            str(self.dir / "run1"),
            variables=Variables({}, env={}),
        )

    def args(self, package: Path, *extra: str) -> list[str]:
        return [
            "push", str(package),
            "--push-server", "127.0.0.1",
            "--push-port", str(self.push.host.port),
            "--push-dir", str(self.data),
            "--push-user", STAGING_USER,
            "--push-key", str(self.push.key),
            "--known-hosts", str(self.known_hosts),
            *extra,
        ]  # fmt: skip

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(stagebox_cmd(*args), capture_output=True, text=True, timeout=120)

    def destination(self, **changes: object) -> SshDestination:
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "directory": str(self.data),
            "user": STAGING_USER,
            "port": self.push.host.port,
            "key": self.push.key,
            "known_hosts": self.known_hosts,
            "accept_new_host_key": True,
        }
        values.update(changes)
        return SshDestination(**values)  # type: ignore[arg-type]


@pytest.fixture
def job(tmp_path: Path, push_host: PushHost, request: pytest.FixtureRequest) -> Job:
    (tmp_path / "run1.calls.txt").write_text("chrom\tstart\nchr1\t1\n")
    (tmp_path / "run1.signal.gz").write_bytes(os.urandom(3 << 20))
    (tmp_path / "run1.find.log").write_text("finished\n")
    declaration = tmp_path / "pipeline.yml"
    declaration.write_text(DECLARATION)
    data = push_host.data / re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:80]
    data.mkdir()
    os.chmod(data, 0o2770)
    os.chown(data, 0, push_host.data.stat().st_gid)
    return Job(tmp_path, declaration, tmp_path / "known_hosts", push_host, data)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pushed_json(proc: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_push_arrives_checked_renamed_and_recorded(job: Job) -> None:
    built = job.pack()
    result = pushed_json(job.run(*job.args(built.path, "--accept-new-host-key", "--json")))
    assert result["state"] == "pushed"
    remote = job.data / built.path.name
    assert sha256(remote) == built.sha256
    assert (job.data / "run1.find.log").read_text() == "finished\n"
    assert sorted(p.name for p in job.data.iterdir()) == [built.path.name, "run1.find.log"]
    record = json.loads(record_path(built.path).read_text())
    entry = record["targets"][result["target"]]
    assert entry["sha256"] == built.sha256 and entry["time"].endswith("Z")
    assert result["target"] == f"sftp://{STAGING_USER}@127.0.0.1:{job.push.host.port}{job.data}"


def test_a_rerun_transfers_nothing_and_says_so(job: Job) -> None:
    built = job.pack()
    pushed_json(job.run(*job.args(built.path, "--accept-new-host-key", "--json")))
    (job.data / built.path.name).unlink()  # if anything were sent, it would be back
    again = job.run(*job.args(built.path))
    assert again.returncode == 0, again.stderr
    assert "already pushed" in again.stdout and "nothing sent" in again.stdout
    assert not (job.data / built.path.name).exists()
    forced = pushed_json(job.run(*job.args(built.path, "--force", "--json")))
    assert forced["state"] == "pushed"
    assert sha256(job.data / built.path.name) == built.sha256


def test_a_changed_package_is_pushed_again(job: Job) -> None:
    first = job.pack()
    pushed_json(job.run(*job.args(first.path, "--accept-new-host-key", "--json")))
    (job.dir / "run1.calls.txt").write_text("chrom\tstart\nchr2\t5\n")
    second = job.pack()
    assert second.sha256 != first.sha256
    result = pushed_json(job.run(*job.args(second.path, "--json")))
    assert result["state"] == "pushed"
    states = {f["name"]: f["state"] for f in result["files"]}
    assert states == {second.path.name: "sent", "run1.find.log": "present"}
    assert sha256(job.data / second.path.name) == second.sha256


def test_an_interrupted_push_resumes_from_what_arrived(job: Job) -> None:
    # Larger than the writes kept in flight (4 MiB), so the cut leaves a real part.
    (job.dir / "run1.signal.gz").write_bytes(os.urandom(16 << 20))
    built = job.pack()
    package = Package.read(built.path)
    seen = 0

    class Cut(Exception):
        pass

    def cut(file: PushFile, nbytes: int) -> None:
        nonlocal seen
        if file.name == built.path.name:
            seen += nbytes
            if seen > built.size // 8:
                raise Cut

    with pytest.raises(Cut):
        push_ssh(package, job.destination(), cut)
    part = job.data / f".{built.path.name}.part"
    arrived = part.stat().st_size
    assert 0 < arrived < built.size
    assert not (job.data / built.path.name).exists()

    result = pushed_json(job.run(*job.args(built.path, "--json")))
    package_result = next(f for f in result["files"] if f["name"] == built.path.name)
    assert package_result["state"] == "resumed"
    assert package_result["bytes_sent"] == built.size - arrived
    assert sha256(job.data / built.path.name) == built.sha256
    assert not part.exists()


def test_a_part_that_is_not_a_prefix_is_sent_again_from_zero(job: Job) -> None:
    built = job.pack()
    part = job.data / f".{built.path.name}.part"
    part.write_bytes(os.urandom(built.size // 3))
    os.chown(part, pwd.getpwnam(STAGING_USER).pw_uid, -1)  # as a push would have left it
    outcome = push_ssh(Package.read(built.path), job.destination())
    sent = {f.name: f for f in outcome.files}[built.path.name]
    assert sent.state == "sent"
    assert sha256(job.data / built.path.name) == built.sha256


def test_a_key_others_can_read_is_refused_with_the_chmod(job: Job, tmp_path: Path) -> None:
    built = job.pack()
    loose = tmp_path / "loose.pem"
    loose.write_bytes(job.push.key.read_bytes())
    os.chmod(loose, 0o644)
    args = job.args(built.path, "--accept-new-host-key")
    args[args.index("--push-key") + 1] = str(loose)
    proc = job.run(*args)
    assert proc.returncode == 2
    assert f"chmod 600 {loose}" in proc.stderr
    assert list(job.data.iterdir()) == []
    assert not record_path(built.path).exists()


def test_a_changed_host_key_is_refused(job: Job) -> None:
    built = job.pack()
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    job.known_hosts.write_text(f"[127.0.0.1]:{job.push.host.port} {other}")
    proc = job.run(*job.args(built.path))
    assert proc.returncode == 1
    assert "host key of [127.0.0.1]" in proc.stderr and "changed" in proc.stderr
    assert list(job.data.iterdir()) == []


def test_an_unknown_host_key_needs_accept_new_host_key(job: Job) -> None:
    built = job.pack()
    proc = job.run(*job.args(built.path))
    assert proc.returncode == 1
    assert "unknown host key" in proc.stderr and "--accept-new-host-key" in proc.stderr
    assert not job.known_hosts.exists()


def test_an_unreachable_host_fails_loudly_with_the_command_to_rerun(job: Job) -> None:
    built = job.pack()
    closed = free_port()
    args = job.args(built.path, "--accept-new-host-key")
    args[args.index("--push-port") + 1] = str(closed)
    proc = job.run(*args)
    assert proc.returncode == 1
    assert "FAILED" in proc.stderr and "connection refused" in proc.stderr
    rerun = (
        f"stagebox push {built.path} --push-server 127.0.0.1 --push-port {closed} "
        f"--push-dir {job.data} --push-user {STAGING_USER} --push-key {job.push.key}"
    )
    assert rerun in proc.stderr
    assert not record_path(built.path).exists()


def test_push_settings_from_a_job_file(job: Job) -> None:
    built = job.pack()
    job_file = job.dir / "job.yml"
    job_file.write_text(
        "pipeline: demo\n"
        "variables:\n"
        f"  DATA: {job.data}\n"
        "find:\n"
        "  push:\n"
        "    push-server: 127.0.0.1\n"
        f"    push-port: {job.push.host.port}\n"
        "    push-dir: $DATA\n"
        f"    push-user: {STAGING_USER}\n"
        f"    push-key: {job.push.key}\n"
    )
    proc = job.run(
        "push", str(built.path), "--job", str(job_file), "--known-hosts", str(job.known_hosts),
        "--accept-new-host-key", "--json",
    )  # fmt: skip
    assert pushed_json(proc)["state"] == "pushed"
    assert sha256(job.data / built.path.name) == built.sha256

    job_file.write_text("find:\n  push:\n    push-sever: x\n")
    bad = job.run("push", str(built.path), "--job", str(job_file))
    assert bad.returncode == 2
    assert f"{job_file}:3: find.push.push-sever" in bad.stderr and "push-server" in bad.stderr


def test_push_to_a_stagebox_server_ends_verified(
    job: Job, server: StageboxServer, token: str, api: httpx.Client
) -> None:
    built = job.pack()
    args = ["push", str(built.path), "--server", server.url, "--token", token, "--json"]
    result = pushed_json(job.run(*args))
    assert result["state"] == "pushed"
    listed = api.get("/api/v1/datafiles", params={"dataset": "demoApp"}).json()
    files = {f["filename"]: f for f in listed["items"]}
    assert set(files) == {built.path.name, "run1.find.log"}
    package = files[built.path.name]
    assert package["state"] in ("verified", "stored")
    assert package["sha256"] == built.sha256
    assert package["directory"] == built.sha256[:16]
    again = job.run(*args[:-1])
    assert again.returncode == 0 and "already pushed" in again.stdout


def test_a_host_that_never_answers_times_out(job: Job) -> None:
    built = job.pack()
    with socket.socket() as silent:  # accepts, then says nothing: like a filtering firewall
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        args = job.args(built.path, "--accept-new-host-key", "--connect-timeout", "1")
        args[args.index("--push-port") + 1] = str(silent.getsockname()[1])
        started = time.monotonic()
        proc = job.run(*args)
    assert proc.returncode == 1
    assert "timed out" in proc.stderr and "stagebox push " in proc.stderr
    assert time.monotonic() - started < 30
    assert not record_path(built.path).exists()


def test_a_key_the_host_does_not_know_is_named(job: Job, tmp_path: Path) -> None:
    built = job.pack()
    stranger = tmp_path / "stranger.pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    args = job.args(built.path, "--accept-new-host-key")
    args[args.index("--push-key") + 1] = str(stranger)
    proc = job.run(*args)
    assert proc.returncode == 1
    assert f"refused key {stranger}" in proc.stderr and "authorized_keys" in proc.stderr
    assert list(job.data.iterdir()) == []


@pytest.mark.parametrize("name", ["../escape.log", "/etc/cron.d/x", "bell\x07.log"])
def test_a_package_naming_an_unsafe_extra_file_is_refused(job: Job, name: str) -> None:
    built = job.pack()
    with zipfile.ZipFile(built.path) as z:
        doc = yaml.safe_load(z.read("package.yml"))
        entries = {n: z.read(n) for n in z.namelist()}
    doc["extraPushFiles"][0]["name"] = name
    entries["package.yml"] = yaml.safe_dump(doc).encode()
    with zipfile.ZipFile(built.path, "w") as z:
        for entry, data in entries.items():
            z.writestr(entry, data)
    proc = job.run(*job.args(built.path, "--accept-new-host-key"))
    assert proc.returncode == 2
    assert "extraPushFiles[0].name" in proc.stderr
    assert list(job.data.iterdir()) == []
