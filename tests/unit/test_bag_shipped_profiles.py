"""APTrust 2.3 and BTR 1.0, rule by rule: a bag that breaks one rule alone is refused
with that rule named; a bag that keeps them all is accepted, under APTrust's and
BTR's own profile files as they are published and under the shipped names."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from stagebox.ingest.bagit import Report, validate_path
from stagebox.ingest.profiles import Profile, choose
from tests.bags import (
    aptrust_bag,
    btr_bag,
    make_bag_dir,
    retag,
    set_tag,
    set_version,
    to_tar,
    to_zip,
)

# APTrust's and BTR's published profile files, copied here as they are (see its README).
PROFILES = Path(__file__).resolve().parents[1] / "profiles"
APTRUST_FILE = PROFILES / "aptrust-v2.3.json"
BTR_FILE = PROFILES / "btr-v1.0.json"


def errors(report: Report) -> list[str]:
    return [str(p) for p in report.errors]


@pytest.fixture(params=["shipped", "file"])
def aptrust(request) -> Profile:
    return Profile.load("aptrust" if request.param == "shipped" else str(APTRUST_FILE))


@pytest.fixture(params=["shipped", "file"])
def btr(request) -> Profile:
    return Profile.load("btr" if request.param == "shipped" else str(BTR_FILE))


@pytest.fixture(params=[True, False], ids=["end-blocks", "dart-style"])
def end_blocks(request) -> bool:
    return request.param


def test_the_shipped_profiles_are_the_published_files():
    aptrust, btr = Profile.load("aptrust"), Profile.load("btr")
    assert aptrust == Profile.load(str(APTRUST_FILE)).__class__(
        **{**Profile.load(str(APTRUST_FILE)).__dict__, "name": "aptrust"}
    )
    assert btr.identifier == Profile.load(str(BTR_FILE)).identifier
    assert aptrust.title == "APTrust" and aptrust.manifests_required == ("md5",)
    assert aptrust.tar_dir_must_match_name and aptrust.plain_names
    assert set(aptrust.tags["aptrust-info.txt"]) == {"Title", "Access", "Description",
                                                      "Storage-Option"}  # fmt: skip
    assert not btr.plain_names and btr.serialization == "optional"


# -- APTrust 2.3 ---------------------------------------------------------------


def test_a_bag_that_keeps_every_aptrust_rule_is_accepted(tmp_path, aptrust, end_blocks):
    tar = to_tar(aptrust_bag(tmp_path), end_blocks=end_blocks)

    report = validate_path(tar, aptrust)

    assert errors(report) == []


def _aptrust_tar(tmp_path: Path, **tags: str | None) -> Path:
    return to_tar(aptrust_bag(tmp_path, **tags))


APTRUST_TAG_RULES = [
    ({"Title": None}, "aptrust-info.txt: required tag Title is missing"),
    ({"Title": ""}, "aptrust-info.txt: required tag Title is empty"),
    ({"Access": None}, "aptrust-info.txt: required tag Access is missing"),
    (
        {"Access": "acksess"},
        "aptrust-info.txt: tag Access has value 'acksess', which is not allowed "
        "(profile {name}); allowed: 'Consortia', 'Institution', 'Restricted'",
    ),
    ({"Storage-Option": None}, "aptrust-info.txt: required tag Storage-Option is missing"),
    (
        {"Storage-Option": "Tape"},
        "aptrust-info.txt: tag Storage-Option has value 'Tape', which is not allowed",
    ),
]


@pytest.mark.parametrize("tags, expected", APTRUST_TAG_RULES)
def test_each_aptrust_info_rule_alone(tmp_path, aptrust, end_blocks, tags, expected):
    tar = to_tar(aptrust_bag(tmp_path, **tags), end_blocks=end_blocks)

    found = errors(validate_path(tar, aptrust))

    assert len(found) == 1, found
    assert found[0].startswith(expected.format(name=aptrust.name)), found


def test_aptrust_info_txt_missing(tmp_path, aptrust, end_blocks):
    bag = aptrust_bag(tmp_path)
    (bag / "aptrust-info.txt").unlink()
    retag(bag)

    assert errors(validate_path(to_tar(bag, end_blocks=end_blocks), aptrust)) == [
        f"aptrust-info.txt: missing: a tag file required (profile {aptrust.name}) "
        "for Title, Access, Storage-Option"
    ]


def _sha256_only(bag: Path) -> None:
    (bag / "manifest-md5.txt").unlink()
    (bag / "tagmanifest-md5.txt").unlink()
    retag(bag)


def _sha384_manifest(bag: Path) -> None:
    lines = (bag / "manifest-sha256.txt").read_text().splitlines()
    import hashlib

    out = []
    for line in lines:
        path = line.split(None, 1)[1]
        out.append(f"{hashlib.sha384((bag / path).read_bytes()).hexdigest()}  {path}\n")
    (bag / "manifest-sha384.txt").write_text("".join(out))
    retag(bag)


def _fetch_txt(bag: Path) -> None:
    (bag / "fetch.txt").write_text("https://example.org/a.txt 6 data/a.txt\n")
    retag(bag)


def _encoding(bag: Path) -> None:
    (bag / "bagit.txt").write_text("BagIt-Version: 0.97\nTag-File-Character-Encoding: utf-8\n")
    retag(bag)


def _control_character(bag: Path) -> None:
    name = "data/bell\x07.txt"
    _add_payload(bag, name)


def _escaped_control(bag: Path) -> None:
    _add_payload(bag, "data/bell\\u0007.txt")


def _no_break_space(bag: Path) -> None:
    _add_payload(bag, "data/no\u00a0break.txt")


def _add_payload(bag: Path, name: str) -> None:
    import hashlib

    data = b"named badly\n"
    (bag / name).write_bytes(data)
    for alg in ("md5", "sha256"):
        with (bag / f"manifest-{alg}.txt").open("a") as f:
            f.write(f"{hashlib.new(alg, data).hexdigest()}  {name}\n")
    set_tag(bag, "bag-info.txt", "Payload-Oxum", None)


APTRUST_BAG_RULES: list[tuple[str, Callable[[Path], None], str]] = [
    ("md5 required", _sha256_only, "manifest-md5.txt: missing: required"),
    ("allowed manifests", _sha384_manifest, "manifest-sha384.txt: sha384 is not allowed"),
    ("no fetch.txt", _fetch_txt, "fetch.txt: fetch.txt is not allowed by the profile"),
    ("BagIt version", lambda bag: set_version(bag, "0.96"), "bagit.txt: BagIt version 0.96"),
    (
        "UTF-8",
        _encoding,
        "bagit.txt: tag Tag-File-Character-Encoding has value 'utf-8', which is not allowed",
    ),
    ("control character", _control_character, "data/bell\\x07.txt: the name holds a control"),
    ("escaped control", _escaped_control, "data/bell\\u0007.txt: the name holds an escaped"),
    ("no-break space", _no_break_space, "data/no\\xa0break.txt: the name holds a control"),
]


@pytest.mark.parametrize(
    "spoil, expected", [r[1:] for r in APTRUST_BAG_RULES], ids=[r[0] for r in APTRUST_BAG_RULES]
)
def test_each_aptrust_bag_rule_alone(tmp_path, aptrust, end_blocks, spoil, expected):
    bag = aptrust_bag(tmp_path)
    spoil(bag)

    found = [e for e in errors(validate_path(to_tar(bag, end_blocks=end_blocks), aptrust))
             if "sha384" not in e or "not allowed" in e]  # fmt: skip

    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_aptrust_wants_a_plain_tar_named_like_its_directory(tmp_path, aptrust):
    bag = aptrust_bag(tmp_path)

    assert errors(validate_path(bag, aptrust)) == [
        f"the bag must be serialized (application/tar), not a directory (profile {aptrust.name})"
    ]
    assert errors(validate_path(to_zip(bag), aptrust))[0].startswith("serialization zip")
    assert errors(validate_path(to_tar(bag, compression="gz"), aptrust))[0].startswith(
        "serialization tar.gz"
    )
    renamed = to_tar(bag, tmp_path / "other.tar")
    assert errors(validate_path(renamed, aptrust)) == [
        "the top-level directory bag1 is not named like the archive (other) "
        f"(profile {aptrust.name})"
    ]


def test_rfc_8493_alone_allows_what_aptrust_refuses(tmp_path):
    bag = aptrust_bag(tmp_path)
    _control_character(bag)
    (bag / "aptrust-info.txt").unlink()
    retag(bag)

    assert validate_path(to_tar(bag, tmp_path / "other.tar"), choose("none")).valid


def test_a_bag_with_bad_checksums_and_bad_aptrust_info_lists_both(tmp_path, aptrust):
    bag = aptrust_bag(tmp_path, Access="acksess")
    (bag / "data/a.txt").write_bytes(b"ALPHA\n")

    found = errors(validate_path(to_tar(bag), aptrust))

    assert any(e.startswith("data/a.txt: md5 digest mismatch") for e in found), found
    assert any(e.startswith("aptrust-info.txt: tag Access") for e in found), found


# -- BTR 1.0 -------------------------------------------------------------------


@pytest.mark.parametrize("form", ["directory", "tar", "dart-tar", "tar.gz", "zip"])
def test_a_bag_that_keeps_every_btr_rule_is_accepted(tmp_path, btr, form):
    bag = btr_bag(tmp_path)
    path = {
        "directory": lambda: bag,
        "tar": lambda: to_tar(bag),
        "dart-tar": lambda: to_tar(bag, end_blocks=False),
        "tar.gz": lambda: to_tar(bag, compression="gz"),
        "zip": lambda: to_zip(bag),
    }[form]()

    assert errors(validate_path(path, btr)) == []


@pytest.mark.parametrize(
    "label", ["Source-Organization", "Bagging-Date", "Payload-Oxum", "BagIt-Profile-Identifier"]
)
def test_each_required_btr_tag_alone(tmp_path, btr, end_blocks, label):
    missing = to_tar(btr_bag(tmp_path / "missing", **{label: None}), end_blocks=end_blocks)
    empty = to_tar(btr_bag(tmp_path / "empty", **{label: ""}), end_blocks=end_blocks)

    assert errors(validate_path(missing, btr)) == [
        f"bag-info.txt: required tag {label} is missing (profile {btr.name})"
    ]
    found = errors(validate_path(empty, btr))
    assert f"bag-info.txt: required tag {label} is empty (profile {btr.name})" in found, found


def test_btr_refuses_fetch_and_unlisted_manifests_and_serializations(tmp_path, btr):
    bag = btr_bag(tmp_path)
    _fetch_txt(bag)
    assert errors(validate_path(bag, btr)) == [
        "fetch.txt: fetch.txt is not allowed by the profile " + btr.name
    ]
    (bag / "fetch.txt").unlink()
    retag(bag)
    found = errors(validate_path(to_tar(bag, compression="bz2"), btr))
    assert found[0].startswith("serialization tar.bz2"), found


def test_btr_version_rule(tmp_path, btr):
    bag = btr_bag(tmp_path)
    set_version(bag, "0.96")

    found = errors(validate_path(bag, btr))

    assert found[0].startswith("bagit.txt: BagIt version 0.96 is not accepted"), found


# -- --profile auto ------------------------------------------------------------


def test_auto_judges_each_bag_by_the_profile_it_declares(tmp_path):
    auto = choose("auto")
    btr = btr_bag(tmp_path / "b")
    good_aptrust = aptrust_bag(tmp_path / "a")
    set_tag(
        good_aptrust,
        "bag-info.txt",
        "BagIt-Profile-Identifier",
        "https://raw.githubusercontent.com/APTrust/preservation-services/master/profiles/"
        "aptrust-v2.3.json",
    )

    assert errors(validate_path(btr, auto)) == []
    assert errors(validate_path(to_tar(good_aptrust), auto)) == []
    # the APTrust rules apply: a directory is refused
    assert errors(validate_path(good_aptrust, auto))[0].startswith("the bag must be serialized")


def test_auto_errs_when_the_bag_names_no_profile_it_knows(tmp_path):
    auto = choose("auto")
    silent = make_bag_dir(tmp_path / "s")
    other = make_bag_dir(tmp_path / "o")
    set_tag(other, "bag-info.txt", "BagIt-Profile-Identifier", "https://example.org/mine")

    assert errors(validate_path(silent, auto)) == [
        "bag-info.txt: --profile auto: the bag declares no BagIt-Profile-Identifier; "
        "name its profile with --profile (aptrust, btr or a file)"
    ]
    assert errors(validate_path(other, auto)) == [
        "bag-info.txt: --profile auto: BagIt-Profile-Identifier https://example.org/mine "
        "names no profile stagebox ships (aptrust, btr); name its profile with --profile"
    ]


def test_the_published_files_are_read_as_they_are(tmp_path):
    for name in ("aptrust-v2.2.json", "aptrust-v2.3.json", "btr-v1.0.json",
                 "btr-bagit-profile.json"):  # fmt: skip
        copy = tmp_path / name
        shutil.copy(PROFILES / name, copy)
        assert Profile.load(str(copy)).identifier
