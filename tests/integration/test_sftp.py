"""SFTP staging through a real OpenSSH sshd: register, approve, upload, verify.

One stagebox server and one staging host for the module, set up as the README's
staging-host recipe says, with a box added before the openssh endpoint (sshd's
internal-sftp, one shared account) was retired for new boxes: the server still
serves such boxes until their uploads are done. Each test is its own uploader
(its own config dir, key and journal), so tests do not see each other's approvals.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import httpx
import pytest

from tests.servers import StageboxServer, stagebox_cmd
from tests.sftp_helpers import (
    BOX,
    Machine,
    Uploaders,
    asyncssh_run,
    complete,
    content,
    datafiles,
    failures,
    kill_mid_file_then_resume,
    make_legacy_openssh,
    register_sftp,
    settled,
    tree,
    wait_for,
)
from tests.sshd import (
    STAGING_GROUP,
    STAGING_USER,
    StagingHost,
    keys_command,
    remove,
    staging_root,
    traversable_dir,
)


@dataclass
class Env(Uploaders):
    host: StagingHost
    staging: Path


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    base = traversable_dir("stagebox-sftp-")
    data = base / "data"
    staging = staging_root(base / "staging")
    # Staleness of 2 s lets the sweep's arrival check run within a test.
    server = StageboxServer(data, env={"STAGEBOX_SWEEP_INTERVAL": "1", "STAGEBOX_STALE_AFTER": "2"})
    server.start()
    command = keys_command(data, Path("/run/stagebox-tests") / base.name)
    host = StagingHost(base / "sshd", command=command)
    try:
        host.start()
        proc = subprocess.run(
            stagebox_cmd(
                "admin",
                "--data-dir",
                str(data),
                "box",
                "add",
                BOX,
                "--role",
                "staging",
                "--path",
                str(staging),
                "--sftp-host",
                "127.0.0.1",
                "--sftp-port",
                str(host.port),
                "--sftp-user",
                STAGING_USER,
            ),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        make_legacy_openssh(data, BOX)
        yield Env(base, server, host, staging)
    finally:
        host.stop()
        server.stop()
        remove(command.parent)
        remove(base)


def test_register_approve_then_upload_a_tree(env: Env, tmp_path: Path) -> None:
    machine = env.machine("scope-1")
    first = env.register(machine)
    assert first.returncode == 0, first.stderr
    assert "pending" in first.stdout
    assert stat.S_IMODE(machine.key.stat().st_mode) == 0o600
    requests = json.loads(env.admin("requests", "list", "--json"))
    mine = [r for r in requests if r["uploader"] == machine.name]
    assert len(mine) == 1 and mine[0]["state"] == "pending"
    assert mine[0]["fingerprint"].startswith("SHA256:")
    # Running it again reuses the key and the request.
    again = env.register(machine)
    assert again.stdout == first.stdout
    uploaders = json.loads(env.admin("uploader", "list", "--json"))
    described = next(u for u in uploaders if u["name"] == machine.name)
    assert described["hostname"] and described["os"] and described["client_version"]

    env.admin("requests", "approve", str(mine[0]["id"]), "--box", BOX)
    status = env.register(machine, "--status")
    assert "approved" in status.stdout and BOX in status.stdout, status.stdout

    big = os.urandom(5 << 20)
    files = {
        "run1/big.bin": big,
        "run1/sub/notes.txt": b"notes\n",
        "run1/empty.dat": b"",
        **{f"run1/tiles/t{i:02}.bin": os.urandom(3000 + i) for i in range(30)},
    }
    src = tree(tmp_path / "src", files)
    code, report, stderr = env.upload(machine, src, "--method", "sftp", "--accept-new-host-key")
    assert code == 0, failures(report, stderr)
    assert report["totals"]["verified"] == len(files)
    assert (machine.config / "known_hosts").read_text().startswith(f"[127.0.0.1]:{env.host.port}")

    with env.api(machine) as api:
        rows = datafiles(api)
        assert {r["state"] for r in rows} == {"stored"}
        by_path = {
            "/".join(p for p in (r["dataset"], r["directory"], r["filename"]) if p): r for r in rows
        }
        for rel, data in files.items():
            row = by_path[rel]
            assert content(api, row["id"]) == data, rel
        assert by_path["run1/big.bin"]["checksum_source"] == "client"

    uuid = json.loads(env.register(machine, "--status", "--json").stdout)["uploader_uuid"]
    mine_dir = env.staging / uuid
    # Directories the client made are 2770 and in the shared group; nothing is left staged.
    made = [p for p in mine_dir.rglob("*") if p.is_dir() and p.name != ".bundles"]
    assert made
    for directory in made:
        st = directory.stat()
        assert stat.S_IMODE(st.st_mode) == 0o2770, directory
        assert st.st_gid == __import__("grp").getgrnam(STAGING_GROUP).gr_gid
    assert [p for p in mine_dir.rglob("*") if p.is_file()] == []
    # The store holds the server's own copy: not the staging account's inode, and not
    # writable by its group.
    stored = next(env.server.data_dir.joinpath("store").rglob("big.bin")).stat()
    assert stored.st_uid == os.getuid() and not stored.st_mode & 0o022

    code, report, _ = env.upload(machine, src, "--method", "sftp")
    assert code == 0
    assert report["totals"]["skipped"] == len(files)
    assert report["totals"]["bytes_sent"] == 0


def test_kill_mid_file_then_resume(env: Env, tmp_path: Path) -> None:
    kill_mid_file_then_resume(
        env, env.approved("scope-kill"), env.staging, tmp_path, "--accept-new-host-key"
    )


def test_unapproved_falls_back_to_http_under_auto(env: Env, tmp_path: Path) -> None:
    machine = env.machine("scope-pending")
    assert env.register(machine).returncode == 0
    src = tree(tmp_path / "src", {"a.txt": b"alpha", "b.bin": os.urandom(2 << 20)})

    refused = env.run(machine, *env.upload_args(src, "--dataset", "d", "--method", "sftp"))
    assert refused.returncode == 2
    assert "sftp is not approved" in refused.stderr and "pending" in refused.stderr

    code, report, stderr = env.upload(machine, src, "--dataset", "d")
    assert code == 0, stderr
    assert "uploading over http" in stderr and "pending" in stderr
    assert report["totals"]["verified"] == 2

    # The server refuses an sftp registration from it too.
    with env.api(machine) as api:
        answer = api.post(
            "/api/v1/datafiles/batch",
            json={"method": "sftp", "files": [{"dataset": "d", "filename": "x", "size": 1}]},
        )
        assert answer.status_code == 403
        assert "pending" in answer.json()["detail"]


def test_rejected_request_shows_the_reason(env: Env) -> None:
    machine = env.machine("scope-rejected")
    env.register(machine)
    env.admin("requests", "reject", str(env.request_id(machine)), "--reason", "unknown instrument")
    status = env.register(machine, "--status")
    assert "rejected" in status.stdout and "unknown instrument" in status.stdout


async def _sftp_login(env: Env, machine: Machine) -> asyncssh.SFTPClient:
    conn = await asyncssh.connect(
        "127.0.0.1",
        env.host.port,
        username=STAGING_USER,
        client_keys=[str(machine.key)],
        known_hosts=None,
        agent_path=None,
    )
    return conn


def test_revoked_uploader_is_refused_by_sshd(env: Env) -> None:
    machine = env.approved("scope-revoked")

    async def login() -> None:
        conn = await _sftp_login(env, machine)
        async with conn, conn.start_sftp_client() as sftp:
            # The staging account can write staging, never the permanent store.
            store = env.server.data_dir / "store"
            with pytest.raises(asyncssh.SFTPError):
                async with sftp.open(str(store / "planted"), "wb") as f:
                    await f.write(b"x")
            assert not (store / "planted").exists()

    asyncssh_run(login())
    env.admin("uploader", "revoke", machine.name)
    with pytest.raises(asyncssh.PermissionDenied):
        asyncssh_run(_sftp_login(env, machine))
    requests = json.loads(env.admin("requests", "list", "--json"))
    assert next(r for r in requests if r["uploader"] == machine.name)["state"] == "revoked"


def test_host_key_unknown_or_changed_is_refused(env: Env, tmp_path: Path) -> None:
    machine = env.approved("scope-hostkey")
    src = tree(tmp_path / "src", {"a.bin": os.urandom(2 << 20)})
    args = env.upload_args(src, "--dataset", "d", "--method", "sftp")

    unknown = env.run(machine, *args)
    assert unknown.returncode != 0
    assert "unknown host key" in unknown.stderr and "--accept-new-host-key" in unknown.stderr
    assert "SHA256:" in unknown.stderr

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = machine.config / "known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    fake = other.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{env.host.port} {' '.join(fake)}\n")
    changed = env.run(machine, *args, "--accept-new-host-key")
    assert changed.returncode != 0
    assert "changed" in changed.stderr
    real = subprocess.run(
        ["ssh-keygen", "-lf", str(env.host.host_key.with_suffix(".pub"))],
        capture_output=True,
        text=True,
    ).stdout.split()[1]
    offered = subprocess.run(
        ["ssh-keygen", "-lf", str(other.with_suffix(".pub"))], capture_output=True, text=True
    ).stdout.split()[1]
    assert real in changed.stderr and offered in changed.stderr


def test_sweep_verifies_an_upload_whose_complete_never_came(env: Env) -> None:
    machine = env.approved("scope-sweep")
    data = os.urandom(300_000)
    with env.api(machine) as api:
        (answer,) = api.post(
            "/api/v1/datafiles/batch",
            json={
                "method": "sftp",
                "files": [{"dataset": "d", "filename": "f.bin", "size": len(data)}],
            },
        ).json()["files"]
        path = Path(answer["sftp_path"])
        assert path.is_relative_to(env.staging)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Half of it as a partial: reported as uploading with the bytes seen.
        Path(str(path) + ".part").write_bytes(data[:1000])
        row = wait_for(
            lambda: (
                (r := api.get(f"/api/v1/datafiles/{answer['id']}").json())["bytes_staged"] == 1000
                and r
            ),
            what="the sweep to report the partial bytes",
        )
        assert row["state"] == "uploading"
        os.unlink(str(path) + ".part")
        path.write_bytes(data)
        row = wait_for(
            lambda: (
                (r := api.get(f"/api/v1/datafiles/{answer['id']}").json())["state"] == "stored"
                and r
            ),
            what="the sweep to verify the whole file",
        )
        assert row["checksum_source"] == "server"
        assert content(api, answer["id"]) == data


def test_export_keys_file_works_with_sshd(env: Env, tmp_path: Path) -> None:
    machine = env.approved("scope-export")
    out = env.base / "authorized_keys"
    env.admin("export-keys", "--box", BOX, "--out", str(out))
    lines = out.read_text().splitlines()
    mine = [line for line in lines if f"stagebox:{machine.name}:" in line]
    assert len(mine) == 1
    assert mine[0].startswith('restrict,command="internal-sftp -d ')
    assert env.admin("authorized-keys", STAGING_USER).splitlines() == lines
    host = StagingHost(env.base / "sshd-file", keys_file=out)
    host.start()
    try:

        async def login() -> None:
            conn = await asyncssh.connect(
                "127.0.0.1",
                host.port,
                username=STAGING_USER,
                client_keys=[str(machine.key)],
                known_hosts=None,
                agent_path=None,
            )
            async with conn, conn.start_sftp_client() as sftp:
                assert await sftp.exists(str(env.staging))

        asyncssh_run(login())
    finally:
        host.stop()


# -- bad input -----------------------------------------------------------------


def store_files(env: Env) -> set[str]:
    return {str(p) for p in (env.server.data_dir / "store").rglob("*") if p.is_file()}


def test_symlink_planted_in_staging_is_refused(env: Env) -> None:
    machine = env.approved("bad-symlink")
    secret = Path("/etc/passwd").read_bytes()
    before = store_files(env)
    with env.api(machine) as api:
        answer = register_sftp(api, "d", "passwd", len(secret))
        path = Path(answer["sftp_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to("/etc/passwd")
        reply = complete(api, answer["id"], secret)
        assert reply.status_code == 200
        row = settled(api, answer["id"])
        assert row["state"] == "failed"
        assert "symlink" in row["error"]
        assert api.get(f"/api/v1/datafiles/{answer['id']}/content").status_code == 409
    assert store_files(env) == before
    assert path.is_symlink()  # nothing followed, nothing moved


def test_symlinked_directory_in_staging_is_refused(env: Env) -> None:
    machine = env.approved("bad-symdir")
    secret = Path("/etc/hostname").read_bytes()
    before = store_files(env)
    with env.api(machine) as api:
        answer = register_sftp(api, "d", "hostname", len(secret))
        path = Path(answer["sftp_path"])
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        path.parent.symlink_to("/etc")
        assert complete(api, answer["id"], secret).status_code == 200
        row = settled(api, answer["id"])
        assert row["state"] == "failed" and "symlink" in row["error"]
    assert store_files(env) == before


def test_fifo_planted_in_staging_is_refused_without_hanging(env: Env) -> None:
    machine = env.approved("bad-fifo")
    with env.api(machine) as api:
        answer = register_sftp(api, "d", "pipe", 10)
        path = Path(answer["sftp_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        assert complete(api, answer["id"], b"0123456789").status_code == 200
        row = settled(api, answer["id"])
        assert row["state"] == "failed" and "not a regular file" in row["error"]


def test_complete_on_another_uploaders_datafile_is_404(env: Env) -> None:
    owner = env.approved("bad-owner")
    other = env.approved("bad-intruder")
    with env.api(owner) as api:
        answer = register_sftp(api, "d", "mine.bin", 4)
    Path(answer["sftp_path"]).parent.mkdir(parents=True, exist_ok=True)
    Path(answer["sftp_path"]).write_bytes(b"mine")
    with env.api(other) as api:
        reply = complete(api, answer["id"], b"mine")
        assert reply.status_code == 404
    with env.api(owner) as api:
        assert api.get(f"/api/v1/datafiles/{answer['id']}").json()["state"] == "registered"


def test_staged_size_different_from_registered_fails_with_the_reason(env: Env) -> None:
    machine = env.approved("bad-size")
    with env.api(machine) as api:
        answer = register_sftp(api, "d", "short.bin", 100)
        path = Path(answer["sftp_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 60)
        reply = complete(api, answer["id"], b"x" * 60)
        assert reply.status_code == 200
        row = reply.json()
        assert row["state"] == "failed"
        assert "size mismatch: registered 100 bytes, staged 60" in row["error"]
        assert row["bytes_staged"] < 100


def test_complete_before_any_bytes_is_a_conflict(env: Env) -> None:
    machine = env.approved("bad-early")
    with env.api(machine) as api:
        answer = register_sftp(api, "d", "later.bin", 10)
        reply = complete(api, answer["id"], b"0123456789")
        assert reply.status_code == 409
        assert "nothing is staged" in reply.json()["detail"]


def test_private_key_readable_by_others_is_refused(env: Env, tmp_path: Path) -> None:
    machine = env.approved("bad-keymode")
    machine.key.chmod(0o644)
    src = tree(tmp_path / "src", {"a.bin": b"abc"})
    proc = env.run(machine, *env.upload_args(src, "--dataset", "d", "--method", "sftp"))
    assert proc.returncode == 2
    assert f"chmod 600 {machine.key}" in proc.stderr
    assert "0644" in proc.stderr


@pytest.mark.parametrize(
    "public_key",
    [
        "",
        "ssh-ed25519",
        "ssh-ed25519 not-base64!!",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== truncated",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "ssh-ed25519 AAAA\nssh-ed25519 AAAA",
    ],
)
def test_malformed_public_key_is_400(env: Env, public_key: str) -> None:
    machine = env.machine(f"bad-pub-{abs(hash(public_key)) % 10**8}")
    with env.api(machine) as api:
        reply = api.post("/api/v1/registrations", json={"public_key": public_key})
        assert reply.status_code == 400, reply.text
        assert reply.json()["field"] == "public_key"
        assert api.get("/api/v1/registrations").json() == []


def test_dsa_and_short_rsa_keys_are_refused(env: Env, tmp_path: Path) -> None:
    machine = env.machine("bad-rsa")
    key = tmp_path / "rsa"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(key)], check=True
    )
    with env.api(machine) as api:
        reply = api.post(
            "/api/v1/registrations", json={"public_key": key.with_suffix(".pub").read_text()}
        )
        assert reply.status_code == 400
        assert "2048" in reply.json()["detail"]


@pytest.mark.parametrize(
    "path", ["../other/x.bundle", "/etc/passwd", ".bundles/../../x", "a\x00b", ""]
)
def test_staged_bundle_outside_own_directory_is_refused(env: Env, path: str) -> None:
    machine = env.approved(f"bad-bundle-{abs(hash(path)) % 10**8}")
    with env.api(machine) as api:
        reply = api.post("/api/v1/datafiles/bundle/staged", json={"path": path})
        assert reply.status_code == 400, reply.text
        assert reply.json()["field"] == "path"


def test_staged_bundle_symlink_is_refused(env: Env) -> None:
    machine = env.approved("bad-bundle-link")
    uuid = json.loads(env.register(machine, "--status", "--json").stdout)["uploader_uuid"]
    link = env.staging / uuid / ".bundles" / "x.bundle"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/etc/passwd")
    with env.api(machine) as api:
        reply = api.post("/api/v1/datafiles/bundle/staged", json={"path": ".bundles/x.bundle"})
        assert reply.status_code >= 400
        assert "symlink" in reply.json()["detail"]
    assert Path("/etc/passwd").exists()


def test_admin_box_and_approval_rules(env: Env) -> None:
    def admin_fails(*args: str) -> str:
        proc = subprocess.run(
            stagebox_cmd("admin", "--data-dir", str(env.server.data_dir), *args),
            capture_output=True,
            text=True,
        )
        assert proc.returncode != 0
        return proc.stderr

    assert "sftp_root" in admin_fails(
        "box",
        "add",
        "b1",
        "--role",
        "staging",
        "--path",
        str(env.base / "b1"),
        "--sftp-host",
        "h",
        "--sftp-user",
        "u",
        "--sftp-root",
        "/with space",
    )
    assert "sftp_user" in admin_fails(
        "box",
        "add",
        "b2",
        "--role",
        "staging",
        "--path",
        str(env.base / "b2"),
        "--sftp-host",
        "h",
    )
    retired = admin_fails(
        "box", "add", "b5", "--role", "staging", "--path", str(env.base / "b5"),
        "--sftp-host", "h", "--sftp-user", "u", "--sftp-endpoint", "openssh",
    )  # fmt: skip
    assert retired.startswith("stagebox: sftp_endpoint: openssh (sshd's internal-sftp"), retired
    assert retired.count("\n") == 1 and not (env.base / "b5").exists()
    assert "role" in admin_fails("box", "add", "b3", "--role", "attic", "--path", "/tmp/x")
    assert "path" in admin_fails("box", "add", "b4", "--role", "staging", "--path", "relative")
    machine = env.machine("bad-approve")
    env.register(machine)
    rid = str(env.request_id(machine))
    assert "sftp" in admin_fails("requests", "approve", rid, "--box", "staging")
    assert "no box" in admin_fails("requests", "approve", rid, "--box", "nope")
    assert "reason" in admin_fails("requests", "reject", rid, "--reason", " ")
    assert "no registration request" in admin_fails("requests", "approve", "99999", "--box", BOX)


def test_admin_api_needs_an_admin_token(env: Env) -> None:
    machine = env.machine("bad-admin")
    with env.api(machine) as api:
        assert api.get("/api/v1/admin/requests").status_code == 403
    admin_token = env.admin("token", "add", "ops").strip()
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=env.server.url, headers=headers, timeout=30) as api:
        boxes = api.get("/api/v1/admin/boxes").json()
        assert BOX in {b["name"] for b in boxes}
        env.register(machine)
        rid = env.request_id(machine)
        reply = api.post(f"/api/v1/admin/requests/{rid}/approve", json={"box": BOX})
        assert reply.status_code == 200 and reply.json()["state"] == "approved"
        keys = api.get("/api/v1/admin/authorized-keys", params={"box": BOX}).text
        assert f"stagebox:{machine.name}:{rid}" in keys
        reply = api.post(f"/api/v1/admin/requests/{rid}/reject", json={"reason": "moved"})
        assert reply.json()["state"] == "rejected"
        keys = api.get("/api/v1/admin/authorized-keys", params={"box": BOX}).text
        assert f"stagebox:{machine.name}:" not in keys
    with httpx.Client(base_url=env.server.url, timeout=30) as anonymous:
        assert anonymous.get("/api/v1/admin/boxes").status_code == 401


# -- stored bytes the staging account cannot reach ------------------------------


def test_a_handle_kept_open_across_promotion_cannot_touch_the_stored_copy(env: Env) -> None:
    """Bytes the shared account wrote are copied into the store, never renamed: the
    inode that account can still write is not the one stored."""
    machine = env.approved("kept-handle")
    data = os.urandom(200_000)
    with env.api(machine) as api:
        answer = register_sftp(api, "d", "kept.bin", len(data))
    path = answer["sftp_path"]

    async def attempt() -> None:
        conn = await _sftp_login(env, machine)
        async with conn, conn.start_sftp_client() as sftp:
            await sftp.makedirs(str(Path(path).parent), exist_ok=True)
            kept = await sftp.open(path, "wb")
            await kept.write(data, 0)
            with env.api(machine) as api:
                assert complete(api, answer["id"], data).status_code == 200
                assert settled(api, answer["id"])["state"] == "stored"
            await kept.write(b"overwritten after it was stored", 0)
            await kept.close()

    asyncssh_run(attempt())
    with env.api(machine) as api:
        assert content(api, answer["id"]) == data


def test_a_staged_file_with_another_hard_link_is_refused(env: Env) -> None:
    machine = env.approved("hard-link")
    data = os.urandom(10_000)
    with env.api(machine) as api:
        answer = register_sftp(api, "d", "linked.bin", len(data))
        path = Path(answer["sftp_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.link(path, path.with_name("second-name"))
        assert complete(api, answer["id"], data).status_code == 200
        row = settled(api, answer["id"])
        assert row["state"] == "failed" and "hard link" in row["error"], row
