"""The storage contract, run against every backend: a local directory and S3 (moto)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import pytest

from stagebox.errors import KeyEscapesRoot, NotFound, StorageError
from stagebox.storage import LocalBackend, StorageBackend
from stagebox.storage.s3 import MIN_PART, S3Backend, part_size_for
from tests.s3 import CREDENTIALS, MotoServer


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def s3_box(moto: MotoServer, name: str, **kwargs) -> S3Backend:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    box = S3Backend(name, bucket, prefix="pre/fix", endpoint_url=moto.url, **kwargs)
    box.client.create_bucket(Bucket=bucket)
    return box


@pytest.fixture(params=["local", "s3"])
def boxes(request, tmp_path) -> tuple[StorageBackend, StorageBackend]:
    if request.param == "local":
        return LocalBackend("staging", tmp_path / "staging"), LocalBackend("store", tmp_path / "s")
    moto = request.getfixturevalue("moto")
    return s3_box(moto, "staging", part_size=MIN_PART), s3_box(moto, "store")


def test_write_read_size_and_ranges(boxes) -> None:
    staging, _ = boxes
    data = os.urandom(3 * MIN_PART + 12345)  # several parts and a short tail
    with staging.open_write("u/big.bin", 0, len(data)) as w:
        for i in range(0, len(data), 1 << 20):
            w.write(data[i : i + (1 << 20)])
        assert w.tell() == len(data)
    assert staging.size("u/big.bin") == len(data)
    with staging.open_read("u/big.bin") as f:
        assert f.read() == data
    with staging.open_read("u/big.bin", MIN_PART + 7) as f:
        assert f.read() == data[MIN_PART + 7 :]


def test_small_and_empty_objects(boxes) -> None:
    staging, _ = boxes
    with staging.open_write("a/empty", 0) as w:
        pass
    with staging.open_write("a/small", 0) as w:
        w.write(b"hello")
        w.write(b"!!bad")
        w.discard_to(5)
    assert staging.size("a/empty") == 0
    with staging.open_read("a/small") as f:
        assert f.read() == b"hello"


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "", "a//b"])
def test_keys_never_leave_the_root(boxes, key) -> None:
    staging, _ = boxes
    with pytest.raises(KeyEscapesRoot):
        staging.open_write(key, 0)


def test_missing_key(boxes) -> None:
    staging, _ = boxes
    assert staging.size("nope") is None
    assert staging.identity("nope") is None
    with pytest.raises(NotFound):
        staging.open_read("nope")
    staging.delete("nope")  # not an error


def test_list_is_relative_to_the_box_and_the_prefix(boxes) -> None:
    staging, _ = boxes
    for key in ("job1/a", "job1/sub/b", "job10/c"):
        with staging.open_write(key, 0) as w:
            w.write(key.encode())
    assert sorted(o.key for o in staging.list("job1")) == ["job1/a", "job1/sub/b"]
    assert sorted(o.key for o in staging.list()) == ["job1/a", "job1/sub/b", "job10/c"]
    assert {o.size for o in staging.list("job10")} == {len(b"job10/c")}
    staging.delete("job1/a")
    assert sorted(o.key for o in staging.list("job1")) == ["job1/sub/b"]


def test_promote_gives_the_digests_of_what_is_stored(boxes) -> None:
    staging, store = boxes
    data = os.urandom(MIN_PART + 99)
    with staging.open_write("u/1", 0, len(data)) as w:
        w.write(data)
    result = staging.promote("u/1", store, "kept/1", ("sha256", "md5"))
    if not result.renamed:
        assert result.digests["sha256"] == hashlib.sha256(data).hexdigest()
        assert result.digests["md5"] == hashlib.md5(data).hexdigest()
    with store.open_read("kept/1") as f:
        assert f.read() == data


def test_identity_changes_when_the_object_is_replaced(boxes) -> None:
    staging, _ = boxes
    with staging.open_write("x", 0) as w:
        w.write(b"first")
    before = staging.identity("x")
    with staging.open_write("x", 0) as w:
        w.write(b"second version")
    assert staging.identity("x") != before


def test_s3_resume_is_refused_clearly(moto) -> None:
    box = s3_box(moto, "staging")
    with pytest.raises(StorageError, match="from byte 0 only"):
        box.open_write("u/1", 10)


def test_s3_failed_write_leaves_no_object(moto) -> None:
    box = s3_box(moto, "staging", part_size=MIN_PART)
    with pytest.raises(RuntimeError), box.open_write("u/1", 0) as w:
        w.write(os.urandom(MIN_PART + 1))  # one part sent
        raise RuntimeError("client went away")
    assert box.size("u/1") is None
    uploads = box.client.list_multipart_uploads(Bucket=box.bucket).get("Uploads", [])
    assert uploads == []


def test_s3_part_size_is_raised_to_fit_10000_parts() -> None:
    assert part_size_for(None, 16 << 20) == 16 << 20
    assert part_size_for(100 << 30, 16 << 20) == 16 << 20
    big = part_size_for(1 << 40, 16 << 20)
    assert big * 10_000 >= 1 << 40 and big > 16 << 20
    assert part_size_for(None, 1 << 20) == MIN_PART


def test_an_s3_box_added_by_the_admin_is_a_working_backend(moto, ctx) -> None:
    from stagebox.server.services import boxes
    from stagebox.server.services.context import backend_for

    with ctx.catalog.session() as s:
        box = boxes.add_box(
            s,
            "archive",
            role="permanent",
            backend="s3",
            bucket="stagebox-archive",
            prefix="deposits",
            endpoint_url=moto.url,
            region="us-east-1",
        )
        assert boxes.public(box)["bucket"] == "stagebox-archive"
        backend = backend_for(box, ctx.settings)
    assert isinstance(backend, S3Backend)
    backend.client.create_bucket(Bucket="stagebox-archive")
    with backend.open_write("x/y", 0) as w:
        w.write(b"kept")
    keys = backend.client.list_objects_v2(Bucket="stagebox-archive")["Contents"]
    assert [k["Key"] for k in keys] == ["deposits/x/y"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"bucket": None}, "bucket"),
        ({"bucket": "Upper_Case"}, "bucket"),
        ({"bucket": "ab"}, "bucket"),
        ({"bucket": "b..c"}, "bucket"),
        ({"bucket": "ok-bucket", "prefix": "../up"}, "prefix"),
        ({"bucket": "ok-bucket", "endpoint_url": "ftp://x"}, "endpoint_url"),
        ({"bucket": "ok-bucket", "region": "US EAST"}, "region"),
        ({"bucket": "ok-bucket", "path": "/x"}, "path"),
        ({"bucket": "ok-bucket", "sftp_host": "h"}, "backend"),
    ],
)
def test_s3_box_rules(ctx, options, field) -> None:
    from stagebox.errors import InvalidInput
    from stagebox.server.services import boxes

    with ctx.catalog.session() as s, pytest.raises(InvalidInput) as info:
        boxes.add_box(s, "b", role="staging", backend="s3", **options)
    assert info.value.field == field
