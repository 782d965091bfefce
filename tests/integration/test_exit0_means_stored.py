"""Exit 0 means stored: owners apart, versions instead of silent skips, the server decides."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from tests.integration.test_upload import all_datafiles, make_tree, run_upload
from tests.servers import StageboxServer

USER_EXP_DS = ("--structure", "username/experiment/dataset")


def versions(api: httpx.Client, **params: str) -> list[dict]:
    return api.get("/api/v1/datafiles", params={"versions": "all", **params}).json()["items"]


def content(api: httpx.Client, item: dict) -> bytes:
    return api.get(f"/api/v1/datafiles/{item['id']}/content").content


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rewrite(path: Path, data: bytes) -> None:
    """New bytes and a new mtime (a second later, so even a coarse clock sees it)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


@pytest.mark.parametrize("runs", [1, 2])
def test_two_owners_same_names_other_bytes_are_both_stored(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path, runs: int
):
    # given alice's and bob's identical trees whose files have the same sizes, other bytes
    a, b = os.urandom(4000), os.urandom(4000)
    big_a, big_b = os.urandom(2 << 20), os.urandom(2 << 20)
    layout = {
        "alice/exp1/ds1/a.tif": a,
        "alice/exp1/ds1/big.bin": big_a,
        "bob/exp1/ds1/a.tif": b,
        "bob/exp1/ds1/big.bin": big_b,
    }
    src = make_tree(tmp_path / "src", layout)
    # when it is uploaded in one run, or first alice's and then bob's folder alone
    if runs == 1:
        rc, report = run_upload(server, token, src, *USER_EXP_DS)
        assert rc == 0, report
        assert report["totals"]["verified"] == 4
    else:
        for owner in ("alice", "bob"):
            rc, report = run_upload(server, token, src, *USER_EXP_DS, "--include", f"{owner}/*")
            assert rc == 0, report
            assert report["totals"]["verified"] == 2, report
            assert {f["owner"] for f in report["files"]} == {owner}
    # then each owner's bytes are stored, each readable as that owner's file
    items = all_datafiles(api)
    assert len(items) == 4
    for item in items:
        assert item["state"] == "stored", item
        rel = f"{item['owner']}/{item['experiment']}/{item['dataset']}/{item['filename']}"
        assert content(api, item) == layout[rel]
        assert item["sha256"] == sha(layout[rel])


def test_same_size_rewrite_is_a_new_version_and_the_old_stays_readable(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    # given a stored small file and a stored large one
    old_small, old_big = os.urandom(3000), os.urandom(3 << 20)
    src = make_tree(tmp_path / "src", {"s.bin": old_small, "b.bin": old_big})
    assert run_upload(server, token, src, "--dataset", "d")[0] == 0
    # when both are rewritten with other bytes of the same size
    new_small, new_big = os.urandom(3000), os.urandom(3 << 20)
    rewrite(src / "s.bin", new_small)
    rewrite(src / "b.bin", new_big)
    rc, report = run_upload(server, token, src, "--dataset", "d")
    # then both are sent and stored as version 2; version 1 is kept, readable
    assert rc == 0, report
    assert report["totals"]["verified"] == 2, report
    assert report["totals"]["bytes_sent"] == 3000 + (3 << 20)
    every = versions(api, dataset="d")
    got = {(i["filename"], i["version"]): content(api, i) for i in every}
    assert got == {
        ("s.bin", 1): old_small,
        ("s.bin", 2): new_small,
        ("b.bin", 1): old_big,
        ("b.bin", 2): new_big,
    }
    latest = api.get("/api/v1/datafiles", params={"dataset": "d"}).json()["items"]
    assert sorted((i["filename"], i["version"], i["sha256"]) for i in latest) == [
        ("b.bin", 2, sha(new_big)),
        ("s.bin", 2, sha(new_small)),
    ]
    v1 = next(i for i in every if i["filename"] == "b.bin" and i["version"] == 1)
    again = api.get(f"/api/v1/datafiles/{latest[0]['id']}/content", params={"version": 1})
    assert again.content == content(api, v1)


def test_other_size_rewrite_is_a_new_version(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    src = make_tree(tmp_path / "src", {"f.bin": os.urandom(2000)})
    assert run_upload(server, token, src, "--dataset", "d")[0] == 0
    grown = os.urandom(2500)
    rewrite(src / "f.bin", grown)
    rc, report = run_upload(server, token, src, "--dataset", "d")
    assert rc == 0, report
    assert report["files"][0]["state"] == "verified"
    assert [(i["version"], i["size"]) for i in versions(api, dataset="d")] == [(1, 2000), (2, 2500)]


@pytest.mark.parametrize("journal", ["kept", "lost"])
def test_touched_but_identical_file_is_skipped_with_its_new_mtime(
    server: StageboxServer,
    token: str,
    api: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    journal: str,
):
    # given a stored tree of a small and a large file
    src = make_tree(tmp_path / "src", {"s.bin": os.urandom(3000), "b.bin": os.urandom(3 << 20)})
    assert run_upload(server, token, src, "--dataset", "d")[0] == 0
    # when both are touched (same bytes, new mtime), with the journal or without it
    for name in ("s.bin", "b.bin"):
        st = (src / name).stat()
        os.utime(src / name, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    if journal == "lost":
        monkeypatch.setenv("STAGEBOX_STATE_DIR", str(tmp_path / "fresh-state"))
    rc, report = run_upload(server, token, src, "--dataset", "d")
    # then nothing is sent, both are skipped, the server records the new mtimes
    assert rc == 0, report
    assert report["totals"]["skipped"] == 2, report
    assert report["totals"]["bytes_sent"] == 0
    every = versions(api, dataset="d")
    assert [i["version"] for i in every] == [1, 1]
    for item in every:
        assert item["mtime"] == (src / item["filename"]).stat().st_mtime_ns / 1e9
    # and a rerun now needs no hashing: still nothing sent
    rc, report = run_upload(server, token, src, "--dataset", "d")
    assert (rc, report["totals"]["skipped"]) == (0, 2)


def test_switching_token_sends_everything_to_the_new_uploader(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    src = make_tree(tmp_path / "src", {"a.txt": b"alpha", "b.bin": os.urandom(2 << 20)})
    assert run_upload(server, token, src, "--dataset", "d")[0] == 0
    # when the same tree is uploaded with another uploader's token
    carol = server.add_uploader("carol")
    rc, report = run_upload(server, carol, src, "--dataset", "d")
    # then every file is sent and stored under carol, not skipped
    assert rc == 0, report
    assert report["totals"]["verified"] == 2, report
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {carol}"}, timeout=30
    ) as as_carol:
        mine = all_datafiles(as_carol)
    assert sorted((i["filename"], i["state"]) for i in mine) == [
        ("a.txt", "stored"),
        ("b.bin", "stored"),
    ]


def test_switching_structure_sends_the_files_under_their_new_datasets(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    src = make_tree(tmp_path / "src", {"exp1/ds1/a.txt": b"alpha", "exp1/ds1/b.txt": b"beta"})
    # given a complete run with the wrong structure (exp1 taken as the dataset)
    rc, report = run_upload(server, token, src, "--structure", "dataset")
    assert (rc, report["totals"]["verified"]) == (0, 2)
    # when the structure is corrected
    rc, report = run_upload(server, token, src, "--structure", "experiment/dataset")
    # then the files are sent again, now as exp1/ds1, not skipped
    assert rc == 0, report
    assert report["totals"]["verified"] == 2, report
    got = {
        (i["experiment"], i["dataset"], i["directory"], i["filename"]) for i in all_datafiles(api)
    }
    assert ("exp1", "ds1", "", "a.txt") in got
    assert ("", "exp1", "ds1", "a.txt") in got


def test_a_file_the_server_no_longer_lists_as_stored_is_sent_despite_the_journal(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    # given a complete run of dataset d, then the same tree under dataset name e
    src = make_tree(tmp_path / "src", {"a.txt": b"alpha"})
    assert run_upload(server, token, src, "--dataset", "d")[0] == 0
    rc, report = run_upload(server, token, src, "--dataset", "e")
    # then it is sent: the journal's row for dataset d says nothing of e
    assert (rc, report["totals"]["verified"]) == (0, 1)
