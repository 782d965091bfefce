import os
import time
from pathlib import Path

import pytest

from stagebox.client.scan import ScanRules, scan
from stagebox.errors import InvalidInput


def tree(root: Path, *paths: str) -> Path:
    for rel in paths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    return root


def names(files):
    return [(f.owner, f.experiment, f.dataset, f.directory, f.filename) for f in files]


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
    assert names(scan(src, ScanRules(structure=structure))) == [expected]


def test_dataset_option_makes_src_the_dataset(tmp_path):
    src = tree(tmp_path, "top.txt", "raw/x.bin")
    found = names(scan(src, ScanRules(dataset="run-42")))
    assert found == [(None, None, "run-42", "raw", "x.bin"), (None, None, "run-42", "", "top.txt")]


def test_symlinks_are_not_followed(tmp_path):
    src = tree(tmp_path / "src", "ds/real")
    outside = tree(tmp_path / "outside", "secret")
    os.symlink(outside / "secret", src / "ds" / "link")
    os.symlink(outside, src / "ds" / "linkdir")
    assert [f.filename for f in scan(src, ScanRules())] == ["real"]


def test_min_age_skips_files_still_being_written(tmp_path):
    src = tree(tmp_path, "ds/old", "ds/new")
    past = time.time() - 600
    os.utime(src / "ds/old", (past, past))
    assert [f.filename for f in scan(src, ScanRules(min_age_minutes=5))] == ["old"]


def test_unsafe_local_name_is_flagged_not_sent(tmp_path):
    src = tree(tmp_path, "ds/ok", "ds/bad\x07name")
    files = {f.filename: f for f in scan(src, ScanRules())}
    assert files["ok"].error is None
    assert "control character" in (files["bad\x07name"].error or "")


def test_unknown_structure_is_a_usage_error(tmp_path):
    with pytest.raises(InvalidInput, match="structure"):
        ScanRules(structure="instrument/dataset")


def test_source_must_be_a_directory(tmp_path):
    with pytest.raises(InvalidInput, match="not a directory"):
        list(scan(tmp_path / "missing", ScanRules()))
