import errno
import os

import pytest

from stagebox.errors import KeyEscapesRoot, NotFound
from stagebox.storage import LocalBackend


@pytest.fixture
def boxes(tmp_path):
    return LocalBackend("staging", tmp_path / "staging"), LocalBackend("store", tmp_path / "store")


def test_write_resume_and_discard(boxes):
    staging, _ = boxes
    with staging.open_write("u/1", 0) as w:
        w.write(b"hello ")
    assert staging.size("u/1") == 6
    w = staging.open_write("u/1", 6)
    w.write(b"world")
    w.write(b"!!bad chunk")
    w.discard_to(11)
    w.close()
    with staging.open_read("u/1") as f:
        assert f.read() == b"hello world"
    with staging.open_read("u/1", 6) as f:
        assert f.read() == b"world"


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "", "a//b"])
def test_keys_never_leave_the_root(boxes, key):
    staging, _ = boxes
    with pytest.raises(KeyEscapesRoot):
        staging.open_write(key, 0)


def test_symlinks_inside_the_box_are_refused(boxes, tmp_path):
    staging, _ = boxes
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("x")
    os.symlink(tmp_path / "outside", staging.root / "dir")
    os.symlink(tmp_path / "outside" / "secret", staging.root / "file")
    with pytest.raises(KeyEscapesRoot):
        staging.open_write("dir/new", 0)
    with pytest.raises(KeyEscapesRoot):
        staging.open_read("file")


def test_missing_key(boxes):
    staging, _ = boxes
    assert staging.size("nope") is None
    with pytest.raises(NotFound):
        staging.open_read("nope")
    staging.delete("nope")  # not an error


def test_promote_renames_on_one_filesystem(boxes):
    staging, store = boxes
    with staging.open_write("u/1") as w:
        w.write(b"data")
    result = staging.promote("u/1", store, "ds/f", ("sha256",))
    assert result.renamed
    assert staging.size("u/1") is None
    assert store.size("ds/f") == 4
    # a retry after a crash that happened between rename and record is a no-op
    assert staging.promote("u/1", store, "ds/f", ("sha256",)).renamed


def test_promote_copies_and_hashes_across_filesystems(boxes, monkeypatch):
    staging, store = boxes
    with staging.open_write("u/1") as w:
        w.write(b"data")

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", cross_device)
    result = staging.promote("u/1", store, "ds/f", ("sha256", "md5"))
    assert not result.renamed
    assert result.digests["md5"] == "8d777f385d3dfec8815d20f7496026dc"
    assert staging.size("u/1") == 4  # the caller deletes it once the promotion is recorded
    with store.open_read("ds/f") as f:
        assert f.read() == b"data"


def test_list_walks_a_prefix(boxes):
    staging, _ = boxes
    for key in ("a/1", "a/b/2", "c/3"):
        staging.open_write(key).close()
    assert sorted(o.key for o in staging.list("a")) == ["a/1", "a/b/2"]


@pytest.mark.parametrize("start", [0, 4096, 5000])
def test_direct_writer_lands_every_byte_from_any_offset(tmp_path, start):
    box = LocalBackend("staging", tmp_path / "s")
    data = os.urandom(3 * (1 << 20) + 12345)
    with box.open_write("k") as w:
        w.write(data[:start])
    writer = box.open_write("k", start, size_hint=64 << 20)
    assert type(writer).__name__ == "_DirectWriter"
    pos = start
    for size in (1, 4095, 70_000, 1 << 20, 3, 2 << 20):
        writer.write(data[pos : pos + size])
        pos += size
        assert writer.tell() == min(pos, len(data))
    writer.write(data[pos:])
    writer.close()
    with box.open_read("k") as f:
        assert f.read() == data


def test_direct_writer_discards_a_rejected_chunk(tmp_path):
    box = LocalBackend("staging", tmp_path / "s")
    good, bad = os.urandom(2 << 20), os.urandom(3 << 20)
    writer = box.open_write("k", 0, size_hint=64 << 20)
    writer.write(good)
    writer.write(bad)  # partly flushed to disk, partly buffered
    writer.discard_to(len(good))
    writer.write(b"tail")
    writer.close()
    with box.open_read("k") as f:
        assert f.read() == good + b"tail"
