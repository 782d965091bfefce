"""A receipt the user can ask for (``stagebox verify``) and fixity audits of the store."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.integration.test_upload import all_datafiles, make_tree, run_upload
from tests.servers import StageboxServer, stagebox_cmd


def run_verify(server: StageboxServer, token: str, src: Path, *args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        stagebox_cmd("verify", str(src), "--server", server.url, "--token", token, "--json", *args),
        capture_output=True,
        text=True,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def run_audit(server: StageboxServer, *args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        stagebox_cmd("admin", "--data-dir", str(server.data_dir), "audit", "--json", *args),
        capture_output=True,
        text=True,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def stored_path(server: StageboxServer, api: httpx.Client, filename: str) -> Path:
    """Where the store keeps the newest version of ``filename`` (found by its bytes' key)."""
    (item,) = [i for i in all_datafiles(api) if i["filename"] == filename]
    matches = (server.data_dir / "store").rglob(filename)
    (path,) = [p for p in matches if p.is_file() and f"/v{item['version']}/" in str(p)]
    return path


def states(report: dict) -> dict[str, str]:
    return {f["filename"]: f["state"] for f in report["files"]}


def test_verify_after_upload_then_audit_finds_a_deleted_and_a_flipped_file(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    # given a tree uploaded in full
    layout = {
        "a.txt": b"alpha",
        "b.bin": os.urandom(200_000),
        "c.bin": os.urandom(3 << 20),
        "sub/d.txt": b"delta",
    }
    src = make_tree(tmp_path / "src", layout)
    assert run_upload(server, token, src, "--dataset", "d")[0] == 0
    # then the receipt says every file is stored, and exits 0
    rc, receipt = run_verify(server, token, src, "--dataset", "d")
    assert rc == 0, receipt
    assert set(states(receipt).values()) == {"stored"}
    assert receipt["totals"]["stored"] == 4
    # and an audit of everything finds every object ok
    rc, audit = run_audit(server, "--all")
    assert (rc, audit["ok"], audit["corrupt"], audit["missing"]) == (0, 4, 0, 0), audit

    # when one stored object is deleted and one byte of another is flipped
    stored_path(server, api, "b.bin").unlink()
    flipped = stored_path(server, api, "c.bin")
    with flipped.open("r+b") as f:
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 0x01]))
    # then the receipt still says stored (nothing has looked at the store yet) ...
    assert run_verify(server, token, src, "--dataset", "d")[0] == 0
    # ... and the audit reports them missing and corrupt, exit 1
    rc, audit = run_audit(server, "--all")
    assert rc == 1, audit
    assert (audit["ok"], audit["corrupt"], audit["missing"]) == (2, 1, 1), audit
    found = {Path(f["key"]).name: f["result"] for f in audit["findings"]}
    assert found == {"b.bin": "missing", "c.bin": "corrupt"}
    # and the API marks them so
    fixity = {i["filename"]: i["fixity"] for i in all_datafiles(api)}
    assert fixity == {"a.txt": "ok", "b.bin": "missing", "c.bin": "corrupt", "d.txt": "ok"}
    # and the receipt names both and exits 1
    rc, receipt = run_verify(server, token, src, "--dataset", "d")
    assert rc == 1, receipt
    assert states(receipt) == {
        "a.txt": "stored",
        "b.bin": "missing",
        "c.bin": "corrupt",
        "d.txt": "stored",
    }

    # when the uploader runs again, the lost files are sent again as new versions
    rc, report = run_upload(server, token, src, "--dataset", "d")
    assert rc == 0, report
    assert states(report) == {
        "a.txt": "skipped",
        "b.bin": "verified",
        "c.bin": "verified",
        "d.txt": "skipped",
    }
    # then the receipt is whole again; the corrupt version 1 stays marked, not repaired
    assert run_verify(server, token, src, "--dataset", "d")[0] == 0
    every = api.get("/api/v1/datafiles", params={"dataset": "d", "versions": "all"}).json()
    marked = {(i["filename"], i["version"]): i["fixity"] for i in every["items"]}
    assert marked[("c.bin", 1)] == "corrupt"
    assert marked[("c.bin", 2)] is None


def test_verify_names_differs_missing_and_in_progress(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    src = make_tree(tmp_path / "src", {"same.txt": b"same", "changed.txt": b"before"})
    assert run_upload(server, token, src, "--dataset", "d")[0] == 0
    (src / "changed.txt").write_bytes(b"after!")
    (src / "new.txt").write_bytes(b"never uploaded")
    # a registered-but-unsent file is in progress
    (src / "pending.bin").write_bytes(b"p" * 1000)
    api.post(
        "/api/v1/datafiles/batch",
        json={"files": [{"dataset": "d", "filename": "pending.bin", "size": 1000}]},
    ).raise_for_status()
    rc, receipt = run_verify(server, token, src, "--dataset", "d")
    assert rc == 1
    assert states(receipt) == {
        "same.txt": "stored",
        "changed.txt": "differs",
        "new.txt": "missing",
        "pending.bin": "in progress",
    }
    # and another uploader's token sees none of alice's files as stored
    bob = server.add_uploader("bob")
    rc, receipt = run_verify(server, bob, src, "--dataset", "d")
    assert rc == 1
    assert set(states(receipt).values()) == {"missing"}


def test_the_server_audits_in_the_background_and_marks_a_corrupt_file(tmp_path: Path):
    # given a server that audits whatever has gone unchecked for a moment, every half second
    server = StageboxServer(
        tmp_path / "server-data",
        env={
            "STAGEBOX_SWEEP_INTERVAL": "1",
            "STAGEBOX_AUDIT_INTERVAL_DAYS": "0.00001",  # under a second
            "STAGEBOX_AUDIT_CHECK_INTERVAL": "0.5",
        },
    )
    server.start()
    try:
        token = server.add_uploader("alice")
        src = make_tree(tmp_path / "src", {"a.bin": os.urandom(100_000), "b.txt": b"bee"})
        assert run_upload(server, token, src, "--dataset", "d")[0] == 0
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as api:
            wait = time.monotonic() + 20
            while {i["fixity"] for i in all_datafiles(api)} != {"ok"}:
                assert time.monotonic() < wait, all_datafiles(api)
                time.sleep(0.2)
            # when a stored file's bytes are spoilt behind the server's back
            path = stored_path(server, api, "a.bin")
            path.write_bytes(b"\0" * 100_000)
            # then a later background pass marks it corrupt, and the other stays ok
            while {i["filename"]: i["fixity"] for i in all_datafiles(api)}["a.bin"] != "corrupt":
                assert time.monotonic() < wait + 20, all_datafiles(api)
                time.sleep(0.2)
            assert {i["filename"]: i["fixity"] for i in all_datafiles(api)}["b.txt"] == "ok"
    finally:
        server.stop()
