"""Ingest judges each bag by the profile it was given: APTrust 2.3, BTR 1.0, auto or none,
kept with the job; a bag with several faults lists every one of them."""

from __future__ import annotations

import pytest

from stagebox.errors import InvalidInput
from stagebox.ingest import jobs
from stagebox.ingest.profiles import job_profile
from stagebox.ingest.worker import IngestRun
from stagebox.server.db.models import IngestJob
from tests.bags import aptrust_bag, btr_bag, make_bag_dir, to_tar


@pytest.fixture
def ingest(ctx, receiving):
    ctx.settings.ingest_backoff = 0.01

    def run(spec: str) -> dict[int, dict]:
        boxes = jobs.resolve_boxes(ctx, "inbox", None, None)
        outcome = IngestRun(ctx, boxes, job_profile(spec), workers=1, poll=0.05).run(once=True)
        return {job_id: jobs.show_job(ctx, job_id) for job_id in outcome}

    return run


def only(views: dict[int, dict]) -> dict:
    (view,) = views.values()
    return view


def test_a_bag_with_bad_checksums_and_a_bad_aptrust_info_lists_both(ctx, receiving, ingest,
                                                                    tmp_path):  # fmt: skip
    bag = aptrust_bag(tmp_path / "made", Access="acksess", Title="")
    (bag / "data/a.txt").write_bytes(b"ALPHA\n")  # same size: only the digests tell
    to_tar(bag, receiving / "bag1.tar")

    view = only(ingest("aptrust"))

    assert view["status"] == "failed"
    errors = view["errors"]
    assert any(e.startswith("data/a.txt: md5 digest mismatch") for e in errors), errors
    assert any(e.startswith("data/a.txt: sha256 digest mismatch") for e in errors), errors
    assert "aptrust-info.txt: required tag Title is empty (profile aptrust)" in errors
    assert any(e.startswith("aptrust-info.txt: tag Access has value 'acksess'") for e in errors)
    assert view["files"] == []


def test_a_good_aptrust_bag_is_stored_under_the_default_profile(ctx, receiving, ingest, tmp_path):
    to_tar(aptrust_bag(tmp_path / "made"), receiving / "bag1.tar")

    view = only(ingest("aptrust"))

    assert (view["status"], view["stage"]) == ("succeeded", "done"), view["errors"]


def test_auto_takes_each_bag_by_the_profile_it_declares(ctx, receiving, ingest, tmp_path):
    to_tar(btr_bag(tmp_path / "b", "btr1"), receiving / "btr1.tar")
    to_tar(make_bag_dir(tmp_path / "s", "silent"), receiving / "silent.tar")

    views = {v["bag"]: v for v in ingest("auto").values()}

    assert views["btr1.tar"]["status"] == "succeeded", views["btr1.tar"]["errors"]
    assert views["silent.tar"]["status"] == "failed"
    assert views["silent.tar"]["errors"] == [
        "bag-info.txt: --profile auto: the bag declares no BagIt-Profile-Identifier; "
        "name its profile with --profile (aptrust, btr or a file)"
    ]


def test_the_job_keeps_its_profile_by_name(ctx, receiving, ingest, tmp_path):
    to_tar(btr_bag(tmp_path / "made"), receiving / "bag1.tar")

    view = only(ingest("btr"))

    with ctx.catalog.session() as s:
        kept = s.get(IngestJob, view["id"]).profile
    assert kept["stagebox-profile"] == "btr"
    assert kept["json"]["name"] == "BTR SHA-512"
    assert view["status"] == "succeeded", view["errors"]


def test_a_file_that_is_no_profile_is_refused_before_any_job(tmp_path):
    path = tmp_path / "nothing.json"
    path.write_text('{"totally": "unrelated"}')

    with pytest.raises(InvalidInput, match="is neither a BagIt-Profiles profile"):
        job_profile(str(path))
    assert job_profile("none") is None


def test_a_dart_style_tar_is_stored_and_its_job_says_how_it_ended(ctx, receiving, ingest,
                                                                  tmp_path):  # fmt: skip
    to_tar(aptrust_bag(tmp_path / "made"), receiving / "bag1.tar", end_blocks=False)

    view = only(ingest("aptrust"))

    assert view["status"] == "succeeded", view["errors"]
    assert any("no end-of-archive marker after bag1/" in w for w in view["warnings"]), view


def test_a_bag_whose_only_manifest_is_sha384_is_checked_and_stored(ctx, receiving, ingest,
                                                                   tmp_path):  # fmt: skip
    to_tar(make_bag_dir(tmp_path / "good", algorithms=("sha384",)), receiving / "bag1.tar")
    spoilt = make_bag_dir(tmp_path / "spoilt", "bag2", algorithms=("sha384",))
    (spoilt / "data/a.txt").write_bytes(b"ALPHA\n")
    to_tar(spoilt, receiving / "bag2.tar")

    views = {v["bag"]: v for v in ingest("none").values()}

    assert views["bag1.tar"]["status"] == "succeeded", views["bag1.tar"]["errors"]
    assert views["bag2.tar"]["status"] == "failed"
    assert [e.split(":")[0:2] for e in views["bag2.tar"]["errors"]] == [
        ["data/a.txt", " sha384 digest mismatch"]
    ]
