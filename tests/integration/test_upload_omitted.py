"""Nothing is left out silently: what ``stagebox upload`` does not send, it reports with why."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.integration.test_upload import all_datafiles, make_tree, upload_cmd, wait_for
from tests.privileges import without_dac_override
from tests.servers import StageboxServer, stagebox_cmd


def upload(
    server: StageboxServer, token: str, src: Path, *args: str, unprivileged: bool = False
) -> subprocess.CompletedProcess[str]:
    cmd = upload_cmd(server, token, src, *args)
    return subprocess.run(
        without_dac_override(cmd) if unprivileged else cmd, capture_output=True, text=True
    )


def omitted(report: dict, src: Path) -> list[tuple[str, str]]:
    return [(str(Path(o["path"]).relative_to(src)), o["reason"]) for o in report["omitted"]]


def test_unreadable_folder_fails_the_run_though_every_file_verified(
    server: StageboxServer, token: str, tmp_path: Path
):
    # given a dataset with a folder its owner's upload cannot list
    src = make_tree(tmp_path / "src", {"ds/a.txt": b"alpha", "ds/locked/b.txt": b"beta"})
    os.chmod(src / "ds/locked", 0)
    try:
        # when it is uploaded by a process without root's override of file modes
        proc = upload(server, token, src, unprivileged=True)
    finally:
        os.chmod(src / "ds/locked", 0o755)
    # then what could be read is verified, the folder is reported, and the run fails
    report = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stderr
    assert [(f["filename"], f["state"]) for f in report["files"]] == [("a.txt", "verified")]
    assert report["omitted"] == [
        {"path": str(src / "ds/locked"), "reason": "unreadable", "detail": "Permission denied"}
    ]
    assert report["totals"]["omitted"] == 1
    assert report["omitted_by_reason"] == {"unreadable": 1}


def test_every_omission_is_in_the_json_and_none_changes_the_exit_code(
    server: StageboxServer, token: str, tmp_path: Path
):
    # given a tree with one file to send and one of each thing the scan leaves out
    src = make_tree(
        tmp_path / "src",
        {"stray.txt": b"above", "ds/a.tif": b"a", "ds/notes.txt": b"n", "ds/new.tif": b"new"},
    )
    old = time.time() - 3600
    for name in ("a.tif", "notes.txt"):
        os.utime(src / "ds" / name, (old, old))
    os.symlink("a.tif", src / "ds/link.tif")
    os.mkfifo(src / "ds/pipe.tif")
    # when it is uploaded
    proc = upload(server, token, src, "--include", "*.tif", "--min-age", "5")
    # then the one file is verified, each omission is listed with its reason, exit 0
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [f["filename"] for f in report["files"]] == ["a.tif"]
    assert omitted(report, src) == [
        ("ds/link.tif", "symlink"),
        ("ds/new.tif", "newer than --min-age"),
        ("ds/notes.txt", "excluded"),
        ("ds/pipe.tif", "special file"),
        ("stray.txt", "above the dataset level"),
    ]
    assert report["totals"] == {**report["totals"], "files": 1, "verified": 1, "omitted": 5}
    assert report["omitted_by_reason"] == {
        "symlink": 1,
        "special file": 1,
        "above the dataset level": 1,
        "excluded": 1,
        "newer than --min-age": 1,
    }


def test_followed_links_are_stored_under_the_links_names(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    # given a dataset whose "latest" is a link to a file and "calib" a link to a folder
    src = make_tree(tmp_path / "src", {"ds/raw/r1.bin": b"run one", "shared/c.dat": b"calib"})
    os.symlink("raw/r1.bin", src / "ds/latest.bin")
    os.symlink("../shared", src / "ds/calib")
    (tmp_path / "elsewhere.txt").write_bytes(b"not in SRC")
    os.symlink(tmp_path / "elsewhere.txt", src / "ds/outside")
    # when it is uploaded following links
    proc = upload(server, token, src, "--symlinks", "follow")
    # then the targets' bytes are stored under the links' names; the link out is refused
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert omitted(report, src) == [("ds/outside", "symlink leaves SRC")]
    items = wait_for(
        lambda: (i := all_datafiles(api)) and all(x["state"] == "stored" for x in i) and i,
        what="every datafile stored",
    )
    stored = {
        (i["dataset"], i["directory"], i["filename"]): api.get(
            f"/api/v1/datafiles/{i['id']}/content"
        ).content
        for i in items
    }
    assert stored == {
        ("ds", "raw", "r1.bin"): b"run one",
        ("ds", "", "latest.bin"): b"run one",
        ("ds", "calib", "c.dat"): b"calib",
        ("shared", "", "c.dat"): b"calib",
    }


def test_structure_deeper_than_the_tree_is_a_usage_error(
    server: StageboxServer, token: str, tmp_path: Path
):
    # given files two levels deep, uploaded as if they were four
    src = make_tree(tmp_path / "src", {"alice/a.tif": b"a", "alice/b.tif": b"b"})
    proc = upload(server, token, src, "--structure", "username/experiment/dataset")
    # then the run stops with exit 2 and one line saying what was expected and found
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "stagebox: structure: username/experiment/dataset expects files inside"
        " username/experiment/dataset/ folders, but the deepest path is 2 levels: alice/a.tif"
    )
    report = json.loads(proc.stdout)  # still one JSON object, naming the error
    assert report["totals"]["files"] == 0
    assert report["totals"]["omitted"] == 2
    assert "deepest path is 2 levels" in report["error"]


def test_files_only_at_the_first_level_are_a_usage_error_without_json(
    server: StageboxServer, token: str, tmp_path: Path
):
    src = make_tree(tmp_path / "src", {"a.tif": b"a", "b.tif": b"b"})
    proc = subprocess.run(
        stagebox_cmd("upload", str(src), "--server", server.url, "--token", token),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "found only files at the first level: a.tif, b.tif" in proc.stderr


def test_empty_tree_uploads_nothing_and_succeeds(
    server: StageboxServer, token: str, tmp_path: Path
):
    src = tmp_path / "src"
    (src / "alice" / "exp").mkdir(parents=True)
    proc = upload(server, token, src, "--structure", "username/experiment/dataset")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["files"] == [] and report["omitted"] == []
    assert report["totals"]["files"] == 0 and report["totals"]["omitted"] == 0


def test_summary_counts_omissions_by_reason_and_lists_the_first(
    server: StageboxServer, token: str, tmp_path: Path
):
    src = make_tree(
        tmp_path / "src",
        {"stray.txt": b"s", "ds/a.txt": b"a", **{f"ds/{n}.tmp": b"t" for n in range(12)}},
    )
    proc = subprocess.run(
        stagebox_cmd(
            "upload", str(src), "--server", server.url, "--token", token, "--exclude", "*.tmp"
        ),
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "omitted: 1 above the dataset level, 12 excluded" in proc.stdout
    assert f"{src}/ds/0.tmp" in proc.stdout
    assert "... and 2 more" in proc.stdout
    assert f"{src}/stray.txt" in proc.stdout
