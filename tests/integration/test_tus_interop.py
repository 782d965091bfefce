"""A facility user's story: a stock tus client (tuspy), not stagebox's own, uploads a
file to /files/, and the file ends verified, stored and readable back byte for byte."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client

from tests.servers import StageboxServer

KiB = 1 << 10
MiB = 1 << 20


def tuspy_upload(
    server: StageboxServer,
    token: str,
    path: Path,
    metadata: dict[str, str],
    chunk_size: int | None = None,
    upload_checksum: bool = False,
) -> str:
    """Upload ``path`` with tuspy exactly as its README shows; returns the upload URL."""
    client = tus_client.TusClient(
        server.url + "/files/", headers={"Authorization": "Bearer " + token}
    )
    options: dict[str, object] = {"metadata": metadata, "upload_checksum": upload_checksum}
    if chunk_size is not None:
        options["chunk_size"] = chunk_size
    uploader = client.uploader(file_path=str(path), **options)
    uploader.upload()
    assert uploader.offset == path.stat().st_size
    return str(uploader.url)


def wait_until_settled(api: httpx.Client, dataset: str, filename: str) -> dict:
    """Poll the dataset's listing until the file is stored or failed (10 s at most)."""
    deadline = time.monotonic() + 10
    seen: list[dict] = []
    while time.monotonic() < deadline:
        resp = api.get("/api/v1/datafiles", params={"dataset": dataset})
        assert resp.status_code == 200, resp.text
        seen = [d for d in resp.json()["items"] if d["filename"] == filename]
        if seen and seen[0]["state"] in ("stored", "failed"):
            return seen[0]
        time.sleep(0.05)
    raise AssertionError(f"{dataset}/{filename} did not settle within 10 s: {seen}")


def stored_bytes(server: StageboxServer) -> list[bytes]:
    store = server.data_dir / "store"
    return [p.read_bytes() for p in store.rglob("*") if p.is_file()] if store.exists() else []


@pytest.mark.parametrize(
    ("chunk_size", "declare_sha256", "upload_checksum"),
    [
        (None, True, False),
        (None, False, False),
        (64 * KiB, True, False),
        (64 * KiB, False, True),
    ],
    ids=[
        "one-chunk-declared-sha256",
        "one-chunk-server-sha256",
        "64KiB-chunks-declared-sha256",
        "64KiB-chunks-with-Upload-Checksum",
    ],
)
def test_tuspy_upload_ends_stored_and_reads_back(
    server: StageboxServer,
    token: str,
    api: httpx.Client,
    tmp_path: Path,
    chunk_size: int | None,
    declare_sha256: bool,
    upload_checksum: bool,
):
    # given a ~1 MiB file (not a multiple of the chunk size) and tus metadata for it
    data = os.urandom(MiB + 12_345)
    path = tmp_path / "scan-0001.tif"
    path.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    metadata = {"filename": "scan-0001.tif", "dataset": "tomo-42", "directory": "raw/day1"}
    if declare_sha256:
        metadata["sha256"] = sha256

    # when tuspy uploads it, in one PATCH or in 64 KiB PATCHes
    tuspy_upload(server, token, path, metadata, chunk_size, upload_checksum)

    # then the datafile ends stored with the right digest, credited to whoever declared it
    record = wait_until_settled(api, "tomo-42", "scan-0001.tif")
    assert record["state"] == "stored", record
    assert (record["directory"], record["size"]) == ("raw/day1", len(data))
    assert record["sha256"] == sha256
    assert record["checksum_source"] == ("client" if declare_sha256 else "server")
    assert record["error"] is None

    # and the content reads back whole, and a range reads back exactly
    content = api.get(f"/api/v1/datafiles/{record['id']}/content")
    assert content.status_code == 200
    assert content.content == data
    ranged = api.get(f"/api/v1/datafiles/{record['id']}/content", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.content == data[10:20]
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert stored_bytes(server) == [data]


def test_tuspy_upload_without_directory_lands_at_dataset_top(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    # given a small file and metadata with only filename and dataset
    data = os.urandom(300 * KiB)
    path = tmp_path / "notes.txt"
    path.write_bytes(data)

    # when tuspy uploads it in 64 KiB chunks
    tuspy_upload(server, token, path, {"filename": "notes.txt", "dataset": "tomo-42"}, 64 * KiB)

    # then it is stored at the dataset's top level with the server's own digest
    record = wait_until_settled(api, "tomo-42", "notes.txt")
    assert record["state"] == "stored", record
    assert record["directory"] == ""
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["checksum_source"] == "server"
    assert api.get(f"/api/v1/datafiles/{record['id']}/content").content == data


def test_tuspy_upload_with_wrong_declared_sha256_fails_and_stores_nothing(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    # given a file whose declared sha256 is someone else's
    data = os.urandom(MiB)
    path = tmp_path / "scan-0002.tif"
    path.write_bytes(data)
    wrong = hashlib.sha256(data + b"tampered").hexdigest()
    metadata = {"filename": "scan-0002.tif", "dataset": "tomo-42", "sha256": wrong}

    # when tuspy uploads every byte of it
    url = tuspy_upload(server, token, path, metadata, chunk_size=256 * KiB)

    # then the datafile ends failed, saying the sha256 did not match, and nothing is stored
    record = wait_until_settled(api, "tomo-42", "scan-0002.tif")
    assert record["state"] == "failed", record
    assert "sha256" in record["error"], record
    assert wrong in record["error"], record
    assert record["sha256"] is None
    assert stored_bytes(server) == []
    content = api.get(f"/api/v1/datafiles/{record['id']}/content")
    assert content.status_code == 409, content.text
    # and the upload cannot be continued as though it were fine
    more = api.patch(
        url,
        content=b"x",
        headers={
            "Tus-Resumable": "1.0.0",
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(len(data)),
        },
    )
    assert more.status_code == 409, more.text
