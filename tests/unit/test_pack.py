"""``stagebox pack``: declarations, deterministic packages, extends, bad input."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import bagit
import pytest
import yaml

from stagebox.errors import InvalidInput
from stagebox.packages.declaration import Declaration, parse_size
from stagebox.packages.pack import pack
from stagebox.packages.yamlfile import Variables
from tests.servers import stagebox_cmd

DECLARATION = """\
pipeline: svWGS
actions:
  find:
    order: 1
package:
  align:
    uploadType: svAlign
    files:
      coverage:
        type: binary
        file: $DATA_FILE_PREFIX.coverage.bin
  find:
    uploadType: svWGS
    extends: align
    extraPushFiles:
      - ${DATA_FILE_PREFIX}.find.log
    files:
      calls:
        type: tab-delimited
        file: $DATA_FILE_PREFIX.calls.txt
        maxSize: 1K
        description: structural variant calls
      plot:
        type: png
        file: ${PLOTS}/summary.png
"""


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A finished job's outputs and its declaration; returns the declaration."""
    (tmp_path / "run1.coverage.bin").write_bytes(os.urandom(20_000))
    (tmp_path / "run1.calls.txt").write_text("chrom\tstart\tend\nchr1\t10\t20\n")
    (tmp_path / "run1.find.log").write_text("done\n")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "summary.png").write_bytes(b"\x89PNG" + os.urandom(300))
    declaration = tmp_path / "pipeline.yml"
    declaration.write_text(DECLARATION)
    return declaration


def build(declaration: Path, action: str, fmt: str = "zip", **given: str):  # type: ignore[no-untyped-def]
    prefix = str(declaration.parent / "run1")
    variables = Variables({"PLOTS": str(declaration.parent / "plots"), **given}, env={})
    lines: list[str] = []
    result = pack(
        Declaration.read(declaration),
        action,
        prefix,
        variables=variables,
        options={"genome": "hg38"},
        fmt=fmt,
        report=lines.append,
    )
    return result, lines


def manifest(path: Path) -> dict:  # type: ignore[type-arg]
    with zipfile.ZipFile(path) as z:
        return yaml.safe_load(z.read("package.yml"))  # type: ignore[no-any-return]


def test_two_builds_of_the_same_inputs_are_byte_identical(job: Path) -> None:
    first, _ = build(job, "align")
    data = first.path.read_bytes()
    inode = first.path.stat().st_ino
    # A different mtime on the input must not change a byte either.
    os.utime(job.parent / "run1.coverage.bin", (1, 1))
    second, _ = build(job, "align")
    assert second.path.read_bytes() == data
    assert second.sha256 == first.sha256
    assert first.changed and not second.changed
    assert second.path.stat().st_ino == inode  # left untouched
    with zipfile.ZipFile(second.path) as z:
        infos = z.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_a_changed_input_changes_the_package(job: Path) -> None:
    first, _ = build(job, "align")
    (job.parent / "run1.coverage.bin").write_bytes(os.urandom(20_000))
    second, _ = build(job, "align")
    assert second.changed and second.sha256 != first.sha256


def test_package_yml_lists_files_by_type_with_name_size_and_sha256(job: Path) -> None:
    build(job, "align")
    result, problems = build(job, "find")
    assert problems == []
    assert result.path.name == "run1.svWGS.find.mdi.package.zip"
    doc = manifest(result.path)
    assert (doc["uploadType"], doc["pipeline"], doc["action"]) == ("svWGS", "svWGS", "find")
    assert doc["options"] == {"genome": "hg38"}
    calls = doc["files"]["calls"]
    assert calls["name"] == "run1.calls.txt"
    assert calls["type"] == "tab-delimited"
    assert calls["description"] == "structural variant calls"  # extra keys kept
    assert calls["size"] == (job.parent / "run1.calls.txt").stat().st_size
    with zipfile.ZipFile(result.path) as z:
        names = sorted(z.namelist())
        assert names == ["package.yml", "run1.calls.txt", "run1.coverage.bin", "summary.png"]
        import hashlib

        for entry in doc["files"].values():
            assert hashlib.sha256(z.read(entry["name"])).hexdigest() == entry["sha256"]
    [extra] = doc["extraPushFiles"]
    assert extra["name"] == "run1.find.log" and extra["path"] == str(job.parent / "run1.find.log")


def test_extends_inherits_file_types_and_the_current_action_wins(job: Path) -> None:
    build(job, "align")
    text = DECLARATION.replace(
        "      plot:\n",
        "      coverage:\n        type: text\n"
        "        file: $DATA_FILE_PREFIX.calls.txt\n      plot:\n",
    )
    job.write_text(text)
    result, _ = build(job, "find")
    doc = manifest(result.path)
    assert doc["extends"] == "align"
    assert doc["files"]["coverage"]["name"] == "run1.calls.txt"  # find's own declaration
    assert doc["files"]["coverage"]["type"] == "text"

    job.write_text(DECLARATION)
    result, _ = build(job, "find")
    coverage = manifest(result.path)["files"]["coverage"]
    assert coverage["name"] == "run1.coverage.bin"  # inherited from align's package
    with zipfile.ZipFile(result.path) as z:
        assert z.read("run1.coverage.bin") == (job.parent / "run1.coverage.bin").read_bytes()


def test_extends_needs_the_earlier_package(job: Path) -> None:
    with pytest.raises(
        InvalidInput, match=r"package\.find\.extends.*pack it first.*--action align"
    ):
        build(job, "find")


def test_missing_and_oversized_files_are_null_and_reported(job: Path) -> None:
    build(job, "align")
    (job.parent / "run1.calls.txt").write_bytes(b"x" * 1025)  # maxSize 1K
    (job.parent / "plots" / "summary.png").unlink()
    result, problems = build(job, "find")
    files = manifest(result.path)["files"]
    assert files["calls"] is None and files["plot"] is None
    assert files["coverage"] is not None
    assert any("too large: calls" in p and "1025 bytes, over maxSize 1024" in p for p in problems)
    assert any("missing: plot" in p and "summary.png" in p for p in problems)


def test_an_undefined_variable_is_named(job: Path) -> None:
    build(job, "align")
    declaration = Declaration.read(job)
    with pytest.raises(InvalidInput) as caught:
        pack(declaration, "find", str(job.parent / "run1"), variables=Variables({}, env={}))
    message = str(caught.value)
    assert "$PLOTS" in message and "--var PLOTS=VALUE" in message
    assert f"{job}:25: package.find.files.plot.file" in message


def test_variables_come_from_var_then_the_environment(job: Path) -> None:
    variables = Variables({"A": "given"}, env={"A": "env", "B": "env-b"})
    assert variables.expand("$A/${B}/$$", job, 1, "k") == "given/env-b/$"


@pytest.mark.parametrize(
    ("text", "where", "rule"),
    [
        ("pipeline: p\n", ":1: package", "is required"),
        (
            "pipeline: p\npackage:\n  a:\n    uploadTyp: x\n",
            ":4: package.a.uploadTyp",
            "did you mean uploadType",
        ),
        (
            "pipeline: p\npackage:\n  a:\n    uploadType: x\n"
            "    files:\n      t:\n        type: x\n",
            ":7: package.a.files.t.file",
            "is required",
        ),
        (
            "pipeline: p\npackage:\n  a:\n    uploadType: x\n    files: [1]\n",
            ":5: package.a.files",
            "must be a mapping",
        ),
        (
            "pipeline: p\npackage:\n  a:\n    uploadType: x\n    extends: b\n",
            ":5: package.a.extends",
            "names no action",
        ),
        (
            "pipeline: p\npackage:\n  a:\n    uploadType: x\n    extends: a\n",
            ":5: package.a.extends",
            "in a circle",
        ),
        (
            "pipeline: p\npackage:\n  a:\n    uploadType: x\n    extraPushFiles: log\n",
            ":5: package.a.extraPushFiles",
            "must be a list",
        ),
        ("pipeline: ../p\npackage: {}\n", ":1: pipeline", "must not contain '/'"),
        ("pipeline: p\npipeline: q\n", ":2", "given twice (first on line 1)"),
        ("pipeline: p\npackage:\n  a: [\n", ":4", "not valid YAML"),
        (
            "pipeline: p\npackage:\n  a:\n    uploadType: x\n    files:\n"
            "      t:\n        type: x\n        file: f\n        sha256: abc\n",
            ":9: package.a.files.t.sha256",
            "written by stagebox pack",
        ),
    ],
)
def test_a_malformed_declaration_names_the_key_and_line(
    tmp_path: Path, text: str, where: str, rule: str
) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as caught:
        Declaration.read(path)
    message = str(caught.value)
    assert f"{path}{where}" in message and rule in message, message


@pytest.mark.parametrize(
    ("file", "rule"),
    [
        ("/tmp/x/..", "must not be '..'"),
        ("out/\x07bell.txt", "control characters"),
        ("dir/", "names a directory"),
    ],
)
def test_unsafe_file_names_are_refused(tmp_path: Path, file: str, rule: str) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "pipeline": "p",
                "package": {"a": {"uploadType": "x", "files": {"t": {"type": "x", "file": file}}}},
            }
        )
    )
    with pytest.raises(InvalidInput, match=rule):
        Declaration.read(path).resolve("a", Variables({}, env={}))


def test_extends_refuses_an_earlier_package_whose_entries_escape(job: Path) -> None:
    earlier = job.parent / "run1.svWGS.align.mdi.package.zip"
    with zipfile.ZipFile(earlier, "w") as z:
        z.writestr("package.yml", "files: {coverage: {name: x, size: 1, sha256: a}}\n")
        z.writestr("../../evil.txt", "x")
    with pytest.raises(InvalidInput, match=r"entry '\.\./\.\./evil\.txt'.*escapes its directory"):
        build(job, "find")
    assert not (job.parent.parent / "evil.txt").exists()
    assert not (job.parent / "run1.svWGS.find.mdi.package.zip").exists()


def test_extends_refuses_an_earlier_package_whose_bytes_do_not_match(job: Path) -> None:
    first, _ = build(job, "align")
    doc = manifest(first.path)
    doc["files"]["coverage"]["sha256"] = "0" * 64
    with zipfile.ZipFile(first.path) as z:
        data = z.read("run1.coverage.bin")
    with zipfile.ZipFile(first.path, "w") as z:
        z.writestr("package.yml", yaml.safe_dump(doc))
        z.writestr("run1.coverage.bin", data)
    with pytest.raises(InvalidInput, match="sha256"):
        build(job, "find")


def test_bag_format_is_a_valid_bag_with_package_yml_as_a_tag_file(
    job: Path, tmp_path: Path
) -> None:
    build(job, "align")
    result, _ = build(job, "find", fmt="bag")
    again, _ = build(job, "find", fmt="bag")
    assert not again.changed and again.sha256 == result.sha256
    out = tmp_path / "unpacked"
    with zipfile.ZipFile(result.path) as z:
        z.extractall(out)
    bag = bagit.Bag(str(out / "run1.svWGS.find.mdi.package"))
    bag.validate()
    assert (
        "package.yml"
        in (out / "run1.svWGS.find.mdi.package" / "tagmanifest-sha256.txt").read_text()
    )
    assert sorted(bag.payload_entries()) == [
        "data/run1.calls.txt",
        "data/run1.coverage.bin",
        "data/summary.png",
    ]
    checked = subprocess.run(
        stagebox_cmd("bag", "validate", str(result.path)), capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


def test_parse_size() -> None:
    assert parse_size(1024) == 1024
    assert parse_size("1K") == 1024
    assert parse_size("10MiB") == 10 << 20
    assert parse_size("10MB") == 10_000_000
    assert parse_size("1.5G") == 3 << 29
    with pytest.raises(ValueError):
        parse_size("ten")


def test_cli_prints_the_path_alone_and_reports_on_stderr(job: Path) -> None:
    env = {**os.environ, "DATA_FILE_PREFIX": str(job.parent / "run1"), "PLOTS": str(job.parent)}
    proc = subprocess.run(
        stagebox_cmd("pack", str(job), "--action", "align", "--option", "genome=hg38"),
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{job.parent / 'run1.svWGS.align.mdi.package.zip'}\n"
    assert "1 of 1 file types" in proc.stderr
    bad = subprocess.run(
        stagebox_cmd("pack", str(job), "--action", "nope"), capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2
    assert "package.nope: no such action (declared: align, find)" in bad.stderr
