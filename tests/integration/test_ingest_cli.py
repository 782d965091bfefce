"""``stagebox ingest`` as an operator runs it, on local boxes: which tars are taken, a tar
that disappears, cancelling a job, what the progress lines say and what ``--once`` exits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from stagebox.server.db.session import Catalog
from stagebox.server.process import stagebox_cmd
from tests.bags import APTRUST_INFO, broken_bag, make_bag_dir, to_tar

INFO = {"Source-Organization": "Example Lab"}


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """Where depositors drop their tars: the receiving box ``inbox``."""
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def data_dir(tmp_path: Path, inbox: Path) -> Path:
    """A server's data dir whose catalog knows the receiving box ``inbox``."""
    data = tmp_path / "data"
    data.mkdir()
    Catalog(f"sqlite:///{data / 'catalog.db'}").migrate()
    added = run(data, "admin", "--data-dir", str(data), "box", "add", "inbox",
                "--role", "receiving", "--backend", "local", "--path", str(inbox))  # fmt: skip
    assert added.returncode == 0, added.stderr
    return data


def run(
    data_dir: Path, *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    settings = {"STAGEBOX_INGEST_BACKOFF": "0.1", **env}
    return subprocess.run(
        stagebox_cmd(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **settings},
        timeout=timeout,
    )


def ingest(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run(data_dir, "ingest", "--data-dir", str(data_dir), *args, **env)


def ingest_once(
    data_dir: Path, profile: str = "none", **env: str
) -> subprocess.CompletedProcess[str]:
    return ingest(data_dir, "run", "--receiving", "inbox", "--once", "--profile", profile, **env)


def jobs(data_dir: Path) -> dict[str, dict]:
    """Every job by its bag's key, as ``ingest list --json`` shows it."""
    listed = ingest(data_dir, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {job["bag"]: job for job in json.loads(listed.stdout)}


def show(data_dir: Path, job_id: int) -> dict:
    shown = ingest(data_dir, "show", str(job_id), "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def deposit(inbox: Path, tmp_path: Path, key: str, compression: str = "", **options) -> Path:
    """A good bag made by bagit-python (APTrust's aptrust-info.txt too), tarred
    into the inbox as ``key``."""
    name = key.split(".")[0]
    options.setdefault("aptrust_info", APTRUST_INFO)
    bag_dir = make_bag_dir(tmp_path / "made" / key, name, info=INFO, **options)
    return to_tar(bag_dir, inbox / key, compression=compression)


def stored(data_dir: Path) -> set[str]:
    store = data_dir / "store"
    return {p.name for p in store.rglob("*") if p.is_file()} if store.exists() else set()


def staged(data_dir: Path) -> list[Path]:
    staging = data_dir / "staging"
    return [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []


def test_tgz_and_tar_gz_bags_are_found_and_stored_just_as_a_tar_is(data_dir, inbox, tmp_path):
    # given a plain, a .tgz and a .tar.gz bag in the receiving box
    deposit(inbox, tmp_path, "plain.tar")
    deposit(inbox, tmp_path, "short.tgz", compression="gz")
    deposit(inbox, tmp_path, "long.tar.gz", compression="gz")

    # when one run takes what is there
    done = ingest_once(data_dir)

    # then all three are stored, each named without its suffix
    assert done.returncode == 0, done.stderr
    found = jobs(data_dir)
    assert sorted(found) == ["long.tar.gz", "plain.tar", "short.tgz"]
    assert {job["name"] for job in found.values()} == {"plain", "short", "long"}
    assert {job["status"] for job in found.values()} == {"succeeded"}
    for job in found.values():
        files = show(data_dir, job["id"])["files"]
        assert {f["stored_key"] for f in files} <= stored(data_dir)
        assert "data/a.txt" in {f["path"] for f in files}
    assert staged(data_dir) == []


def test_a_profile_that_takes_only_plain_tars_refuses_a_gzipped_bag(data_dir, inbox, tmp_path):
    # given the shipped APTrust profile (Accept-Serialization: application/tar only)
    deposit(inbox, tmp_path, "plain.tar")
    deposit(inbox, tmp_path, "zipped.tgz", compression="gz")

    done = ingest_once(data_dir, profile="aptrust")

    # then the .tgz is found, and refused by its serialization; the .tar is stored
    assert done.returncode == 1, done.stderr
    found = jobs(data_dir)
    assert found["plain.tar"]["status"] == "succeeded"
    refused = show(data_dir, found["zipped.tgz"]["id"])
    assert refused["status"] == "failed"
    assert any(
        "serialization tar.gz" in e and "is not accepted" in e and "application/tar" in e
        for e in refused["errors"]
    ), refused["errors"]
    assert refused["files"] == []


def test_a_tar_removed_after_submit_fails_at_once_and_once_returns(data_dir, inbox, tmp_path):
    # given a job submitted for a tar that the depositor then deletes
    tar_path = deposit(inbox, tmp_path, "bad.tar")
    submitted = ingest(data_dir, "submit", "bad.tar", "--receiving", "inbox", "--profile", "none")
    assert submitted.returncode == 0, submitted.stderr
    tar_path.unlink()

    # when a run takes it, with retries far apart
    started = time.monotonic()
    done = ingest_once(data_dir, STAGEBOX_INGEST_RETRIES="3", STAGEBOX_INGEST_BACKOFF="30")
    took = time.monotonic() - started

    # then the job fails at its first attempt, saying why, and the run ends promptly
    assert done.returncode == 1, done.stderr
    assert took < 20, f"ingest run --once took {took:.1f} s"  # the first retry is 30 s off
    assert "job 1 (bad.tar): failed: removed from the receiving box" in done.stderr
    view = show(data_dir, 1)
    assert (view["status"], view["attempts"]) == ("failed", 1)
    assert view["errors"][-1] == "removed from the receiving box"


def test_progress_lines_name_the_job_the_bag_and_why(data_dir, inbox, tmp_path):
    deposit(inbox, tmp_path, "good.tgz", compression="gz")
    spoilt = broken_bag(tmp_path / "made", "wrong_digest", name="spoilt", info=INFO)
    to_tar(spoilt, inbox / "spoilt.tar")

    done = ingest_once(data_dir)

    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and all(re.match(r"job \d \((good\.tgz|spoilt\.tar)\): \S", x) for x in lines)
    found = jobs(data_dir)
    good, bad = found["good.tgz"]["id"], found["spoilt.tar"]["id"]
    count = len(show(data_dir, good)["files"])
    assert re.search(
        rf"^job {good} \(good\.tgz\): stored {count} files, [\d.]+ KiB$", done.stderr, re.M
    )
    failed = re.search(rf"^job {bad} \(spoilt\.tar\): failed: (.+)$", done.stderr, re.M)
    assert failed and "data/a.txt" in failed[1], done.stderr


def test_an_old_failed_job_does_not_fail_a_later_run(data_dir, inbox, tmp_path):
    # given a run in which a bag failed
    spoilt = broken_bag(tmp_path / "made", "wrong_digest", name="spoilt", info=INFO)
    to_tar(spoilt, inbox / "spoilt.tar")
    assert ingest_once(data_dir).returncode == 1

    # when a good bag arrives and a later run takes it
    deposit(inbox, tmp_path, "good.tar")
    done = ingest_once(data_dir)

    # then that run exits 0 and speaks of the new bag only
    assert done.returncode == 0, done.stderr
    assert "good.tar" in done.stderr and "spoilt.tar" not in done.stderr
    assert jobs(data_dir)["spoilt.tar"]["status"] == "failed"  # still there for an operator


def test_cancel_of_a_pending_job_removes_what_it_staged_and_keeps_it_cancelled(
    data_dir, inbox, tmp_path
):
    # given a pending job with objects an earlier attempt staged
    deposit(inbox, tmp_path, "bag1.tar")
    submitted = ingest(data_dir, "submit", "bag1.tar", "--receiving", "inbox", "--profile", "none")
    job_id = json.loads(submitted.stdout)["id"]
    leftover = data_dir / "staging" / str(job_id) / "0e0c3bd4-staged-by-an-earlier-attempt"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial\n")

    # when the operator cancels it
    done = ingest(data_dir, "cancel", str(job_id))

    # then its staged objects are gone and its record stays, cancelled, for ingest list
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"job {job_id} (bag1.tar): cancelled, 1 staged objects removed"
    assert staged(data_dir) == []
    assert jobs(data_dir)["bag1.tar"]["status"] == "cancelled"
    assert "cancelled" in ingest(data_dir, "list").stdout
    # and a later run neither takes it nor fails for it
    later = ingest_once(data_dir)
    assert later.returncode == 0, later.stderr
    assert stored(data_dir) == set()
    assert jobs(data_dir)["bag1.tar"]["status"] == "cancelled"


def test_cancel_of_a_succeeded_job_is_refused_in_one_line(data_dir, inbox, tmp_path):
    deposit(inbox, tmp_path, "bag1.tar")
    assert ingest_once(data_dir).returncode == 0

    done = ingest(data_dir, "cancel", "1")

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "job 1 (bag1.tar) has succeeded" in done.stderr
    assert jobs(data_dir)["bag1.tar"]["status"] == "succeeded"
