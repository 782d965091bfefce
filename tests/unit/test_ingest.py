"""Bag ingest through local boxes: the stages, resume, retry, reingest and bad bags."""

from __future__ import annotations

import hashlib
import os
import socket
import tarfile
from pathlib import Path

import pytest

from stagebox.ingest import jobs, stages
from stagebox.ingest.worker import IngestRun, exit_code
from stagebox.server.db.models import IngestFile, IngestJob
from tests.bags import TarBuilder, broken_bag, make_bag_dir, to_tar

INFO = {"Source-Organization": "Example Lab"}


@pytest.fixture
def ingest(ctx, receiving):
    ctx.settings.ingest_backoff = 0.01

    def run(profile: dict | None = None, **kwargs) -> dict[int, str]:
        boxes = jobs.resolve_boxes(ctx, "inbox", None, None)
        return IngestRun(ctx, boxes, profile, workers=1, poll=0.05, **kwargs).run(once=True)

    return run


def bag_tar(receiving: Path, tmp_path: Path, name: str = "bag1", **options) -> Path:
    bag_dir = make_bag_dir(tmp_path / "made", name, info=INFO, **options)
    return to_tar(bag_dir, receiving / f"{name}.tar")


def job_row(ctx, job_id: int) -> IngestJob:
    with ctx.catalog.session() as s:
        job = s.get(IngestJob, job_id)
        assert job is not None
        return job


def files_of(ctx, job_id: int) -> dict[str, dict]:
    return {f["path"]: f for f in jobs.show_job(ctx, job_id)["files"]}


def staged_keys(ctx) -> list[str]:
    return sorted(o.key for o in ctx.staging.list())


def test_a_good_bag_is_staged_validated_verified_and_stored(ctx, receiving, ingest, tmp_path):
    tar_path = bag_tar(receiving, tmp_path)

    outcome = ingest()

    assert exit_code(outcome) == 0
    (job_id,) = outcome
    view = jobs.show_job(ctx, job_id)
    assert (view["status"], view["stage"], view["attempts"]) == ("succeeded", "done", 1)
    assert tar_path.stat().st_size <= view["bytes_read"] <= 1.02 * tar_path.stat().st_size
    files = {f["path"]: f for f in view["files"]}
    payload = tmp_path / "made" / "bag1" / "data"
    for rel in ("a.txt", "sub/deeper/b.bin", "empty.dat", "caf\u00e9/na\u00efve \u00fcber.txt"):
        entry = files[f"data/{rel}"]
        data = (payload / rel).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["state"] == "stored"
        assert ctx.store.open_read(entry["stored_key"]).read() == data
        assert entry["stored_key"] == entry["uuid"]
    assert {"bagit.txt", "bag-info.txt", "manifest-sha256.txt"} <= set(files)
    assert staged_keys(ctx) == []  # cleanup removed the job's prefix
    assert tar_path.exists()  # the receiving tar stays unless asked


def test_a_bag_whose_only_manifests_are_sha384_is_checked_and_stored(
    ctx, receiving, ingest, tmp_path
):
    # staging records md5, sha1, sha256 and sha512: validate reads the staged files
    # again for sha384, so a wrong byte is still caught
    bag_tar(receiving, tmp_path, algorithms=("sha384",))
    spoilt = make_bag_dir(tmp_path / "spoilt", "bag2", info=INFO, algorithms=("sha384",))
    (spoilt / "data/a.txt").write_bytes(b"ALPHA\n")
    to_tar(spoilt, receiving / "bag2.tar")

    outcome = ingest()

    views = {v["bag"]: v for v in (jobs.show_job(ctx, job_id) for job_id in outcome)}
    good, bad = views["bag1.tar"], views["bag2.tar"]
    assert (good["status"], good["stage"], good["warnings"]) == ("succeeded", "done", [])
    files = {f["path"]: f for f in good["files"]}
    assert {"manifest-sha384.txt", "tagmanifest-sha384.txt", "data/a.txt"} <= set(files)
    assert {f["state"] for f in files.values()} == {"stored"}
    assert ctx.store.open_read(files["data/a.txt"]["stored_key"]).read() == b"alpha\n"
    said, found = (hashlib.sha384(data).hexdigest() for data in (b"alpha\n", b"ALPHA\n"))
    assert bad["status"] == "failed"
    assert bad["errors"] == [
        f"data/a.txt: sha384 digest mismatch: manifest-sha384.txt says {said}, file has {found}"
    ]
    assert staged_keys(ctx) == []


def test_the_same_bag_is_never_ingested_twice(ctx, receiving, ingest, tmp_path):
    bag_tar(receiving, tmp_path)
    first = ingest()
    second = ingest()
    assert list(first.values()) == ["succeeded"]
    assert second == {}  # its job ended in the first run: nothing to do
    assert len(jobs.list_jobs(ctx)) == 1


def test_a_newer_version_supersedes_a_job_in_progress(ctx, receiving, ingest, tmp_path):
    tar_path = bag_tar(receiving, tmp_path)
    boxes = jobs.resolve_boxes(ctx, "inbox", None, None)
    old, _ = jobs.submit(ctx, boxes, "bag1.tar", profile=None)
    with ctx.staging.open_write(f"{old.id}/left-by-an-earlier-attempt", 0) as w:
        w.write(b"partial\n")
    os.utime(tar_path, ns=(1, 1))  # the depositor replaced the tar

    outcome = ingest()

    (newer,) = outcome
    assert outcome[newer] == "succeeded" and newer != old.id
    assert staged_keys(ctx) == []  # what the superseded job had staged is gone
    superseded = job_row(ctx, old.id)
    assert (superseded.status, superseded.superseded_by) == ("failed", newer)
    assert "superseded by job" in superseded.errors[0]


def test_an_invalid_bag_fails_with_all_its_errors_and_leaves_nothing_staged(
    ctx, receiving, ingest, tmp_path
):
    bag_dir = broken_bag(tmp_path / "made", "wrong_digest", info=INFO)
    (bag_dir / "data" / "stowaway.txt").write_text("not in any manifest\n")
    to_tar(bag_dir, receiving / "bag1.tar")

    outcome = ingest()

    (job_id,) = outcome
    job = job_row(ctx, job_id)
    assert (job.status, job.stage) == ("failed", "validate")
    text = "\n".join(job.errors)
    assert "data/a.txt" in text and "mismatch" in text
    assert "data/stowaway.txt" in text
    assert job.error_count == len(job.errors) >= 2
    assert staged_keys(ctx) == []
    assert files_of(ctx, job_id) == {}


@pytest.mark.parametrize(
    ("kind", "entry"),
    [
        (tarfile.SYMTYPE, "bag1/data/link"),
        (tarfile.LNKTYPE, "bag1/data/hard"),
        (tarfile.CHRTYPE, "bag1/data/null"),
        (tarfile.FIFOTYPE, "bag1/data/pipe"),
    ],
)
def test_links_and_devices_are_refused_and_never_written(
    ctx, receiving, ingest, tmp_path, kind, entry
):
    bag_dir = make_bag_dir(tmp_path / "made", "bag1", info=INFO)
    TarBuilder(receiving / "bag1.tar").bag(bag_dir).special(entry, kind, "/etc/passwd").close()

    outcome = ingest()

    (job_id,) = outcome
    job = job_row(ctx, job_id)
    assert job.status == "failed"
    assert any(entry.removeprefix("bag1/") in e for e in job.errors), job.errors
    assert staged_keys(ctx) == []


@pytest.mark.parametrize(
    "entry", ["bag1/../escape.txt", "/etc/cron.d/evil", "bag1/data/../../up.txt"]
)
def test_entries_that_would_leave_the_bag_land_nowhere(ctx, receiving, ingest, tmp_path, entry):
    bag_dir = make_bag_dir(tmp_path / "made", "bag1", info=INFO)
    TarBuilder(receiving / "bag1.tar").bag(bag_dir).file(entry, b"payload\n").close()

    outcome = ingest()

    (job_id,) = outcome
    assert job_row(ctx, job_id).status == "failed"
    everywhere = [p for p in tmp_path.rglob("*") if p.name in {"escape.txt", "evil", "up.txt"}]
    assert everywhere == []
    assert staged_keys(ctx) == []


def test_a_truncated_tar_fails_without_keeping_the_cut_file(ctx, receiving, ingest, tmp_path):
    tar_path = bag_tar(receiving, tmp_path, payload={"big.bin": os.urandom(300_000)})
    with open(tar_path, "r+b") as f:
        f.truncate(tar_path.stat().st_size // 2)

    outcome = ingest()

    (job_id,) = outcome
    job = job_row(ctx, job_id)
    assert job.status == "failed"
    assert any("truncated" in e for e in job.errors), job.errors
    assert staged_keys(ctx) == []


def test_the_default_profile_refuses_fetch_txt(ctx, receiving, ingest, tmp_path):
    from stagebox.cli.ingest import _profile

    bag_dir = broken_bag(tmp_path / "made", "fetch_present", info=INFO)
    to_tar(bag_dir, receiving / "bag1.tar")

    outcome = ingest(profile=_profile("aptrust"))

    (job_id,) = outcome
    assert any("fetch.txt" in e for e in job_row(ctx, job_id).errors)


def test_reingest_keeps_uuids_and_stores_only_what_changed(ctx, receiving, ingest, tmp_path):
    payload = {"same.txt": b"unchanged\n", "edit.txt": b"version 1\n", "gone.txt": b"bye\n"}
    bag_tar(receiving, tmp_path / "v1", payload=payload)
    (first,) = ingest()
    before = files_of(ctx, first)
    payload2 = {"same.txt": b"unchanged\n", "edit.txt": b"version 2\n", "new.txt": b"hello\n"}
    bag_tar(receiving, tmp_path / "v2", payload=payload2)  # same name, new content

    outcome = ingest()

    (second,) = (j for j in outcome if j != first)
    assert outcome[second] == "succeeded"
    after = files_of(ctx, second)
    assert after["data/same.txt"]["uuid"] == before["data/same.txt"]["uuid"]
    assert after["data/same.txt"]["state"] == "unchanged"
    assert after["data/edit.txt"]["uuid"] == before["data/edit.txt"]["uuid"]
    assert after["data/edit.txt"]["state"] == "stored"
    assert ctx.store.open_read(after["data/edit.txt"]["stored_key"]).read() == b"version 2\n"
    assert after["data/new.txt"]["uuid"] not in {f["uuid"] for f in before.values()}
    assert "data/gone.txt" not in after


def test_a_failing_job_is_retried_with_backoff_then_left_for_an_operator(
    ctx, receiving, ingest, tmp_path
):
    tar_path = bag_tar(receiving, tmp_path)
    boxes = jobs.resolve_boxes(ctx, "inbox", None, None)
    job, _ = jobs.submit(ctx, boxes, "bag1.tar", profile=None)
    ctx.settings.ingest_backoff = 0.01
    tar_path.unlink()
    tar_path.mkdir()  # every attempt fails to read it: not a regular file

    outcome = ingest()

    assert outcome == {job.id: "failed"}
    failed = job_row(ctx, job.id)
    assert failed.attempts == 1 + ctx.settings.ingest_retries
    assert len(failed.errors) == failed.attempts
    assert "attempt 4 at stage" in failed.errors[-1]

    tar_path.rmdir()
    bag_tar(receiving, tmp_path / "again")
    requeued = jobs.requeue(ctx, job.id)
    assert (requeued.status, requeued.attempts, requeued.stage) == ("pending", 0, "stage")


def test_a_killed_attempt_resumes_and_stages_each_file_once(ctx, receiving, tmp_path):
    payload = {f"f{i:03}.bin": os.urandom(1000 + i) for i in range(40)}
    bag_tar(receiving, tmp_path, payload=payload)
    boxes = jobs.resolve_boxes(ctx, "inbox", None, None)
    job, _ = jobs.submit(ctx, boxes, "bag1.tar", profile=None)
    owner = jobs.worker_id()
    claimed = jobs.claim(ctx, job.id, owner)
    assert claimed is not None
    attempt = stages.Attempt(ctx, claimed, owner)
    original = stages.CHECKPOINT_FILES
    stages.CHECKPOINT_FILES = 10
    written: list[str] = []
    real_write = stages._write_entry

    def dying_write(staging, keys, member, *args):
        if len(written) == 25:
            raise KeyboardInterrupt("killed")  # mid-stage, 5 files past a checkpoint
        written.append(member.path)
        return real_write(staging, keys, member, *args)

    stages._write_entry = dying_write
    try:
        with pytest.raises(KeyboardInterrupt):
            stages.run_stage(attempt)
    finally:
        stages._write_entry = real_write
        stages.CHECKPOINT_FILES = original
    with ctx.catalog.session() as s:
        checkpointed = s.query(IngestFile).filter_by(job_id=job.id).count()
    assert checkpointed == 20
    assert len(staged_keys(ctx)) >= 25  # 5 files written after the last checkpoint

    # the worker "died": its lease points at a process that is gone
    with ctx.catalog.session() as s:
        s.get(IngestJob, job.id).lease_owner = f"{socket.gethostname()}:999999999:dead"
        s.get(IngestJob, job.id).lease_until = None
    outcome = IngestRun(ctx, boxes, None, workers=1, poll=0.05).run(once=True)

    assert outcome == {job.id: "succeeded"}
    view = jobs.show_job(ctx, job.id)
    assert len(view["files"]) == len({f["uuid"] for f in view["files"]}) > 40
    stored = {o.key for o in ctx.store.list()}
    assert {f["uuid"] for f in view["files"]} == stored
    assert staged_keys(ctx) == []
    total = sum(f["size"] for f in view["files"] if f["path"].startswith("data/"))
    assert view["bytes_staged"] < 2 * total  # the rerun skipped what was checkpointed


def test_cleanup_never_touches_a_neighbour_jobs_prefix(ctx, receiving, ingest, tmp_path):
    with ctx.staging.open_write("10/neighbour", 0) as w:
        w.write(b"job ten's\n")
    with ctx.staging.open_write("1x", 0) as w:
        w.write(b"not a job\n")
    bag_tar(receiving, tmp_path)

    (job_id,) = ingest()

    assert job_id == 1
    assert staged_keys(ctx) == ["10/neighbour", "1x"]


def test_requeue_refuses_unknown_stages_and_jobs(ctx):
    from stagebox.errors import InvalidInput, NotFound

    with pytest.raises(InvalidInput, match="--stage"):
        jobs.requeue(ctx, 1, "unpack")
    with pytest.raises(NotFound):
        jobs.requeue(ctx, 12345)


def test_a_receiving_box_must_have_the_receiving_role(ctx, tmp_path):
    from stagebox.errors import InvalidInput

    with pytest.raises(InvalidInput, match="role staging"):
        jobs.resolve_boxes(ctx, "staging", None, None)
    with pytest.raises(InvalidInput, match="no storage box"):
        jobs.resolve_boxes(ctx, "nope", None, None)


def test_a_stopped_worker_hands_its_job_back_at_the_next_checkpoint(ctx, receiving, tmp_path):
    import threading

    bag_tar(receiving, tmp_path)
    boxes = jobs.resolve_boxes(ctx, "inbox", None, None)
    job, _ = jobs.submit(ctx, boxes, "bag1.tar", profile=None)
    stop = threading.Event()
    stop.set()

    outcome = stages.run_job(ctx, job.id, jobs.worker_id(), stop=stop)

    assert outcome == "stopped"
    stopped = job_row(ctx, job.id)
    assert (stopped.status, stopped.attempts, stopped.lease_owner) == ("pending", 0, None)
    assert stages.run_job(ctx, job.id, jobs.worker_id()) == "succeeded"


def test_the_received_tar_is_deleted_once_stored_only_when_asked(ctx, receiving, ingest, tmp_path):
    good = bag_tar(receiving, tmp_path, "kept")
    bad_dir = broken_bag(tmp_path / "made", "wrong_digest", name="spoilt", info=INFO)
    bad = to_tar(bad_dir, receiving / "spoilt.tar")

    outcome = ingest(delete_received=True)

    assert sorted(outcome.values()) == ["failed", "succeeded"]
    assert not good.exists()  # stored, so the depositor's tar is gone
    assert bad.exists()  # an invalid bag's tar stays for the depositor


def test_a_job_that_has_begun_storing_cannot_be_cancelled(ctx, receiving, tmp_path):
    from stagebox.errors import InvalidInput

    bag_tar(receiving, tmp_path)
    boxes = jobs.resolve_boxes(ctx, "inbox", None, None)
    job, _ = jobs.submit(ctx, boxes, "bag1.tar", profile=None)
    with ctx.catalog.session() as s:
        s.get(IngestJob, job.id).stage = "store"  # a worker moved it on meanwhile

    with pytest.raises(InvalidInput, match="too late to cancel"):
        jobs.cancel(ctx, job.id)

    assert job_row(ctx, job.id).status == "pending"
