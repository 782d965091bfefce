"""The storage contract, run against every backend: a local directory and S3 (moto)."""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Iterator

import pytest

from stagebox.errors import InvalidInput, KeyEscapesRoot, NotFound, StorageError
from stagebox.storage import LocalBackend, StorageBackend
from stagebox.storage.s3 import MIN_PART, S3Backend, part_size_for
from tests.s3 import MotoServer, leftovers, running_moto


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Iterator[MotoServer]:
    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


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


def write_in_turns(box: StorageBackend, key: str, data: bytes, cuts: list[int]) -> None:
    """Write ``data`` as successive writers, each closing at the next cut (tus PATCHes)."""
    start = 0
    for end in [*cuts, len(data)]:
        with box.open_write(key, start, size_hint=len(data)) as w:
            assert w.tell() == start
            w.write(data[start:end])
        assert box.size(key) == end
        start = end


def test_writers_in_turn_continue_one_object(boxes) -> None:
    # given a file written by five writers in turn, cuts inside and across parts
    staging, _ = boxes
    data = os.urandom(3 * MIN_PART + 777)
    cuts = [1000, 3 << 20, MIN_PART, 2 * MIN_PART + 5]
    # when each writer closes short of the declared size, and the last reaches it
    write_in_turns(staging, "u/turns", data, cuts)
    # then the object reads back whole
    with staging.open_read("u/turns") as f:
        assert f.read() == data
    assert [o.key for o in staging.list("u")] == ["u/turns"]


def test_an_unfinished_object_reads_back_only_where_the_backend_can(boxes) -> None:
    staging, _ = boxes
    data = os.urandom(MIN_PART + 10)
    with staging.open_write("u/part", 0, size_hint=2 * len(data)) as w:
        w.write(data)
    assert staging.size("u/part") == len(data)
    if staging.can_read_partial:
        with staging.open_read("u/part") as f:
            assert f.read() == data
    else:
        with pytest.raises(StorageError, match="unfinished"):
            staging.open_read("u/part")


def test_a_rejected_chunk_is_discarded_even_after_parts_went_out(boxes) -> None:
    # given an object with some bytes staged by an earlier writer
    staging, _ = boxes
    data = os.urandom(3 * MIN_PART)
    start = 1 << 20
    with staging.open_write("u/chunk", 0, size_hint=len(data)) as w:
        w.write(data[:start])
    # when the next writer takes a chunk long enough to send parts, then rejects it
    with staging.open_write("u/chunk", start, size_hint=len(data)) as w:
        w.write(os.urandom(2 * MIN_PART))
        w.discard_to(start)
        # and the good bytes follow
        w.write(data[start:])
    # then only the good bytes are there
    with staging.open_read("u/chunk") as f:
        assert f.read() == data


@pytest.mark.parametrize("back_to", [MIN_PART, MIN_PART + 100], ids=["part-boundary", "in-tail"])
def test_writing_from_an_earlier_offset_replaces_what_follows(boxes, back_to) -> None:
    staging, _ = boxes
    data = os.urandom(2 * MIN_PART + 300)
    with staging.open_write("u/back", 0, size_hint=len(data)) as w:
        w.write(os.urandom(MIN_PART + 200))  # one part and a tail, unfinished
    with staging.open_write("u/back", back_to, size_hint=len(data)) as w:
        assert staging.size("u/back") == back_to  # what followed is gone at once
        w.write(data[back_to:])
    with staging.open_read("u/back") as f:
        assert f.read()[back_to:] == data[back_to:]


def test_deleting_an_unfinished_object_leaves_nothing(boxes) -> None:
    staging, _ = boxes
    with staging.open_write("u/gone", 0, size_hint=4 * MIN_PART) as w:
        w.write(os.urandom(MIN_PART + 1))
    staging.delete("u/gone")
    assert staging.size("u/gone") is None
    assert list(staging.list()) == []
    if isinstance(staging, S3Backend):
        assert leftovers(staging) == ([], [])


def test_writing_past_the_staged_size_is_refused(boxes) -> None:
    staging, _ = boxes
    with staging.open_write("u/short", 0, size_hint=100) as w:
        w.write(b"x" * 10)
    with pytest.raises(StorageError, match="only 10 bytes"):
        staging.open_write("u/short", 11, size_hint=100)


# -- metadata -----------------------------------------------------------------

BAG_METADATA = {
    "bag": "deposit 2024-05 (Müller)",
    "path": "data/Müller/ß.txt",
    "note": "  padded, and =?utf-8?b?looks-encoded?=  ",
    "empty": "",
}


def digests_of(data: bytes) -> dict[str, str]:
    return {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("size", [0, 1000, 2 * MIN_PART + 3], ids=["empty", "small", "multipart"])
def test_metadata_given_and_added_after_the_last_byte_reads_back(boxes, size) -> None:
    # given a bag file staged with its name and path, non-ASCII and spaces included
    staging, _ = boxes
    data = os.urandom(size)
    with staging.open_write("bag/f1", 0, size_hint=size, metadata=BAG_METADATA) as w:
        for i in range(0, size, 1 << 20):
            w.write(data[i : i + (1 << 20)])
        # when its digests, known only now, join the metadata before close
        w.metadata.update(digests_of(data))
    # then the object holds all of it, byte for byte
    assert staging.metadata("bag/f1") == {**BAG_METADATA, **digests_of(data)}
    with staging.open_read("bag/f1") as f:
        assert f.read() == data


def test_metadata_is_kept_across_writers_and_follows_promotion(boxes) -> None:
    staging, store = boxes
    data = os.urandom(2 * MIN_PART + 9)
    meta = {"bag": "b 1", "path": "data/ß"}
    # given a write begun with metadata and continued by writers that give none
    with staging.open_write("bag/f2", 0, size_hint=len(data), metadata=meta) as w:
        w.write(data[:100])
    with staging.open_write("bag/f2", 100, size_hint=len(data)) as w:
        w.write(data[100 : MIN_PART + 7])
    with staging.open_write("bag/f2", MIN_PART + 7, size_hint=len(data)) as w:
        assert w.metadata == meta
        w.write(data[MIN_PART + 7 :])
        w.metadata["sha256"] = hashlib.sha256(data).hexdigest()
    expected = {**meta, "sha256": hashlib.sha256(data).hexdigest()}
    assert staging.metadata("bag/f2") == expected
    # when it is promoted, then the stored object carries the same metadata
    staging.promote("bag/f2", store, "kept/f2", ("sha256",))
    assert store.metadata("kept/f2") == expected


def test_a_rewrite_from_zero_replaces_the_metadata(boxes) -> None:
    staging, _ = boxes
    with staging.open_write("bag/f3", 0, metadata={"a": "1", "b": "2"}) as w:
        w.write(b"one")
    with staging.open_write("bag/f3", 0) as w:
        w.write(b"two")
    assert staging.metadata("bag/f3") == {}
    with staging.open_write("bag/f3", 0, metadata={"b": "3"}) as w:
        w.write(b"three")
    assert staging.metadata("bag/f3") == {"b": "3"}


@pytest.mark.parametrize("name", ["Upper", "with space", "", "ü", "a" * 65, "_lead"])
def test_metadata_names_keep_the_rules(boxes, name) -> None:
    staging, _ = boxes
    with pytest.raises(InvalidInput) as info:
        staging.open_write("bag/bad", 0, metadata={name: "v"})
    assert info.value.field == "metadata"


def test_metadata_of_a_missing_key_is_not_found(boxes) -> None:
    staging, _ = boxes
    with pytest.raises(NotFound):
        staging.metadata("nope")


def test_s3_failed_write_leaves_no_object(moto) -> None:
    box = s3_box(moto, "staging", part_size=MIN_PART)
    with pytest.raises(RuntimeError), box.open_write("u/1", 0) as w:
        w.write(os.urandom(MIN_PART + 1))  # one part sent
        raise RuntimeError("client went away")
    assert box.size("u/1") is None
    uploads = box.client.list_multipart_uploads(Bucket=box.bucket).get("Uploads", [])
    assert uploads == []


def reopened(box: S3Backend) -> S3Backend:
    """The same box seen by a new process: nothing shared but the bucket."""
    return S3Backend(box.name, box.bucket, prefix=box.prefix, endpoint_url=box.endpoint_url)


def test_s3_unfinished_write_is_continued_by_a_new_process(moto) -> None:
    # given 1 part and a tail staged by one process
    box = s3_box(moto, "staging", part_size=MIN_PART)
    data = os.urandom(2 * MIN_PART + 4321)
    with box.open_write("u/1", 0, size_hint=len(data)) as w:
        w.write(data[: MIN_PART + 1234])
    uploads, tails = leftovers(box)
    assert (uploads, len(tails)) == (["pre/fix/u/1"], 1)
    # when another process looks, then it sees the bytes staged, not an object
    other = reopened(box)
    assert other.size("u/1") == MIN_PART + 1234
    assert other.identity("u/1") is None
    assert list(other.list()) == []
    # and when it continues from there, the object is whole, with nothing left over
    with other.open_write("u/1", MIN_PART + 1234, size_hint=len(data)) as w:
        w.write(data[MIN_PART + 1234 :])
    with box.open_read("u/1") as f:
        assert f.read() == data
    assert leftovers(box) == ([], [])
    assert [o.key for o in box.list()] == ["u/1"]


def test_s3_write_inside_a_sent_part_is_refused_clearly(moto) -> None:
    box = s3_box(moto, "staging", part_size=MIN_PART)
    with box.open_write("u/1", 0, size_hint=4 * MIN_PART) as w:
        w.write(os.urandom(2 * MIN_PART + 10))
    with pytest.raises(StorageError, match="a part boundary"):
        box.open_write("u/1", MIN_PART + 1, size_hint=4 * MIN_PART)
    assert box.size("u/1") == 2 * MIN_PART + 10


def test_s3_whole_object_is_rewritten_from_zero_only(moto) -> None:
    box = s3_box(moto, "staging")
    with box.open_write("u/1", 0) as w:
        w.write(b"whole")
    with pytest.raises(StorageError, match="from byte 0 only"):
        box.open_write("u/1", 5)
    with pytest.raises(StorageError, match="only 0 bytes"):
        box.open_write("u/2", 10)


def test_s3_a_writer_that_dies_leaves_the_last_committed_state(moto) -> None:
    # given an unfinished object of 1 part and a tail
    box = s3_box(moto, "staging", part_size=MIN_PART)
    data = os.urandom(3 * MIN_PART)
    with box.open_write("u/1", 0, size_hint=len(data)) as w:
        w.write(data[: MIN_PART + 3])
    # when the next writer sends a part and then fails before it closes
    with pytest.raises(RuntimeError), box.open_write("u/1", MIN_PART + 3, len(data)) as w:
        w.write(os.urandom(MIN_PART))
        raise RuntimeError("server killed")
    # then the object is where the last writer left it, and continues from there
    assert box.size("u/1") == MIN_PART + 3
    with box.open_write("u/1", MIN_PART + 3, len(data)) as w:
        w.write(data[MIN_PART + 3 :])
    with box.open_read("u/1") as f:
        assert f.read() == data


def test_s3_upload_aborted_behind_our_back_counts_for_nothing(moto) -> None:
    # given an unfinished object whose upload a bucket lifecycle rule aborted
    box = s3_box(moto, "staging", part_size=MIN_PART)
    with box.open_write("u/1", 0, size_hint=4 * MIN_PART) as w:
        w.write(os.urandom(MIN_PART + 3))
    (upload,) = box.client.list_multipart_uploads(Bucket=box.bucket)["Uploads"]
    box.client.abort_multipart_upload(
        Bucket=box.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
    )
    # then none of its bytes count, and a write starts it again from 0
    assert box.size("u/1") == 0
    with box.open_write("u/1", 0, size_hint=3) as w:
        w.write(b"new")
    assert box.size("u/1") == 3
    assert leftovers(box) == ([], [])


def test_s3_keys_of_tail_records_are_reserved(moto) -> None:
    box = s3_box(moto, "staging")
    with pytest.raises(KeyEscapesRoot, match="reserved"):
        box.open_write(".stagebox-unfinished/u/1", 0)


def test_s3_metadata_travels_encoded_and_is_decoded(moto) -> None:
    box = s3_box(moto, "staging")
    with box.open_write("bag/f", 0, metadata=BAG_METADATA) as w:
        w.write(b"x")
    raw = box.client.head_object(Bucket=box.bucket, Key=box.object_key("bag/f"))["Metadata"]
    assert raw["path"] == "=?utf-8?b?ZGF0YS9Nw7xsbGVyL8OfLnR4dA==?="
    assert all(v.isascii() for v in raw.values())
    assert box.metadata("bag/f") == BAG_METADATA


def test_s3_late_metadata_of_a_large_object_is_set_by_a_copy_in_parts(moto) -> None:
    # given a box that copies objects over 6 MiB in parts (5 GiB on S3)
    box = s3_box(moto, "staging", part_size=MIN_PART)
    box.copy_limit, box.copy_part_size = 6 << 20, MIN_PART
    data = os.urandom(2 * MIN_PART + 17)
    # when a multipart write learns its digests after the last byte
    with box.open_write("bag/big", 0, size_hint=len(data), metadata={"bag": "b"}) as w:
        w.write(data)
        w.metadata.update(digests_of(data))
    # then the object carries them and its bytes are intact
    assert box.metadata("bag/big") == {"bag": "b", **digests_of(data)}
    with box.open_read("bag/big") as f:
        assert f.read() == data
    assert leftovers(box) == ([], [])


def test_s3_promotion_of_a_large_object_is_a_copy_in_parts(moto) -> None:
    staging = s3_box(moto, "staging", part_size=MIN_PART)
    store = s3_box(moto, "store")
    store.copy_limit, store.copy_part_size = 6 << 20, MIN_PART
    data = os.urandom(2 * MIN_PART + 17)
    with staging.open_write("u/1", 0, len(data), metadata={"path": "ß"}) as w:
        w.write(data)
    result = staging.promote("u/1", store, "kept/1", ("sha256",))
    assert result.digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert store.metadata("kept/1") == {"path": "ß"}


@pytest.mark.parametrize("direction", ["local-to-s3", "s3-to-local"])
def test_promotion_across_kinds_streams_bytes_and_metadata(moto, tmp_path, direction) -> None:
    local, s3 = LocalBackend("local", tmp_path / "local"), s3_box(moto, "s3", part_size=MIN_PART)
    src, dest = (local, s3) if direction == "local-to-s3" else (s3, local)
    data = os.urandom(MIN_PART + 5)
    with src.open_write("u/1", 0, len(data), metadata={"path": "data/Müller/ß.txt"}) as w:
        w.write(data)
    result = src.promote("u/1", dest, "kept/1", ("sha256",))
    assert result.digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert dest.metadata("kept/1") == {"path": "data/Müller/ß.txt"}
    with dest.open_read("kept/1") as f:
        assert f.read() == data


def test_local_box_without_extended_attributes_drops_metadata(tmp_path, monkeypatch) -> None:
    # given a filesystem that keeps no user extended attributes
    def refuse(*args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refuse)
    monkeypatch.setattr(os, "listxattr", refuse)
    box = LocalBackend("staging", tmp_path / "staging")
    # when a file is written with metadata, then the bytes land and the metadata reads empty
    with box.open_write("bag/f", 0, metadata={"bag": "b"}) as w:
        w.write(b"data")
    assert box.metadata("bag/f") == {}
    with box.open_read("bag/f") as f:
        assert f.read() == b"data"


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
