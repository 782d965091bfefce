"""Reingest: a changed file is stored as a new version under a key of its own.

The uuid stays the file's identity across the versions of its bag; every
version's bytes stay readable under the key its row records, and no key a row
records, or the permanent box already holds, is written again.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from stagebox.ingest import jobs, stages
from stagebox.ingest.worker import IngestRun
from stagebox.server.db.models import IngestFile, IngestJob
from tests.bags import make_bag_dir, to_tar

INFO = {"Source-Organization": "Example Lab"}
PAYLOAD = {
    "same.txt": b"unchanged\n",
    "edit.bin": b"version 1\n" * 1000,
    "sub/also same.dat": os.urandom(70_000),
}


def ingest(ctx) -> dict[int, str]:
    boxes = jobs.resolve_boxes(ctx, "inbox", None, None)
    return IngestRun(ctx, boxes, None, workers=1, poll=0.05).run(once=True)


def deposit(receiving: Path, tmp_path: Path, version: int, payload: dict[str, bytes]) -> None:
    """A bag made afresh by bagit-python, dropped in as ``bag1.tar`` (replacing any earlier)."""
    bag_dir = make_bag_dir(tmp_path / f"made-v{version}", "bag1", payload=payload, info=INFO)
    tar_path = to_tar(bag_dir, receiving / "bag1.tar")
    os.utime(tar_path, ns=(version * 10**9, version * 10**9))  # a new version of the tar


def ingest_new(ctx, seen: set[int]) -> int:
    outcome = ingest(ctx)
    (job_id,) = (j for j in outcome if j not in seen)
    assert outcome[job_id] == "succeeded"
    seen.add(job_id)
    return job_id


def files_of(ctx, job_id: int) -> dict[str, dict]:
    return {f["path"]: f for f in jobs.show_job(ctx, job_id)["files"]}


def read_stored(ctx, key: str) -> bytes:
    with ctx.store.open_read(key) as f:
        return f.read()


def identity(ctx, key: str) -> tuple[int, int, int]:
    st = ctx.store.path(key).stat()
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def recorded_keys(ctx, file_uuid: str) -> list[tuple[int, str, str]]:
    """(job, stored key, sha256) of every row of ``file_uuid``, oldest first."""
    with ctx.catalog.session() as s:
        rows = s.execute(
            IngestFile.__table__.select()
            .where(IngestFile.uuid == file_uuid)
            .order_by(IngestFile.job_id)
        )
        return [(r.job_id, r.stored_key, r.sha256) for r in rows]


def test_a_changed_file_gets_a_new_key_and_every_version_stays_readable(ctx, receiving, tmp_path):
    seen: set[int] = set()
    deposit(receiving, tmp_path, 1, PAYLOAD)
    first = ingest_new(ctx, seen)
    v1 = files_of(ctx, first)
    kept = {path: identity(ctx, f["stored_key"]) for path, f in v1.items()}

    payload2 = {**PAYLOAD, "edit.bin": b"version 2\n" * 1000}  # same size: only digests tell
    deposit(receiving, tmp_path, 2, payload2)
    second = ingest_new(ctx, seen)
    v2 = files_of(ctx, second)

    payload3 = {**PAYLOAD, "edit.bin": b"version 3, longer\n" * 1000}
    deposit(receiving, tmp_path, 3, payload3)
    third = ingest_new(ctx, seen)
    v3 = files_of(ctx, third)

    edit = "data/edit.bin"
    file_uuid = v1[edit]["uuid"]
    assert v2[edit]["uuid"] == v3[edit]["uuid"] == file_uuid  # one identity across versions
    assert [f[edit]["state"] for f in (v1, v2, v3)] == ["stored"] * 3
    rows = recorded_keys(ctx, file_uuid)
    assert [job for job, _, _ in rows] == [first, second, third]
    keys = [key for _, key, _ in rows]
    assert len(set(keys)) == 3  # each version under a key of its own
    for (_, key, sha256), data in zip(
        rows, (PAYLOAD[edit[5:]], payload2[edit[5:]], payload3[edit[5:]]), strict=True
    ):
        stored = read_stored(ctx, key)
        assert stored == data
        assert hashlib.sha256(stored).hexdigest() == sha256
    assert identity(ctx, keys[0]) == kept[edit]  # version 1 was never written again

    unchanged = [path for path in v1 if path.startswith("data/") and path != edit]
    assert len(unchanged) == 2
    for path in unchanged:
        entry = v1[path]
        for later in (v2, v3):
            assert later[path]["uuid"] == entry["uuid"]
            assert later[path]["stored_key"] == entry["stored_key"]
            assert later[path]["state"] == "unchanged"
        assert identity(ctx, entry["stored_key"]) == kept[path]  # the same object, not rewritten
        assert read_stored(ctx, entry["stored_key"]) == PAYLOAD[path[5:]]
    # The manifests changed too: each tag file's versions are kept the same way.
    manifest = "manifest-sha256.txt"
    assert v1[manifest]["uuid"] == v3[manifest]["uuid"]
    assert len({f[manifest]["stored_key"] for f in (v1, v2, v3)}) == 3
    for f in (v1, v2, v3):
        data = read_stored(ctx, f[manifest]["stored_key"])
        assert hashlib.sha256(data).hexdigest() == f[manifest]["sha256"]


def test_a_key_the_permanent_box_already_holds_is_never_written(ctx, receiving, tmp_path):
    seen: set[int] = set()
    deposit(receiving, tmp_path, 1, PAYLOAD)
    first = ingest_new(ctx, seen)
    file_uuid = files_of(ctx, first)["data/edit.bin"]["uuid"]
    squatter = stages.version_key(file_uuid, 2)  # what version 2 would be stored as
    with ctx.store.open_write(squatter, 0) as w:
        w.write(b"put here by someone else\n")
    before = identity(ctx, squatter)

    deposit(receiving, tmp_path, 2, {**PAYLOAD, "edit.bin": b"version 2\n" * 1000})
    second = ingest_new(ctx, seen)

    key = files_of(ctx, second)["data/edit.bin"]["stored_key"]
    assert key not in (file_uuid, squatter)
    assert read_stored(ctx, key) == b"version 2\n" * 1000
    assert read_stored(ctx, squatter) == b"put here by someone else\n"
    assert identity(ctx, squatter) == before
    assert read_stored(ctx, file_uuid) == PAYLOAD["edit.bin"]


def test_a_store_killed_before_recording_keeps_what_it_promoted(ctx, receiving, tmp_path):
    seen: set[int] = set()
    deposit(receiving, tmp_path, 1, PAYLOAD)
    first = ingest_new(ctx, seen)
    file_uuid = files_of(ctx, first)["data/edit.bin"]["uuid"]
    deposit(receiving, tmp_path, 2, {**PAYLOAD, "edit.bin": b"version 2\n" * 1000})
    boxes = jobs.resolve_boxes(ctx, "inbox", None, None)
    job, _ = jobs.submit(ctx, boxes, "bag1.tar", profile=None)
    permanent = ctx.backend(job.permanent_box_id)

    def dying_flush() -> None:
        raise KeyboardInterrupt("killed")  # promoted, not yet recorded

    permanent.flush = dying_flush  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            stages.run_job(ctx, job.id, jobs.worker_id())
    finally:
        del permanent.flush
    with ctx.catalog.session() as s:
        row = s.query(IngestFile).filter_by(job_id=job.id, path="data/edit.bin").one()
        assert (row.stored_key, row.stored_at) == (None, None)
        dead = s.get(IngestJob, job.id)
        dead.lease_owner = f"{socket.gethostname()}:999999999:dead"
        dead.lease_until = None
    promoted = [o.key for o in ctx.store.list() if o.key.startswith(file_uuid + ".")]
    assert len(promoted) == 1
    moved = identity(ctx, promoted[0])

    assert ingest(ctx)[job.id] == "succeeded"

    after = files_of(ctx, job.id)["data/edit.bin"]
    assert after["stored_key"] == promoted[0]  # recorded as it was found, not written again
    assert identity(ctx, promoted[0]) == moved
    assert read_stored(ctx, promoted[0]) == b"version 2\n" * 1000
    assert read_stored(ctx, file_uuid) == PAYLOAD["edit.bin"]
    recorded = {f["stored_key"] for j in (first, job.id) for f in files_of(ctx, j).values()}
    assert {o.key for o in ctx.store.list()} == recorded  # nothing left over, nothing twice


def test_version_keys_name_the_uuid_first():
    file_uuid = "0b6d2a3e-9a9c-4a61-8c1e-0f6f4d2d6b11"
    assert stages.version_key(file_uuid, 1) == file_uuid
    assert stages.version_key(file_uuid, 2) == file_uuid + ".v2"
    for n in (1, 2, 17):
        assert stages._version_of(file_uuid, stages.version_key(file_uuid, n)) == n
    assert stages._version_of(file_uuid, file_uuid + ".vx") == 0
    assert stages._version_of(file_uuid, "another.v2") == 0
