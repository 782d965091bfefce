"""Bag ingest as an operator runs it, with receiving, staging and permanent boxes on S3
(the moto server on 127.0.0.1), including a worker killed with SIGKILL mid-stage and a
job cancelled while a worker runs it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from stagebox.server.db.session import Catalog
from stagebox.server.process import stagebox_cmd
from tests.bags import APTRUST_INFO, make_bag_dir, to_tar
from tests.s3 import MotoServer, leftovers, running_moto

INFO = {"Source-Organization": "Example Lab"}
BUCKETS = {"inbox": "receiving", "s3stage": "staging", "s3keep": "permanent"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Iterator[MotoServer]:
    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3(moto):
    return boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")


@pytest.fixture
def data_dir(tmp_path, moto, s3) -> Path:
    """A data dir with the three S3 boxes, each its own fresh bucket."""
    data = tmp_path / "data"
    data.mkdir()
    Catalog(f"sqlite:///{data / 'catalog.db'}").migrate()
    suffix = tmp_path.name[-20:].lower().replace("_", "-")
    for name, role in BUCKETS.items():
        bucket = f"{name}-{suffix}"
        s3.create_bucket(Bucket=bucket)
        cli(data, "admin", "--data-dir", str(data), "box", "add", name, "--role", role,
            "--backend", "s3", "--bucket", bucket, "--endpoint-url", moto.url)  # fmt: skip
    return data


def bucket(data_dir: Path, box: str) -> str:
    return f"{box}-{data_dir.parent.name[-20:].lower().replace('_', '-')}"


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STAGEBOX_INGEST_BACKOFF": "0.1"}
    done = subprocess.run(stagebox_cmd(*args), capture_output=True, text=True, env=env, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}: {done.stderr}")
    return done


def run_argv(data_dir: Path) -> list[str]:
    """``stagebox ingest run`` from the inbox through the s3 staging box to s3keep."""
    return ["ingest", "--data-dir", str(data_dir), "run", "--receiving", "inbox",
            "--staging", "s3stage", "--permanent", "s3keep"]  # fmt: skip


def ingest(data_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cli(data_dir, *run_argv(data_dir), *extra, check=check)


def show(data_dir: Path, job_id: int) -> dict:
    out = cli(data_dir, "ingest", "--data-dir", str(data_dir), "show", str(job_id), "--json")
    return json.loads(out.stdout)


def keys(s3, name: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=name)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def deposit(s3, data_dir: Path, tmp_path: Path, name: str, payload: dict[str, bytes]) -> None:
    bag_dir = make_bag_dir(
        tmp_path / "made", name, payload=payload, info=INFO, aptrust_info=APTRUST_INFO
    )
    tar_path = to_tar(bag_dir)
    s3.upload_file(str(tar_path), bucket(data_dir, "inbox"), f"deposits/{name}.tar")


def test_a_bag_goes_from_a_receiving_bucket_to_a_permanent_bucket(s3, data_dir, tmp_path):
    payload = {"readme.txt": b"hello\n", "M\u00fcller/\u00df.bin": os.urandom(300_000)}
    deposit(s3, data_dir, tmp_path, "bag1", payload)

    done = ingest(data_dir, "--once", "--profile", "aptrust")

    assert "job 1 (deposits/bag1.tar): succeeded: stored" in done.stderr
    view = show(data_dir, 1)
    assert (view["status"], view["attempts"]) == ("succeeded", 1)
    files = {f["path"]: f for f in view["files"]}
    kept = keys(s3, bucket(data_dir, "s3keep"))
    assert kept == sorted(f["uuid"] for f in files.values())
    entry = files["data/M\u00fcller/\u00df.bin"]
    stored = s3.get_object(Bucket=bucket(data_dir, "s3keep"), Key=entry["uuid"])
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == entry["sha256"]
    assert keys(s3, bucket(data_dir, "s3stage")) == []
    assert leftovers_in(data_dir, moto_url(s3)) == ([], [])


def test_a_worker_killed_mid_stage_is_resumed_and_each_file_staged_once(s3, data_dir, tmp_path):
    payload = {f"part{i:03}.bin": os.urandom(400_000 + i) for i in range(120)}
    deposit(s3, data_dir, tmp_path, "big", payload)
    worker = subprocess.Popen(
        stagebox_cmd(*run_argv(data_dir), "--once", "--profile", "none"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        staged = wait_for_checkpoint(data_dir / "catalog.db", worker)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    assert 0 < staged < sum(len(v) for v in payload.values())
    assert keys(s3, bucket(data_dir, "s3stage"))  # the killed worker left objects behind

    done = ingest(data_dir, "--once", "--profile", "none")

    assert "job 1 (deposits/big.tar): succeeded: stored" in done.stderr
    view = show(data_dir, 1)
    assert view["attempts"] == 2
    paths = [f["path"] for f in view["files"]]
    uuids = [f["uuid"] for f in view["files"]]
    assert len(paths) == len(set(paths)) == len(set(uuids))
    assert {f"data/{name}" for name in payload} <= set(paths)
    assert keys(s3, bucket(data_dir, "s3keep")) == sorted(uuids)
    assert keys(s3, bucket(data_dir, "s3stage")) == []
    total = sum(f["size"] for f in view["files"])
    assert view["bytes_staged"] < 2 * total  # what was checkpointed was not staged again
    assert view["bytes_read"] >= 2 * 0.5 * total  # the rerun streamed the tar again


def test_an_invalid_bag_fails_and_its_staged_objects_are_removed(s3, data_dir, tmp_path):
    bag_dir = make_bag_dir(tmp_path / "made", "bad", info=INFO)
    (bag_dir / "data" / "a.txt").write_text("tampered\n")
    tar_path = to_tar(bag_dir)
    s3.upload_file(str(tar_path), bucket(data_dir, "inbox"), "bad.tar")

    done = ingest(data_dir, "--once", check=False)

    assert done.returncode == 1
    view = show(data_dir, 1)
    assert view["status"] == "failed"
    assert any("data/a.txt" in e for e in view["errors"])
    assert keys(s3, bucket(data_dir, "s3stage")) == []
    assert keys(s3, bucket(data_dir, "s3keep")) == []


def test_a_job_cancelled_mid_stage_stops_without_storing_and_stays_cancelled(
    s3, data_dir, tmp_path
):
    # given a worker staging a bag of many small files (each a PUT to the staging bucket)
    payload = {f"part{i:03}.txt": os.urandom(2000 + i) for i in range(400)}
    deposit(s3, data_dir, tmp_path, "big", payload)
    log = tmp_path / "worker.err"
    with log.open("w") as err:
        worker = subprocess.Popen(
            stagebox_cmd(*run_argv(data_dir), "--once", "--profile", "none"),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_for_checkpoint(data_dir / "catalog.db", worker)

        # when the operator cancels the job
        cancelled = cli(data_dir, "ingest", "--data-dir", str(data_dir), "cancel", "1")

        # then the worker stops at its next checkpoint and the run ends, not failed
        assert worker.wait(timeout=60) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
    assert "job 1 (deposits/big.tar): cancelled" in cancelled.stdout
    assert "job 1 (deposits/big.tar): cancelled: stopped without storing" in log.read_text()
    assert keys(s3, bucket(data_dir, "s3stage")) == []
    assert keys(s3, bucket(data_dir, "s3keep")) == []
    view = show(data_dir, 1)
    assert (view["status"], view["files"]) == ("cancelled", [])
    listed = cli(data_dir, "ingest", "--data-dir", str(data_dir), "list", "--json")
    assert [job["status"] for job in json.loads(listed.stdout)] == ["cancelled"]


def wait_for_checkpoint(catalog: Path, worker: subprocess.Popen, timeout: float = 120) -> int:
    """Bytes staged at the first checkpoint the worker records mid-stage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before it could be killed"
        if catalog.exists():
            with sqlite3.connect(catalog, timeout=5) as db:
                try:
                    row = db.execute("SELECT stage, bytes_staged FROM ingest_jobs").fetchone()
                except sqlite3.OperationalError:
                    row = None
            if row and row[0] == "stage" and row[1] > 0:
                return int(row[1])
        time.sleep(0.05)
    raise AssertionError("no checkpoint mid-stage")


def moto_url(s3) -> str:
    return s3.meta.endpoint_url


def leftovers_in(data_dir: Path, url: str) -> tuple[list[str], list[str]]:
    from stagebox.storage.s3 import S3Backend

    return leftovers(S3Backend("s3stage", bucket(data_dir, "s3stage"), endpoint_url=url))


def test_audit_of_a_permanent_bucket_finds_a_deleted_and_a_rewritten_object(s3, data_dir, tmp_path):
    # given a bag stored in a permanent bucket
    payload = {"a.bin": os.urandom(100_000), "b.bin": os.urandom(150_000), "c.txt": b"c\n"}
    deposit(s3, data_dir, tmp_path, "kept", payload)
    ingest(data_dir, "--once", "--profile", "none")
    files = {f["path"]: f for f in show(data_dir, 1)["files"]}
    keep = bucket(data_dir, "s3keep")
    audit = ["admin", "--data-dir", str(data_dir), "audit", "--json", "--box", "s3keep"]
    first = json.loads(cli(data_dir, *audit, "--all").stdout)
    assert (first["ok"], first["corrupt"], first["missing"]) == (len(files), 0, 0)

    # when one object is deleted and another rewritten with other bytes of the same size
    s3.delete_object(Bucket=keep, Key=files["data/a.bin"]["stored_key"])
    s3.put_object(Bucket=keep, Key=files["data/b.bin"]["stored_key"], Body=os.urandom(150_000))
    done = cli(data_dir, *audit, "--all", check=False)

    # then the audit names them missing and corrupt, exits 1, and records it
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert (report["corrupt"], report["missing"]) == (1, 1), report
    found = {f["key"]: f["result"] for f in report["findings"]}
    assert found == {
        files["data/a.bin"]["stored_key"]: "missing",
        files["data/b.bin"]["stored_key"]: "corrupt",
    }
    with sqlite3.connect(data_dir / "catalog.db") as db:
        marks = dict(db.execute("SELECT path, fixity FROM ingest_files").fetchall())
    assert marks["data/a.bin"] == "missing"
    assert marks["data/b.bin"] == "corrupt"
    assert marks["data/c.txt"] == "ok"
