import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stagebox.client.scan import Omission, ScanRules, scan
from stagebox.errors import InvalidInput
from tests.privileges import without_dac_override

MYDATA = Path("/work/shared/mydata-testdata")


def tree(root: Path, *paths: str) -> Path:
    for rel in paths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    return root


def names(files):
    return [(f.owner, f.experiment, f.dataset, f.directory, f.filename) for f in files]


def run_scan(src: Path, rules: ScanRules, **kwargs):
    """The files a scan selects, and what it reported as omitted: (path under SRC, reason)."""
    omitted: list[Omission] = []
    files = list(scan(src, rules, omitted=omitted.append, **kwargs))
    return files, [(str(o.path.relative_to(src)), o.reason) for o in omitted], omitted


@pytest.mark.parametrize(
    ("structure", "path", "expected"),
    [
        ("dataset", "ds/sub/f", (None, None, "ds", "sub", "f")),
        ("experiment/dataset", "exp/ds/f", (None, "exp", "ds", "", "f")),
        ("username/dataset", "bob/ds/a/b/f", ("bob", None, "ds", "a/b", "f")),
        ("username/experiment/dataset", "bob/exp/ds/f", ("bob", "exp", "ds", "", "f")),
    ],
)
def test_structures_map_folders_to_names(tmp_path, structure, path, expected):
    src = tree(tmp_path, path, "loose-file-above-datasets")
    files, omitted, _ = run_scan(src, ScanRules(structure=structure))
    assert names(files) == [expected]
    assert omitted == [("loose-file-above-datasets", "above the dataset level")]


def test_files_above_the_dataset_level_are_reported_at_every_level(tmp_path):
    src = tree(tmp_path, "top.txt", "alice/notes.txt", "alice/exp/readme", "alice/exp/ds/f")
    files, omitted, _ = run_scan(src, ScanRules(structure="username/experiment/dataset"))
    assert [f.filename for f in files] == ["f"]
    assert omitted == [
        ("alice/exp/readme", "above the dataset level"),
        ("alice/notes.txt", "above the dataset level"),
        ("top.txt", "above the dataset level"),
    ]


def test_dataset_option_makes_src_the_dataset(tmp_path):
    src = tree(tmp_path, "top.txt", "raw/x.bin")
    found = names(scan(src, ScanRules(dataset="run-42")))
    assert found == [(None, None, "run-42", "raw", "x.bin"), (None, None, "run-42", "", "top.txt")]


def test_symlinks_are_skipped_and_reported_by_default(tmp_path):
    src = tree(tmp_path / "src", "ds/real")
    outside = tree(tmp_path / "outside", "secret")
    os.symlink(outside / "secret", src / "ds" / "link")
    os.symlink(outside, src / "ds" / "linkdir")
    os.symlink("real", src / "ds" / "inside")
    files, omitted, entries = run_scan(src, ScanRules())
    assert [f.filename for f in files] == ["real"]
    assert omitted == [("ds/inside", "symlink"), ("ds/link", "symlink"), ("ds/linkdir", "symlink")]
    assert entries[0].detail == "-> real"


def test_follow_sends_targets_inside_src_under_the_links_names(tmp_path):
    # given a link to a file and a link to a folder, both inside SRC
    src = tree(tmp_path / "src", "ds/raw/a.bin", "shared/calib/c.dat")
    os.symlink("raw/a.bin", src / "ds" / "latest.bin")
    os.symlink("../shared/calib", src / "ds" / "calib")
    # when it is scanned with --symlinks follow
    files, omitted, _ = run_scan(src, ScanRules(symlinks="follow"))
    # then each target is read from its real path, named after the link's place
    by_name = {(f.dataset, f.directory, f.filename): f.path for f in files}
    real = src.resolve()
    assert by_name == {
        ("ds", "calib", "c.dat"): real / "shared/calib/c.dat",
        ("ds", "", "latest.bin"): real / "ds/raw/a.bin",
        ("ds", "raw", "a.bin"): src / "ds/raw/a.bin",
        ("shared", "calib", "c.dat"): src / "shared/calib/c.dat",
    }
    assert all(not p.is_symlink() for p in by_name.values())
    assert omitted == []


def test_follow_refuses_a_link_that_leaves_src(tmp_path):
    src = tree(tmp_path / "src", "ds/real")
    outside = tree(tmp_path / "outside", "secret")
    os.symlink(outside / "secret", src / "ds" / "link")
    os.symlink("../..", src / "ds" / "up")  # SRC's parent: outside too
    files, omitted, entries = run_scan(src, ScanRules(symlinks="follow"))
    assert [f.filename for f in files] == ["real"]
    assert omitted == [("ds/link", "symlink leaves SRC"), ("ds/up", "symlink leaves SRC")]
    assert entries[0].detail == f"-> {(outside / 'secret').resolve()}"


def test_follow_reports_a_link_loop_once_and_walks_on(tmp_path):
    # given a folder link back up to its dataset, and a link that points at itself
    src = tree(tmp_path / "src", "ds/sub/f")
    os.symlink("..", src / "ds" / "sub" / "again")
    os.symlink("self", src / "ds" / "self")
    files, omitted, entries = run_scan(src, ScanRules(symlinks="follow"))
    assert [(f.directory, f.filename) for f in files] == [("sub", "f")]
    assert omitted == [("ds/self", "unreadable"), ("ds/sub/again", "directory loop")]
    assert "Too many levels of symbolic links" in (entries[0].detail or "")


def test_follow_reports_a_broken_link_as_unreadable(tmp_path):
    src = tree(tmp_path / "src", "ds/f")
    os.symlink("gone", src / "ds" / "dangling")
    _, omitted, entries = run_scan(src, ScanRules(symlinks="follow"))
    assert omitted == [("ds/dangling", "unreadable")]
    assert entries[0].detail == "-> gone: No such file or directory"


def test_fifos_and_sockets_are_special_files(tmp_path):
    src = tree(tmp_path / "src", "ds/f")
    os.mkfifo(src / "ds" / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "ds" / "sock"))
        files, omitted, entries = run_scan(src, ScanRules())
    finally:
        sock.close()
    assert [f.filename for f in files] == ["f"]
    assert omitted == [("ds/pipe", "special file"), ("ds/sock", "special file")]
    assert [e.detail for e in entries] == ["fifo", "socket"]


def test_excluded_files_are_reported_with_the_rule(tmp_path):
    src = tree(tmp_path, "ds/a.tif", "ds/notes.txt", "ds/tmp/b.tif")
    rules = ScanRules(include=["*.tif"], exclude=["tmp/*"])
    files, omitted, entries = run_scan(src, rules)
    assert [f.filename for f in files] == ["a.tif"]
    assert omitted == [("ds/notes.txt", "excluded"), ("ds/tmp/b.tif", "excluded")]
    assert [e.detail for e in entries] == ["matches no --include", "matches --exclude tmp/*"]


def test_min_age_skips_and_reports_files_still_being_written(tmp_path):
    src = tree(tmp_path, "ds/old", "ds/new")
    past = time.time() - 600
    os.utime(src / "ds/old", (past, past))
    files, omitted, _ = run_scan(src, ScanRules(min_age_minutes=5))
    assert [f.filename for f in files] == ["old"]
    assert omitted == [("ds/new", "newer than --min-age")]


def test_counts_per_reason_are_kept_on_the_scan(tmp_path):
    src = tree(tmp_path, "stray", "ds/a", "ds/b.tmp", "ds/c.tmp")
    files = scan(src, ScanRules(exclude=["*.tmp"]))
    assert [f.filename for f in files] == ["a"]
    assert files.selected == 1
    assert files.omitted == 3
    assert {r: n for r, n in files.omitted_by_reason.items() if n} == {
        "above the dataset level": 1,
        "excluded": 2,
    }
    assert files.unreadable == 0


def test_scan_is_lazy_and_streams_omissions_as_it_meets_them(tmp_path):
    src = tree(tmp_path, "a/x.tmp", "b/y", "c/z.tmp")
    seen: list[Omission] = []
    files = scan(src, ScanRules(exclude=["*.tmp"]), omitted=seen.append)
    assert seen == []
    assert next(files).filename == "y"
    assert [o.path.name for o in seen] == ["x.tmp"]
    assert list(files) == []
    assert [o.path.name for o in seen] == ["x.tmp", "z.tmp"]


UNPRIVILEGED_SCAN = """
import json, sys
from pathlib import Path
from stagebox.client.scan import ScanRules, scan
seen = []
files = scan(Path(sys.argv[1]), ScanRules(), omitted=lambda o: seen.append(o.to_json()))
print(json.dumps({"files": [f.filename for f in files], "omitted": seen,
                  "unreadable": files.unreadable}))
"""


def test_unreadable_folder_and_file_are_reported_not_skipped(tmp_path):
    # given a dataset with a folder and a file its reader may not open
    src = tree(tmp_path / "src", "ds/a", "ds/locked/b", "ds/secret", "ds2/c")
    os.chmod(src / "ds" / "locked", 0)
    os.chmod(src / "ds" / "secret", 0)
    try:
        # when a process without root's override scans it
        proc = subprocess.run(
            without_dac_override([sys.executable, "-c", UNPRIVILEGED_SCAN, str(src)]),
            capture_output=True,
            text=True,
        )
    finally:
        os.chmod(src / "ds" / "locked", 0o755)
    # then both are reported, with the OS's words, and the rest is scanned
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["files"] == ["a", "c"]
    assert result["omitted"] == [
        {"path": str(src / "ds/locked"), "reason": "unreadable", "detail": "Permission denied"},
        {"path": str(src / "ds/secret"), "reason": "unreadable", "detail": "Permission denied"},
    ]
    assert result["unreadable"] == 2


def test_structure_deeper_than_the_tree_names_the_levels_and_the_deepest_path(tmp_path):
    src = tree(tmp_path, "alice/a.tif", "alice/b.tif", "bob.txt")
    files = scan(src, ScanRules(structure="username/experiment/dataset"))
    assert list(files) == []
    with pytest.raises(InvalidInput) as caught:
        files.check_structure()
    assert str(caught.value) == (
        "structure: username/experiment/dataset expects files inside"
        " username/experiment/dataset/ folders, but the deepest path is 2 levels: alice/a.tif"
    )


def test_files_only_at_the_first_level_are_named(tmp_path):
    src = tree(tmp_path, *(f"{n}.tif" for n in "abcdefg"))
    files = scan(src, ScanRules())
    assert list(files) == []
    with pytest.raises(
        InvalidInput,
        match=r"dataset/ folders, but found only files at the first "
        r"level: a.tif, b.tif, c.tif, d.tif, e.tif and 2 more \(--dataset NAME",
    ):
        files.check_structure()


@pytest.mark.parametrize(
    ("paths", "rules"),
    [
        ((), ScanRules(structure="username/experiment/dataset")),  # an empty tree
        (("stray", "ds/f"), ScanRules()),  # a dataset was found
        (("stray", "ds/f.tmp"), ScanRules(exclude=["*.tmp"])),  # found, but excluded
    ],
)
def test_a_tree_with_a_dataset_or_with_nothing_passes_the_structure_check(tmp_path, paths, rules):
    files = scan(tree(tmp_path / "src", *paths) if paths else tmp_path, rules)
    list(files)
    files.check_structure()


MYDATA_TREES = [
    ("testdata-dataset", "dataset"),
    ("testdata-exp-dataset", "experiment/dataset"),
    ("testdata-username-dataset", "username/dataset"),
    ("testdata-email-dataset", "username/dataset"),
    ("testdata-group-dataset", "username/dataset"),
    ("testdata-user-exp-dataset", "username/experiment/dataset"),
    ("testdata-email-exp-dataset", "username/experiment/dataset"),
    ("testdata-group-exp-dataset", "username/experiment/dataset"),
]


@pytest.mark.skipif(not MYDATA.is_dir(), reason="MyData's test trees are not here")
@pytest.mark.parametrize(("name", "structure"), MYDATA_TREES)
def test_mydata_trees_are_scanned_whole_by_their_structure(name, structure):
    src = MYDATA / name
    files, omitted, _ = run_scan(src, ScanRules(structure=structure))
    on_disk = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert sorted(f.display for f in files) == on_disk
    assert omitted == []


@pytest.mark.skipif(not MYDATA.is_dir(), reason="MyData's test trees are not here")
def test_mydata_files_beside_the_mytardis_folder_are_reported():
    src = MYDATA / "testdata-user-mytardis-exp-dataset"
    files, omitted, _ = run_scan(src, ScanRules(structure="username/experiment/dataset"))
    assert {(f.owner, f.experiment) for f in files} == {
        ("testuser1", "MyTardis"),
        ("testuser2", "MyTardis"),
    }
    assert omitted == [
        (f"testuser{n}/not-to-be-uploaded.txt", "above the dataset level") for n in (1, 2, 3)
    ]


@pytest.mark.skipif(not MYDATA.is_dir(), reason="MyData's test trees are not here")
@pytest.mark.parametrize("symlinks", ["skip", "follow"])
def test_mydata_symlinks_tree(tmp_path, symlinks):
    # given MyData's symlink tree, with the link its test makes: TestB/symlink.txt
    src = tmp_path / "testdata-symlinks"
    shutil.copytree(MYDATA / "testdata-symlinks", src)
    os.symlink("../TestA/test.txt", src / "TestB" / "symlink.txt")
    files, omitted, _ = run_scan(src, ScanRules(symlinks=symlinks))
    found = {f.display: f.path for f in files}
    if symlinks == "skip":
        assert sorted(found) == ["TestA/test.txt", "TestB/empty.txt"]
        assert omitted == [("TestB/symlink.txt", "symlink")]
    else:
        assert found["TestB/symlink.txt"] == (src / "TestA" / "test.txt").resolve()
        assert len(found) == 3 and omitted == []


def test_unknown_structure_is_a_usage_error(tmp_path):
    with pytest.raises(InvalidInput, match="structure"):
        ScanRules(structure="instrument/dataset")


def test_unknown_symlinks_choice_is_a_usage_error():
    with pytest.raises(InvalidInput, match="symlinks: must be one of skip, follow"):
        ScanRules(symlinks="copy")


def test_unsafe_local_name_is_flagged_not_sent(tmp_path):
    src = tree(tmp_path, "ds/ok", "ds/bad\x07name")
    files = {f.filename: f for f in scan(src, ScanRules())}
    assert files["ok"].error is None
    assert "control character" in (files["bad\x07name"].error or "")


def test_source_must_be_a_directory(tmp_path):
    with pytest.raises(InvalidInput, match="not a directory"):
        scan(tmp_path / "missing", ScanRules())
