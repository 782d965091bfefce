"""A careless or hostile client's story: every bad request is refused by name.

Each test first has something safely stored (the ``kept`` fixture uploads and
stores a file through the tus endpoint), sends one kind of bad input, checks the
status and that the error names the field and the rule, then checks that
nothing on disk or in the catalog moved.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stagebox.server.api.streaming import PIECE
from stagebox.wire import BUNDLE_CONTENT_TYPE, encode_bundle_header
from tests.servers import StageboxServer

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream"}
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
NOT_UTF8 = base64.b64encode(b"\xff\xfe").decode()
KiB = 1 << 10


# --- helpers -------------------------------------------------------------------------------


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def metadata(**fields: str) -> str:
    return ",".join(f"{key} {b64(value)}" for key, value in fields.items())


def create_upload(api: httpx.Client, length: int, **fields: str) -> str:
    """POST /files/ with the given metadata; returns the upload URL."""
    resp = api.post(
        "/files/",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata(**fields)},
    )
    assert resp.status_code == 201, resp.text
    return resp.headers["Location"]


def patch(
    client: httpx.Client, url: str, offset: int, body: bytes | Iterator[bytes], **headers: str
) -> httpx.Response:
    return client.patch(
        url,
        content=body,
        headers={**TUS, **OFFSET_TYPE, "Upload-Offset": str(offset), **headers},
    )


def head_offset(api: httpx.Client, url: str) -> int:
    resp = api.head(url, headers=TUS)
    assert resp.status_code == 200, resp.status_code
    return int(resp.headers["Upload-Offset"])


def staged_size(server: StageboxServer, url: str) -> int | None:
    """Bytes of the upload's staging file on disk, None if there is none."""
    token = url.rsplit("/", 1)[1]
    found = [p for p in (server.data_dir / "staging").rglob(token) if p.is_file()]
    assert len(found) <= 1, found
    return found[0].stat().st_size if found else None


def files_under(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def disk(server: StageboxServer) -> dict[str, dict[str, bytes]]:
    """Every staged and stored byte, by path."""
    return {
        "staging": files_under(server.data_dir / "staging"),
        "store": files_under(server.data_dir / "store"),
    }


def all_datafiles(api: httpx.Client) -> list[dict]:
    items, cursor = [], None
    while True:
        resp = api.get("/api/v1/datafiles", params={"cursor": cursor} if cursor else {})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def snapshot(server: StageboxServer, api: httpx.Client) -> tuple[dict, list[dict]]:
    return disk(server), all_datafiles(api)


def wait_for_datafile(
    api: httpx.Client, dataset: str, filename: str, states: tuple[str, ...] = ("stored", "failed")
) -> dict:
    deadline = time.monotonic() + 10
    found: list[dict] = []
    while time.monotonic() < deadline:
        resp = api.get("/api/v1/datafiles", params={"dataset": dataset})
        found = [d for d in resp.json()["items"] if d["filename"] == filename]
        if found and found[0]["state"] in states:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"{dataset}/{filename} never reached {states}: {found}")


def register(api: httpx.Client, *files: dict) -> httpx.Response:
    return api.post("/api/v1/datafiles/batch", json={"files": list(files)})


def item(filename: str, size: int, dataset: str = "ds", directory: str = "") -> dict:
    return {
        "dataset": dataset,
        "directory": directory,
        "filename": filename,
        "size": size,
        "mtime": 1_700_000_000.0,
    }


def assert_invalid(resp: httpx.Response, field: str, rule: str) -> None:
    """A 400 whose body names the field and the rule it broke."""
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["field"] == field, body
    assert rule in body["rule"], body
    assert field in body["detail"] and rule in body["detail"], body


def assert_error(resp: httpx.Response, status: int, *words: str) -> None:
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    for word in words:
        assert word in detail, detail


def bundle(manifest: dict, payload: bytes = b"") -> bytes:
    return encode_bundle_header(manifest) + payload


def post_bundle(api: httpx.Client, body: bytes, content_type: str = BUNDLE_CONTENT_TYPE):
    return api.post(
        "/api/v1/datafiles/bundle", content=body, headers={"Content-Type": content_type}
    )


@dataclass
class Kept:
    """A file alice stored before the bad request arrived."""

    id: int
    data: bytes
    record: dict


@pytest.fixture
def kept(server: StageboxServer, api: httpx.Client) -> Kept:
    data = os.urandom(50 * KiB)
    url = create_upload(api, len(data), dataset="kept", filename="keep.bin")
    assert patch(api, url, 0, data).status_code == 204
    record = wait_for_datafile(api, "kept", "keep.bin")
    assert record["state"] == "stored", record
    assert list(disk(server)["store"].values()) == [data]
    return Kept(record["id"], data, record)


def assert_kept_intact(server: StageboxServer, api: httpx.Client, kept: Kept) -> None:
    assert list(disk(server)["store"].values()).count(kept.data) == 1
    assert api.get(f"/api/v1/datafiles/{kept.id}").json() == {**kept.record, "upload_url": None}
    assert api.get(f"/api/v1/datafiles/{kept.id}/content").content == kept.data


@pytest.fixture
def bob(server: StageboxServer, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.add_uploader('bob')}"},
        timeout=30,
    ) as client:
        yield client


# --- tokens --------------------------------------------------------------------------------


def test_unknown_token_is_refused_on_api_and_tus(
    server: StageboxServer, api: httpx.Client, kept: Kept
):
    # given an upload in progress with 40 bytes staged
    url = create_upload(api, 100, dataset="ds", filename="partial.bin")
    assert patch(api, url, 0, b"a" * 40).status_code == 204
    before = snapshot(server, api)

    # when a client with a token the server never issued tries the API and the upload
    with httpx.Client(
        base_url=server.url, headers={"Authorization": "Bearer sbx_never-issued"}, timeout=30
    ) as stranger:
        answers = {
            "list": stranger.get("/api/v1/datafiles"),
            "register": register(stranger, item("new.bin", 5)),
            "PATCH": patch(stranger, url, 40, b"b" * 10),
        }
        head = stranger.head(url, headers=TUS)

    # then every request is 401 naming the token, and nothing moved
    for what, resp in answers.items():
        assert resp.status_code == 401, what
        assert "token" in resp.json()["detail"], what
        assert resp.headers["WWW-Authenticate"] == "Bearer", what
    assert head.status_code == 401
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert snapshot(server, api) == before
    assert staged_size(server, url) == 40
    assert_kept_intact(server, api, kept)


def test_request_without_bearer_token_is_refused(server: StageboxServer, kept: Kept, api):
    # given no Authorization header at all
    # when the API is called
    resp = httpx.get(f"{server.url}/api/v1/datafiles/{kept.id}")
    # then it is 401 saying what is missing
    assert_error(resp, 401, "Authorization")
    assert_kept_intact(server, api, kept)


def test_revoked_token_is_refused_on_api_and_tus(
    server: StageboxServer, api: httpx.Client, kept: Kept
):
    # given an upload in progress, then alice's uploader is revoked
    url = create_upload(api, 100, dataset="ds", filename="partial.bin")
    assert patch(api, url, 0, b"a" * 40).status_code == 204
    before = disk(server)
    server.admin("uploader", "revoke", "alice")

    # when alice's old token is used on the API and on the upload
    listing = api.get("/api/v1/datafiles")
    content = api.get(f"/api/v1/datafiles/{kept.id}/content")
    head = api.head(url, headers=TUS)
    more = patch(api, url, 40, b"b" * 10)

    # then all are 401 and nothing on disk changed
    for resp in (listing, content, more):
        assert_error(resp, 401, "revoked")
    assert head.status_code == 401
    assert disk(server) == before
    assert staged_size(server, url) == 40


# --- other uploaders -----------------------------------------------------------------------


def test_other_uploaders_upload_url_is_not_found(
    server: StageboxServer, api: httpx.Client, bob: httpx.Client, kept: Kept
):
    # given alice's upload in progress with 40 bytes staged
    url = create_upload(api, 100, dataset="ds", filename="partial.bin")
    assert patch(api, url, 0, b"a" * 40).status_code == 204
    before = snapshot(server, api)

    # when bob uses alice's upload URL
    head = bob.head(url, headers=TUS)
    more = patch(bob, url, 40, b"b" * 10)
    delete = bob.delete(url, headers=TUS)

    # then each is 404, exactly as for an upload that does not exist
    assert head.status_code == 404
    assert_error(more, 404, "no upload")
    assert_error(delete, 404, "no upload")
    # and alice's upload is untouched and still hers to finish
    assert snapshot(server, api) == before
    assert head_offset(api, url) == 40
    assert staged_size(server, url) == 40
    assert patch(api, url, 40, b"c" * 60).status_code == 204
    assert_kept_intact(server, api, kept)


def test_other_uploaders_datafile_is_not_found(
    server: StageboxServer, api: httpx.Client, bob: httpx.Client, kept: Kept
):
    # given alice's stored datafile
    before = snapshot(server, api)

    # when bob asks for it, its content, or declares its digests
    record = bob.get(f"/api/v1/datafiles/{kept.id}")
    content = bob.get(f"/api/v1/datafiles/{kept.id}/content")
    ranged = bob.get(f"/api/v1/datafiles/{kept.id}/content", headers={"Range": "bytes=0-9"})
    complete = bob.post(f"/api/v1/datafiles/{kept.id}/complete", json={"sha256": "0" * 64})

    # then each is 404 and bob sees no trace of it
    for resp in (record, content, ranged, complete):
        assert_error(resp, 404, f"no datafile {kept.id}")
    assert bob.get("/api/v1/datafiles").json()["items"] == []
    assert snapshot(server, api) == before
    assert_kept_intact(server, api, kept)


# --- offsets and lengths -------------------------------------------------------------------


@pytest.mark.parametrize("wrong", [0, 39, 41, 100], ids=["zero", "behind", "ahead", "at-end"])
def test_patch_at_wrong_offset_is_a_conflict_that_tells_the_real_offset(
    server: StageboxServer, api: httpx.Client, kept: Kept, wrong: int
):
    # given an upload of 100 bytes with 40 staged
    url = create_upload(api, 100, dataset="ds", filename="partial.bin")
    assert patch(api, url, 0, b"a" * 40).status_code == 204
    before = snapshot(server, api)

    # when a chunk is offered at another offset
    resp = patch(api, url, wrong, b"b" * (100 - wrong if wrong < 100 else 1))

    # then 409 says both offsets and carries the real one, and nothing was written
    assert_error(resp, 409, "Upload-Offset", str(wrong), "40")
    assert resp.headers["Upload-Offset"] == "40"
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert snapshot(server, api) == before
    assert staged_size(server, url) == 40
    assert head_offset(api, url) == 40


@pytest.mark.parametrize("header", ["Upload-Offset", "Upload-Length"])
def test_non_ascii_digits_in_tus_numbers_are_a_bad_request(
    server: StageboxServer, api: httpx.Client, kept: Kept, header: str
):
    url = create_upload(api, 10, dataset="ds", filename="digits.bin")
    before = snapshot(server, api)
    headers = {**TUS, "Content-Type": "application/offset+octet-stream"}
    if header == "Upload-Offset":
        resp = api.patch(url, content=b"x", headers={**headers, header: "\xb2".encode("latin-1")})
    else:
        resp = api.post(
            "/files/",
            headers={
                **TUS,
                header: "\xb2".encode("latin-1"),
                "Upload-Metadata": metadata(dataset="ds", filename="n.bin"),
            },
        )
    assert_invalid(resp, header.lower(), "non-negative integer")
    assert snapshot(server, api) == before


def test_patch_past_upload_length_writes_nothing(
    server: StageboxServer, api: httpx.Client, kept: Kept
):
    # given an upload of 100 bytes with 40 staged
    url = create_upload(api, 100, dataset="ds", filename="partial.bin")
    assert patch(api, url, 0, b"a" * 40).status_code == 204
    before = snapshot(server, api)

    # when a PATCH declares a Content-Length that runs 1 byte past Upload-Length
    resp = patch(api, url, 40, b"b" * 61)

    # then it is 413 naming the length, and not one byte was written
    assert_error(resp, 413, "Upload-Length", "100")
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert staged_size(server, url) == 40
    assert head_offset(api, url) == 40
    assert snapshot(server, api) == before
    # and the right chunk is still accepted afterwards
    assert patch(api, url, 40, b"b" * 60).status_code == 204
    assert wait_for_datafile(api, "ds", "partial.bin")["state"] == "stored"
    assert_kept_intact(server, api, kept)


@pytest.mark.parametrize(
    ("length", "staged", "sent"),
    # the second case crosses the server's receive pieces (so whole pieces were
    # already written, direct I/O included, and must be discarded)
    [(100, 40, 61), (2 * PIECE + PIECE // 2, 4 * KiB, 3 * PIECE)],
    ids=["small-body", "body-spanning-server-pieces"],
)
def test_chunked_patch_past_upload_length_writes_nothing(
    server: StageboxServer, api: httpx.Client, kept: Kept, length: int, staged: int, sent: int
):
    # given an upload with some bytes staged (or none)
    url = create_upload(api, length, dataset="ds", filename="partial.bin")
    data = os.urandom(length)
    if staged:
        assert patch(api, url, 0, data[:staged]).status_code == 204
    before = snapshot(server, api)

    # when a chunked body (no Content-Length) runs past Upload-Length
    body = data[staged:] + b"x" * (sent - (length - staged))

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * KiB):
            yield body[start : start + 64 * KiB]

    resp = patch(api, url, staged, pieces())

    # then it is 413, and the upload is still at its old offset: nothing written past it
    assert resp.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in resp.request.headers
    assert_error(resp, 413, "Upload-Length")
    assert head_offset(api, url) == staged
    assert (staged_size(server, url) or 0) == staged
    assert snapshot(server, api) == before
    # and the right bytes are still accepted afterwards
    assert patch(api, url, staged, data[staged:]).status_code == 204
    assert wait_for_datafile(api, "ds", "partial.bin")["state"] == "stored"
    assert_kept_intact(server, api, kept)


# --- Upload-Metadata -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "rule"),
    [
        (f"filename !!not-base64!!,dataset {b64('ds')}", "not base64"),
        (f"filename {b64('a.bin')}", "must include 'dataset'"),
        (f"filename {b64('a.bin')} {b64('b.bin')},dataset {b64('ds')}", "malformed pair"),
        (f"filename  {b64('a.bin')},dataset {b64('ds')}", "malformed pair"),
        (f"filename {b64('a.bin')},filename {b64('b.bin')},dataset {b64('ds')}", "twice"),
        (f"dataset {b64('ds')}", "must include 'filename'"),
        (f"filename,dataset {b64('ds')}", "must include 'filename'"),
        (f"filename {NOT_UTF8},dataset {b64('ds')}", "base64 of UTF-8"),
        (f'file"name {b64("a.bin")},dataset {b64("ds")}', "malformed pair"),
        (f"filename {b64('a.bin')},dataset {b64('ds')},sha256 {b64('xyz')}", "sha256"),
    ],
    ids=[
        "non-base64-value",
        "missing-dataset",
        "pair-with-three-parts",
        "double-space",
        "duplicate-key",
        "missing-filename",
        "empty-filename",
        "value-not-utf8",
        "bad-key-character",
        "sha256-not-hex",
    ],
)
def test_malformed_upload_metadata_is_refused(
    server: StageboxServer, api: httpx.Client, kept: Kept, header: str, rule: str
):
    # given a stored file and nothing else
    before = snapshot(server, api)

    # when a tus client creates an upload with malformed Upload-Metadata
    resp = api.post("/files/", headers={**TUS, "Upload-Length": "5", "Upload-Metadata": header})

    # then it is 400 naming Upload-Metadata and the rule, and no upload exists
    assert_invalid(resp, "Upload-Metadata", rule)
    assert "Location" not in resp.headers
    assert snapshot(server, api) == before
    assert_kept_intact(server, api, kept)


# --- unsafe names --------------------------------------------------------------------------

UNSAFE_NAMES = [
    ("filename", "..", "must not be '..'"),
    ("filename", ".", "must not be '.'"),
    ("filename", "/etc/passwd", "must not contain '/'"),
    ("filename", "a\x00b", "must not contain NUL"),
    ("filename", "esc\x1b[2J", "control character U+001B"),
    ("filename", "del\x7f", "control character U+007F"),
    ("filename", "..\\..\\boot.ini", "backslash"),
    ("directory", "..", "must not be '..'"),
    ("directory", "a/../../b", "must not be '..'"),
    ("directory", "/etc", "must be relative, not an absolute path"),
    ("directory", "a\x00b", "must not contain NUL"),
    ("directory", "line\nbreak", "control character U+000A"),
    ("directory", "c1\x85", "control character U+0085"),
    ("dataset", "..", "must not be '..'"),
    ("dataset", "/abs", "must not contain '/'"),
    ("dataset", "a\x00b", "must not contain NUL"),
    ("dataset", "tab\there", "control character U+0009"),
]
UNSAFE_IDS = [f"{field}={value!r}" for field, value, _ in UNSAFE_NAMES]


@pytest.mark.parametrize(("field", "value", "rule"), UNSAFE_NAMES, ids=UNSAFE_IDS)
def test_unsafe_name_in_batch_is_refused_and_registers_nothing(
    server: StageboxServer, api: httpx.Client, kept: Kept, field: str, value: str, rule: str
):
    # given a batch whose second file has an unsafe name
    good = item("fine.bin", 5)
    bad = {**item("bad.bin", 5), field: value}
    before = snapshot(server, api)

    # when it is registered
    resp = register(api, good, bad)

    # then the batch is 400 naming the file's field and the rule, and nothing is registered
    assert_invalid(resp, f"files[1].{field}", rule)
    assert snapshot(server, api) == before
    assert_kept_intact(server, api, kept)


@pytest.mark.parametrize(("field", "value", "rule"), UNSAFE_NAMES, ids=UNSAFE_IDS)
def test_unsafe_name_in_upload_metadata_is_refused(
    server: StageboxServer, api: httpx.Client, kept: Kept, field: str, value: str, rule: str
):
    # given tus metadata with one unsafe name
    fields = {"filename": "bad.bin", "dataset": "ds", "directory": "sub", field: value}
    before = snapshot(server, api)

    # when a tus upload is created with it
    resp = api.post(
        "/files/",
        headers={**TUS, "Upload-Length": "5", "Upload-Metadata": metadata(**fields)},
    )

    # then it is 400 naming the metadata field and the rule, and no upload exists
    assert_invalid(resp, f"Upload-Metadata {field}", rule)
    assert snapshot(server, api) == before
    assert_kept_intact(server, api, kept)


# --- Unicode normalisation -----------------------------------------------------------------


def test_names_differing_only_by_normalisation_are_one_datafile(
    server: StageboxServer, api: httpx.Client, kept: Kept
):
    # given "café" spelt precomposed (NFC) and decomposed (NFD), in every name
    nfc, nfd = (unicodedata.normalize(form, "café") for form in ("NFC", "NFD"))
    assert nfc != nfd

    def spelt(name: str) -> dict:
        return item(f"{name}.txt", 5, dataset=f"{name}-ds", directory=f"{name}/sub")

    # when both are registered, in two batches and then together in one
    first = register(api, spelt(nfc))
    second = register(api, spelt(nfd))
    together = register(api, spelt(nfd), spelt(nfc))
    via_tus = api.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Length": "5",
            "Upload-Metadata": metadata(
                filename=f"{nfd}.txt", dataset=f"{nfd}-ds", directory=f"{nfd}/sub"
            ),
        },
    )

    # then every answer is the same datafile, with the same upload URL
    answers = [r.json()["files"] for r in (first, second, together)]
    ids = {a["id"] for files in answers for a in files}
    urls = {a["upload_url"] for files in answers for a in files}
    assert len(ids) == 1, answers
    assert len(urls) == 1, answers
    assert via_tus.status_code == 201, via_tus.text
    assert via_tus.headers["Location"] in urls
    # and the catalog holds it once, under the NFC spelling
    mine = [d for d in all_datafiles(api) if d["id"] != kept.id]
    assert [(d["dataset"], d["directory"], d["filename"]) for d in mine] == [
        (f"{nfc}-ds", f"{nfc}/sub", f"{nfc}.txt")
    ]
    assert_kept_intact(server, api, kept)


# --- re-registering ------------------------------------------------------------------------


def test_reregistering_stored_file_with_other_size_is_a_new_version(
    server: StageboxServer, api: httpx.Client, kept: Kept
):
    # given a stored file of 51200 bytes
    size = len(kept.data)

    # when the same path is registered with another size, by batch and then by tus
    batch = register(api, item("keep.bin", size + 1, dataset="kept"))
    tus = api.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Length": str(size + 1),
            "Upload-Metadata": metadata(filename="keep.bin", dataset="kept"),
        },
    )

    # then it is version 2, to be uploaded, with a datafile id of its own; tus
    # continues the same version 2
    assert batch.status_code == 200, batch.text
    (answer,) = batch.json()["files"]
    assert (answer["action"], answer["version"]) == ("upload", 2)
    assert answer["id"] != kept.id
    assert tus.status_code == 201, tus.text
    assert tus.headers["Location"] == answer["upload_url"]
    # and version 1 is untouched, still listed with ?versions=all
    assert_kept_intact(server, api, kept)
    every = api.get("/api/v1/datafiles", params={"dataset": "kept", "versions": "all"}).json()
    assert [(d["id"], d["version"]) for d in every["items"]] == [(kept.id, 1), (answer["id"], 2)]
    latest = api.get("/api/v1/datafiles", params={"dataset": "kept"}).json()
    assert [d["version"] for d in latest["items"]] == [2]


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("sha256", "abc", "64 hexadecimal digits"),
        ("sha256", "g" * 64, "64 hexadecimal digits"),
        ("owner", "alice/bob", "must not contain '/'"),
        ("owner", "..", "must not be '..'"),
        ("owner", "al\x07ice", "control character"),
    ],
)
def test_bad_declared_sha256_or_owner_is_400_naming_the_field(
    server: StageboxServer, api: httpx.Client, kept: Kept, field: str, value: str, rule: str
):
    before = snapshot(server, api)
    # when a registration declares a malformed sha256 or owner
    resp = register(api, {**item("keep.bin", len(kept.data), dataset="kept"), field: value})
    # then it is 400 naming files[0].<field> and the rule; nothing stored is touched
    assert_invalid(resp, f"files[0].{field}", rule)
    assert snapshot(server, api) == before
    assert_kept_intact(server, api, kept)


def test_content_of_a_version_that_does_not_exist_is_404_naming_the_versions(
    server: StageboxServer, api: httpx.Client, kept: Kept
):
    # when version 7 of a path with one version is asked for
    resp = api.get(f"/api/v1/datafiles/{kept.id}/content", params={"version": 7})
    # then it is 404 naming the versions there are
    assert resp.status_code == 404, resp.text
    assert "no version 7" in resp.json()["detail"]
    assert "versions 1 to 1" in resp.json()["detail"]
    assert api.get(f"/api/v1/datafiles/{kept.id}/content", params={"version": 1}).content == (
        kept.data
    )


# --- zero bytes ----------------------------------------------------------------------------


def test_zero_byte_file_via_tus_is_stored(server: StageboxServer, api: httpx.Client, kept: Kept):
    # given an empty file
    # when a tus client creates its upload with Upload-Length 0 (and sends no PATCH)
    resp = api.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Length": "0",
            "Upload-Metadata": metadata(filename="empty.txt", dataset="ds"),
        },
    )

    # then it is accepted and ends stored, empty, with the digest of nothing
    assert resp.status_code == 201, resp.text
    record = wait_for_datafile(api, "ds", "empty.txt")
    assert record["state"] == "stored", record
    assert (record["size"], record["sha256"]) == (0, EMPTY_SHA256)
    content = api.get(f"/api/v1/datafiles/{record['id']}/content")
    assert (content.status_code, content.content) == (200, b"")
    assert sorted(disk(server)["store"].values()) == sorted([kept.data, b""])
    assert_kept_intact(server, api, kept)


def test_zero_byte_file_via_batch_and_complete_is_stored(
    server: StageboxServer, api: httpx.Client, kept: Kept
):
    # given an empty file registered by batch
    answer = register(api, item("empty.txt", 0)).json()["files"][0]

    # when the client completes it with the sha256 of nothing
    done = api.post(f"/api/v1/datafiles/{answer['id']}/complete", json={"sha256": EMPTY_SHA256})

    # then it is accepted and ends stored, empty
    assert done.status_code == 200, done.text
    record = wait_for_datafile(api, "ds", "empty.txt")
    assert record["state"] == "stored", record
    assert (record["id"], record["size"], record["sha256"]) == (answer["id"], 0, EMPTY_SHA256)
    assert api.get(f"/api/v1/datafiles/{answer['id']}/content").content == b""
    assert sorted(disk(server)["store"].values()) == sorted([kept.data, b""])
    assert_kept_intact(server, api, kept)


# --- very long paths -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["filename", "directory"])
@pytest.mark.parametrize("route", ["batch", "tus"])
def test_five_thousand_character_path_is_refused_cleanly(
    server: StageboxServer, api: httpx.Client, kept: Kept, field: str, route: str
):
    # given a 5,000-character name
    long_name = "x" * 5000 if field == "filename" else "/".join(["d" * 98] * 60)[:5000]
    assert len(long_name) == 5000
    before = snapshot(server, api)

    # when it is registered
    if route == "batch":
        resp = register(api, {**item("f.bin", 5), field: long_name})
        expected_field = f"files[0].{field}"
    else:
        fields = {"filename": "f.bin", "dataset": "ds", field: long_name}
        resp = api.post(
            "/files/",
            headers={**TUS, "Upload-Length": "5", "Upload-Metadata": metadata(**fields)},
        )
        expected_field = f"Upload-Metadata {field}"

    # then it is a clean 400 naming the limit, and the server is still healthy
    assert_invalid(resp, expected_field, "at most")
    assert api.get("/api/v1/health").json()["status"] == "ok"
    assert snapshot(server, api) == before
    assert register(api, item("f.bin", 5)).status_code == 200
    assert_kept_intact(server, api, kept)


# --- Upload-Checksum -----------------------------------------------------------------------


def sha256_header(data: bytes) -> str:
    return "sha256 " + b64(hashlib.sha256(data).digest())


def test_patch_with_wrong_checksum_is_discarded_then_correct_chunk_accepted(
    server: StageboxServer, api: httpx.Client, kept: Kept
):
    # given an upload of 200 KiB whose first half arrived with a good checksum
    data = os.urandom(200 * KiB)
    half = len(data) // 2
    url = create_upload(api, len(data), dataset="ds", filename="sum.bin")
    first = patch(api, url, 0, data[:half], **{"Upload-Checksum": sha256_header(data[:half])})
    assert first.status_code == 204, first.text
    before = snapshot(server, api)

    # when the second half arrives with a checksum that does not match it
    liar = sha256_header(data[half:] + b"!")
    bad = patch(api, url, half, data[half:], **{"Upload-Checksum": liar})

    # then it is 460 saying which digest failed, and the chunk is discarded
    assert_error(bad, 460, "sha256 mismatch")
    assert bad.headers["Tus-Resumable"] == "1.0.0"
    assert head_offset(api, url) == half
    assert staged_size(server, url) == half
    assert snapshot(server, api) == before

    # when the correct second half is sent again
    good = patch(api, url, half, data[half:], **{"Upload-Checksum": sha256_header(data[half:])})

    # then it is accepted and the file is stored whole
    assert good.status_code == 204, good.text
    assert good.headers["Upload-Offset"] == str(len(data))
    record = wait_for_datafile(api, "ds", "sum.bin")
    assert record["state"] == "stored", record
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert api.get(f"/api/v1/datafiles/{record['id']}/content").content == data
    assert_kept_intact(server, api, kept)


# --- bundles -------------------------------------------------------------------------------


def test_bundle_naming_other_uploaders_datafile_is_not_found(
    server: StageboxServer, api: httpx.Client, bob: httpx.Client, kept: Kept
):
    # given bob registered a small file that he has not sent yet
    bobs = register(bob, item("bob.txt", 5, dataset="bobs")).json()["files"][0]
    alices = register(api, item("mine.txt", 5)).json()["files"][0]
    before, bobs_before = snapshot(server, api), all_datafiles(bob)

    # when alice sends a bundle naming her file and bob's
    payload = b"alice" + b"evil!"
    manifest = {
        "files": [
            {"id": alices["id"], "size": 5, "sha256": hashlib.sha256(b"alice").hexdigest()},
            {"id": bobs["id"], "size": 5, "sha256": hashlib.sha256(b"evil!").hexdigest()},
        ]
    }
    resp = post_bundle(api, bundle(manifest, payload))

    # then it is 404 naming bob's id, and neither file received a byte
    assert_error(resp, 404, f"no datafile {bobs['id']}", "manifest.files[1]")
    assert snapshot(server, api) == before
    assert all_datafiles(bob) == bobs_before
    assert [d["state"] for d in bobs_before] == ["registered"]
    assert_kept_intact(server, api, kept)


def _manifest_for(datafile_id: int, **overrides: object) -> dict:
    entry = {"id": datafile_id, "size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
    return {"files": [{**entry, **overrides}]}


BAD_BUNDLES = {
    "invalid-json": lambda i: (
        len(b'{"files": [').to_bytes(4, "big") + b'{"files": [' + b"hello",
        "manifest",
    ),
    "files-not-a-list": lambda i: (bundle({"files": {"id": i}}, b"hello"), "manifest.files"),
    "missing-sha256": lambda i: (
        bundle({"files": [{"id": i, "size": 5}]}, b"hello"),
        "manifest.files.0.sha256",
    ),
    "sha256-not-hex": lambda i: (
        bundle(_manifest_for(i, sha256="z" * 64), b"hello"),
        "manifest.files.0.sha256",
    ),
    "negative-size": lambda i: (bundle(_manifest_for(i, size=-1), b"hello"), "manifest.files.0"),
    "size-not-registered": lambda i: (
        bundle(_manifest_for(i, size=6), b"hello!"),
        "manifest.files[0].size",
    ),
    "duplicate-id": lambda i: (
        bundle({"files": _manifest_for(i)["files"] * 2}, b"hellohello"),
        "manifest.files",
    ),
    "header-longer-than-body": lambda i: ((10_000).to_bytes(4, "big") + b'{"files": []}', "body"),
    "body-shorter-than-manifest": lambda i: (bundle(_manifest_for(i), b"hel"), "body"),
    "not-even-a-header": lambda i: (b"\x00\x00", "body"),
    "absurd-manifest-length": lambda i: ((0xFFFFFFFF).to_bytes(4, "big") + b"{}", "manifest"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bundle_with_malformed_manifest_is_refused(
    server: StageboxServer, api: httpx.Client, kept: Kept, case: str
):
    # given a registered 5-byte file waiting for its bytes
    answer = register(api, item("hello.txt", 5)).json()["files"][0]
    body, field = BAD_BUNDLES[case](answer["id"])
    before = snapshot(server, api)

    # when a bundle with a malformed manifest arrives
    resp = post_bundle(api, body)

    # then it is 400 naming the manifest (or the body) field, and nothing moved
    assert resp.status_code == 400, resp.text
    error = resp.json()
    assert error["field"].startswith(field), error
    assert error["rule"], error
    assert snapshot(server, api) == before
    assert_kept_intact(server, api, kept)


def test_bundle_with_wrong_content_type_is_refused(
    server: StageboxServer, api: httpx.Client, kept: Kept
):
    # given a registered file and a well-formed bundle for it
    answer = register(api, item("hello.txt", 5)).json()["files"][0]
    before = snapshot(server, api)

    # when it is sent as JSON
    resp = post_bundle(api, bundle(_manifest_for(answer["id"]), b"hello"), "application/json")

    # then it is 400 naming Content-Type
    assert_invalid(resp, "Content-Type", BUNDLE_CONTENT_TYPE)
    assert snapshot(server, api) == before
    assert_kept_intact(server, api, kept)
