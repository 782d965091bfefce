"""A facility whose staging area is an S3 bucket: tus PATCHes land in one multipart
upload, one request after another, and the file ends verified and stored in the
local permanent box. A server restart mid-upload sends the client back to byte 0."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from stagebox.storage.s3 import MIN_PART, S3Backend
from tests.s3 import CREDENTIALS, MotoServer, leftovers, running_moto
from tests.servers import StageboxServer, stagebox_cmd

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream"}
MiB = 1 << 20
CHUNK = 3 * MiB  # PATCHes that straddle the 5 MiB parts


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def bucket(moto: MotoServer) -> S3Backend:
    """A fresh bucket, seen through the backend the server will build for it."""
    box = S3Backend("s3-staging", f"staging-{uuid.uuid4().hex[:12]}", endpoint_url=moto.url)
    box.client.create_bucket(Bucket=box.bucket)
    return box


@pytest.fixture
def server(tmp_path: Path, state_dir: Path, bucket: S3Backend) -> Iterator[StageboxServer]:
    """A server whose http uploads are staged in ``bucket``, with 5 MiB parts."""
    srv = StageboxServer(
        tmp_path / "server-data",
        env={
            "STAGEBOX_SWEEP_INTERVAL": "1",
            "STAGEBOX_STAGING_BOX": bucket.name,
            "STAGEBOX_S3_PART_SIZE": str(MIN_PART),
            **CREDENTIALS,
        },
    )
    srv.admin(
        "box", "add", bucket.name, "--role", "staging", "--backend", "s3",
        "--bucket", bucket.bucket, "--endpoint-url", str(bucket.endpoint_url),
    )  # fmt: skip
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def api(server: StageboxServer) -> Iterator[httpx.Client]:
    token = server.add_uploader("alice")
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        yield client


def create_upload(api: httpx.Client, length: int, filename: str) -> str:
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"filename": filename, "dataset": "tomo-42"}.items()
    )
    resp = api.post(
        "/files/", headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": meta}
    )
    assert resp.status_code == 201, resp.text
    return resp.headers["Location"]


def patch(api: httpx.Client, url: str, offset: int, body: bytes, **headers: str) -> httpx.Response:
    return api.patch(
        url, content=body, headers={**TUS, **OFFSET_TYPE, "Upload-Offset": str(offset), **headers}
    )


def send(api: httpx.Client, url: str, data: bytes, start: int, end: int) -> None:
    """PATCH ``data[start:end]`` in CHUNK-sized requests, each checked."""
    for offset in range(start, end, CHUNK):
        resp = patch(api, url, offset, data[offset : min(offset + CHUNK, end)])
        assert resp.status_code == 204, resp.text
        assert int(resp.headers["Upload-Offset"]) == min(offset + CHUNK, end)


def head_offset(api: httpx.Client, url: str) -> int:
    resp = api.head(url, headers=TUS)
    assert resp.status_code == 200, resp.status_code
    return int(resp.headers["Upload-Offset"])


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_stored(api: httpx.Client, filename: str) -> dict:
    deadline = time.monotonic() + 30
    record: dict = {}
    while time.monotonic() < deadline:
        items = api.get("/api/v1/datafiles", params={"dataset": "tomo-42"}).json()["items"]
        record = next((i for i in items if i["filename"] == filename), {})
        if record.get("state") in ("stored", "failed"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"{filename} not settled: {record}")


def stored_bytes(server: StageboxServer) -> list[bytes]:
    return [p.read_bytes() for p in (server.data_dir / "store").rglob("*") if p.is_file()]


def objects(box: S3Backend) -> list[str]:
    return [o["Key"] for o in box.client.list_objects_v2(Bucket=box.bucket).get("Contents", [])]


def test_tus_patches_fill_one_multipart_upload_and_the_file_is_stored(
    server: StageboxServer, api: httpx.Client, bucket: S3Backend
):
    # given an 18 MiB file, to be sent in 3 MiB PATCHes (parts are 5 MiB)
    data = os.urandom(3 * MIN_PART + 3 * MiB + 123)
    url = create_upload(api, len(data), "scan.tif")
    # when the first two PATCHes arrive
    send(api, url, data, 0, 2 * CHUNK)
    # then one multipart upload holds a part, a tail record the rest, and no object shows
    uploads, tails = leftovers(bucket)
    assert len(uploads) == 1 and len(tails) == 1
    assert objects(bucket) == tails
    assert head_offset(api, url) == 2 * CHUNK
    # and a chunk long enough to send a part, with a wrong checksum, is refused and dropped
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    bad = patch(
        api, url, 2 * CHUNK, os.urandom(2 * MIN_PART), **{"Upload-Checksum": f"sha256 {wrong}"}
    )
    assert bad.status_code == 460, bad.text
    assert head_offset(api, url) == 2 * CHUNK
    # when the rest arrives, one checked chunk among them
    good = data[2 * CHUNK : 3 * CHUNK]
    digest = base64.b64encode(hashlib.sha256(good).digest()).decode()
    resp = patch(api, url, 2 * CHUNK, good, **{"Upload-Checksum": f"sha256 {digest}"})
    assert resp.status_code == 204, resp.text
    send(api, url, data, 3 * CHUNK, len(data))
    # then the file is verified with the server's running hash and stored, byte for byte
    record = wait_stored(api, "scan.tif")
    assert record["state"] == "stored", record
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert api.get(f"/api/v1/datafiles/{record['id']}/content").content == data
    assert stored_bytes(server) == [data]
    # and the bucket is left empty: no object, no tail record, no open upload
    assert objects(bucket) == []
    assert leftovers(bucket) == ([], [])


def test_server_restart_mid_upload_sends_the_client_back_to_zero(
    server: StageboxServer, api: httpx.Client, bucket: S3Backend
):
    # given an upload two PATCHes in, its running hash in the server's memory
    data = os.urandom(2 * MIN_PART + 1000)
    url = create_upload(api, len(data), "restart.bin")
    send(api, url, data, 0, 2 * CHUNK)
    assert head_offset(api, url) == 2 * CHUNK
    # when the server dies and comes back, the hash lost with it
    server.kill()
    server.start()
    # then the staged bytes (unreadable in an open multipart upload) are dropped
    assert head_offset(api, url) == 0
    assert leftovers(bucket) == ([], [])
    # and a PATCH where the client left off is refused with the offset to use
    assert patch(api, url, 2 * CHUNK, data[2 * CHUNK : 3 * CHUNK]).status_code == 409
    # when the client sends it all again, then it is stored whole
    send(api, url, data, 0, len(data))
    record = wait_stored(api, "restart.bin")
    assert record["state"] == "stored", record
    assert stored_bytes(server) == [data]
    assert leftovers(bucket) == ([], [])


def test_stagebox_upload_of_a_tree_through_s3_staging(
    server: StageboxServer, api: httpx.Client, tmp_path: Path
):
    # given a tree with a multi-part file and small ones
    files = {"big.bin": os.urandom(2 * MIN_PART + 77), "a.txt": b"alpha", "empty": b""}
    src = tmp_path / "src"
    src.mkdir()
    for name, body in files.items():
        (src / name).write_bytes(body)
    token = api.headers["Authorization"].split()[1]
    # when the stagebox client uploads it
    proc = subprocess.run(
        stagebox_cmd(
            "upload", str(src), "--server", server.url, "--token", token, "--json",
            "--dataset", "tomo-42",
        ),
        capture_output=True,
        text=True,
    )  # fmt: skip
    # then every file is verified and stored byte for byte
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["totals"]["verified"] == 3
    for name in files:
        assert wait_stored(api, name)["state"] == "stored"
    assert sorted(stored_bytes(server)) == sorted(files.values())


def test_server_killed_mid_upload_the_stagebox_client_sends_the_file_again(
    server: StageboxServer, api: httpx.Client, bucket: S3Backend, tmp_path: Path
):
    # given a 20 MB file sent by the stagebox client at 8 MB/s
    data = os.urandom(20_000_000)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(data)
    token = api.headers["Authorization"].split()[1]
    proc = subprocess.Popen(
        stagebox_cmd(
            "upload", str(src), "--server", server.url, "--token", token, "--json",
            "--dataset", "tomo-42", "--bwlimit", "8",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for(lambda: leftovers(bucket)[0], "a part sent")
    # when the server dies mid-PATCH and comes back
    server.kill()
    server.start()
    # then the client, told offset 0, sends the file again and it is stored whole
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["files"][0]["state"] == "verified"
    assert wait_stored(api, "big.bin")["state"] == "stored"
    assert stored_bytes(server) == [data]
    # and the upload the dead server left open is aborted with the staged object
    # (the staged object is deleted once the promotion is recorded, just after)
    wait_for(lambda: leftovers(bucket) == ([], []), "the open upload aborted")
    assert objects(bucket) == []
