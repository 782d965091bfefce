"""The facility admin's story: run the server, manage uploaders, read the catalog."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from tests.integration.test_upload import make_tree, run_upload
from tests.servers import StageboxServer, stagebox_cmd


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_server_and_client_with_a_private_ca(tmp_path: Path, state_dir: Path):
    cert, key = self_signed(tmp_path)
    server = StageboxServer(
        tmp_path / "data",
        extra_args=["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        scheme="https",
        cafile=str(cert),
    )
    server.start()
    try:
        token = server.add_uploader("alice")
        src = make_tree(tmp_path / "src", {"ds/a.bin": b"over tls", "ds/b.bin": b"x" * 3_000_000})
        rc, report = run_upload(server, token, src, "--cacert", str(cert))
        assert rc == 0, report
        assert report["totals"]["verified"] == 2
        # a client that does not trust the certificate is refused
        other = make_tree(tmp_path / "other", {"ds/c.bin": b"never sent"})
        proc = subprocess.run(server_cmd(server, token, other), capture_output=True, text=True)
        assert proc.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in proc.stdout + proc.stderr
    finally:
        server.stop()


def server_cmd(server: StageboxServer, token: str, src: Path) -> list[str]:
    return stagebox_cmd("upload", str(src), "--server", server.url, "--token", token, "--json")


def test_uploader_add_list_revoke(server: StageboxServer):
    token = server.add_uploader("microscope-1")
    assert token.startswith("sbx_") and "\n" not in token
    listing = json.loads(server.admin("uploader", "list", "--json"))
    assert [(u["name"], u["state"], u["tokens"]) for u in listing] == [
        ("microscope-1", "active", 1)
    ]
    server.admin("uploader", "revoke", "microscope-1")
    listing = json.loads(server.admin("uploader", "list", "--json"))
    assert listing[0]["state"] == "revoked"
    health = httpx.get(
        f"{server.url}/api/v1/datafiles", headers={"Authorization": f"Bearer {token}"}
    )
    assert health.status_code == 401


def test_duplicate_uploader_name_is_refused(server: StageboxServer):
    server.add_uploader("dup")
    proc = subprocess.run(
        stagebox_cmd("admin", "--data-dir", str(server.data_dir), "uploader", "add", "dup"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "already exists" in proc.stderr


def test_listing_is_paginated_and_filtered(api: httpx.Client):
    files = [
        {"dataset": ds, "directory": "", "filename": f"f{i}", "size": 10, "mtime": 1.0}
        for i in range(5)
        for ds in ("a", "b")
    ]
    assert api.post("/api/v1/datafiles/batch", json={"files": files}).status_code == 200
    seen, cursor = [], None
    while True:
        params = {"dataset": "a", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/datafiles", params=params).json()
        assert len(page["items"]) <= 2
        seen += [(i["dataset"], i["filename"], i["state"]) for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [("a", f"f{i}", "registered") for i in range(5)]
    assert api.get("/api/v1/datafiles", params={"state": "stored"}).json()["items"] == []
    bad = api.get("/api/v1/datafiles", params={"state": "lost"})
    assert bad.status_code == 400 and bad.json()["field"] == "state"


def test_openapi_is_published(server: StageboxServer):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/api/v1/datafiles/batch" in spec["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
