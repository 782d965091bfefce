"""BagIt profiles in BagIt-Profiles JSON: the reader, and what each rule refuses.

(APTrust's and BTR's own profiles, in DART's format, are in test_bag_shipped_profiles.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stagebox.errors import InvalidInput
from stagebox.ingest.bagit import Profile, Report, validate_path
from tests.bags import broken_bag, make_bag_dir, set_tag, set_version, to_tar, to_zip


def errors(report: Report) -> list[str]:
    return [str(p) for p in report.errors]


# A BagIt-Profiles profile like the one stagebox shipped before it shipped APTrust's own.
LAB = {
    "BagIt-Profile-Info": {"BagIt-Profile-Identifier": "urn:example:lab:1.0"},
    "Accept-BagIt-Version": ["0.97", "1.0"],
    "Serialization": "required",
    "Accept-Serialization": ["application/x-tar"],
    "Allow-Fetch.txt": False,
    "Manifests-Required": ["sha256"],
    "Manifests-Allowed": ["md5", "sha1", "sha256", "sha512"],
    "Tag-Manifests-Required": [],
    "Tag-Manifests-Allowed": ["md5", "sha1", "sha256", "sha512"],
    "Tag-Files-Required": ["bag-info.txt"],
    "Bag-Info": {
        "Source-Organization": {"required": True, "repeatable": False},
        "Bagging-Date": {"required": False},
        "Access": {
            "required": False,
            "repeatable": False,
            "values": ["Consortia", "Institution", "Restricted"],
        },
    },
}


@pytest.fixture
def aptrust() -> Profile:
    return Profile.from_dict(LAB, source="aptrust")


def write_profile(tmp_path: Path, profile: dict[str, object], name: str = "lab.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(profile))
    return path


def test_a_bagit_profiles_file_is_read_whole(aptrust):
    assert aptrust.manifests_required == ("sha256",)
    assert aptrust.accept_bagit_version == ("0.97", "1.0")
    assert aptrust.serialization == "required"
    assert aptrust.accept_serialization == ("application/x-tar",)
    assert not aptrust.allow_fetch
    assert aptrust.bag_info["Source-Organization"].required
    assert aptrust.identifier == "urn:example:lab:1.0"


def test_a_tarred_bagit_python_bag_meets_the_shipped_profile(tmp_path, aptrust):
    report = validate_path(to_tar(make_bag_dir(tmp_path)), aptrust)

    assert errors(report) == []


def test_a_missing_required_tag(tmp_path, aptrust):
    bag = make_bag_dir(tmp_path, info={"Contact-Name": "Ada"})

    report = validate_path(to_tar(bag), aptrust)

    assert errors(report) == [
        "bag-info.txt: required tag Source-Organization is missing (profile aptrust)"
    ]


def test_an_empty_required_tag(tmp_path, aptrust):
    bag = make_bag_dir(tmp_path, info={"Source-Organization": " "})

    assert errors(validate_path(to_tar(bag), aptrust)) == [
        "bag-info.txt: required tag Source-Organization is empty (profile aptrust)"
    ]


def test_a_tag_value_the_profile_does_not_allow(tmp_path, aptrust):
    bag = make_bag_dir(tmp_path, info={"Source-Organization": "Lab", "Access": "Everyone"})

    assert errors(validate_path(to_tar(bag), aptrust)) == [
        "bag-info.txt: tag Access has value 'Everyone', which is not allowed (profile aptrust); "
        "allowed: 'Consortia', 'Institution', 'Restricted'"
    ]


def test_a_tag_that_may_not_repeat(tmp_path, aptrust):
    bag = make_bag_dir(tmp_path)
    with (bag / "bag-info.txt").open("a") as f:
        f.write("Source-Organization: A second organisation\n")

    report = validate_path(to_tar(bag), aptrust, fast=True)

    assert errors(report) == [
        "bag-info.txt: tag Source-Organization appears 2 times, but is not repeatable "
        "(profile aptrust)"
    ]


def test_fetch_txt_is_refused_by_the_profile_even_when_everything_is_fetched(tmp_path, aptrust):
    bag = broken_bag(tmp_path, "fetch_present")

    assert validate_path(to_tar(bag)).valid
    assert errors(validate_path(to_tar(bag), aptrust)) == [
        "fetch.txt: fetch.txt is not allowed by the profile aptrust"
    ]


def test_a_required_manifest_algorithm(tmp_path, aptrust):
    bag = make_bag_dir(tmp_path, algorithms=("md5",))

    assert errors(validate_path(to_tar(bag), aptrust)) == [
        "manifest-sha256.txt: missing: required (profile aptrust)"
    ]


def test_an_unaccepted_bagit_version(tmp_path, aptrust):
    bag = make_bag_dir(tmp_path)
    set_version(bag, "0.96")

    assert errors(validate_path(to_tar(bag), aptrust)) == [
        "bagit.txt: BagIt version 0.96 is not accepted (profile aptrust); accepted: 0.97, 1.0"
    ]


def test_serialization_rules(tmp_path, aptrust):
    bag = make_bag_dir(tmp_path)

    assert errors(validate_path(bag, aptrust)) == [
        "the bag must be serialized (application/x-tar), not a directory (profile aptrust)"
    ]
    assert errors(validate_path(to_zip(bag), aptrust)) == [
        "serialization zip (application/zip, application/x-zip, application/x-zip-compressed) "
        "is not accepted (profile aptrust); accepted: application/x-tar"
    ]
    forbidding = Profile.from_dict({"Serialization": "forbidden"}, source="dirs-only")
    assert validate_path(bag, forbidding).valid
    assert errors(validate_path(to_tar(bag), forbidding)) == [
        "the bag must be a directory, not a tar (profile dirs-only)"
    ]


def test_a_profile_file_with_tag_files_and_tag_manifests(tmp_path):
    profile = Profile.from_file(
        write_profile(
            tmp_path,
            {
                "BagIt-Profile-Info": {"BagIt-Profile-Identifier": "https://example.org/lab"},
                "Tag-Files-Required": ["docs/readme.txt"],
                "Tag-Files-Allowed": ["docs/*"],
                "Tag-Manifests-Required": ["sha1"],
                "Manifests-Allowed": ["sha256", "sha512"],
                "Bag-Info": {"Contact-Email": {"required": True}},
            },
        )
    )
    bag = make_bag_dir(tmp_path, algorithms=("md5", "sha256"))
    (bag / "notes").mkdir()
    (bag / "notes/todo.txt").write_text("tidy up")
    set_tag(bag, "bag-info.txt", "BagIt-Profile-Identifier", "https://example.org/other")

    report = validate_path(bag, profile)

    assert errors(report) == [
        "manifest-md5.txt: md5 is not allowed (profile lab); allowed: sha256, sha512",
        "tagmanifest-sha1.txt: missing: required (profile lab)",
        "docs/readme.txt: missing: a tag file required (profile lab)",
        "notes/todo.txt: tag file not allowed (profile lab)",
        "bag-info.txt: required tag Contact-Email is missing (profile lab)",
    ]
    assert [str(w) for w in report.warnings] == [
        "bag-info.txt: BagIt-Profile-Identifier https://example.org/other is not this "
        "profile's (https://example.org/lab)"
    ]


def test_a_profile_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")

    with pytest.raises(InvalidInput) as caught:
        Profile.from_file(path)

    assert caught.value.field == str(path)
    assert "not valid JSON" in caught.value.rule


@pytest.mark.parametrize(
    "profile, field, rule",
    [
        ({"Manifests-Required": "sha256"}, "Manifests-Required", "must be a list of strings"),
        ({"Allow-Fetch.txt": "no"}, "Allow-Fetch.txt", "must be true or false"),
        ({"Serialization": "maybe"}, "Serialization", "must be one of forbidden, required"),
        ({"Bag-Info": []}, "Bag-Info", "must be an object of tag rules"),
        ({"Bag-Info": {"Access": {"values": "Open"}}}, "Bag-Info.Access.values", "must be a list"),
        ({"Bag-Info": {"Access": {"required": 1}}}, "Bag-Info.Access.required", "must be true"),
        ({"BagIt-Profile-Info": {"Version": 2}}, "BagIt-Profile-Info", "must be an object of"),
        ({"Accept-BagIt-Version": ["one"]}, "Accept-BagIt-Version", "'one' is not a M.N"),
        (
            {"Manifests-Required": ["md5"], "Manifests-Allowed": ["sha256"]},
            "Manifests-Allowed",
            "must include the required ['md5']",
        ),
    ],
)
def test_a_field_of_the_wrong_type_names_the_file_and_the_field(tmp_path, profile, field, rule):
    path = write_profile(tmp_path, profile)

    with pytest.raises(InvalidInput) as caught:
        Profile.from_file(path)

    assert caught.value.field == f"lab: {field}"
    assert caught.value.rule.startswith(rule)


def test_a_profile_is_named_by_file_or_as_shipped(tmp_path):
    path = write_profile(tmp_path, {"Allow-Fetch.txt": False})

    assert Profile.load(str(path)).name == "lab"
    assert not Profile.load(str(path)).allow_fetch
    with pytest.raises(InvalidInput, match="no such profile file"):
        Profile.load(str(tmp_path / "nope.json"))
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        Profile.from_file(write_profile(tmp_path, [1, 2], "list.json"))  # type: ignore[arg-type]


def test_a_profile_with_no_constraints_accepts_any_valid_bag(tmp_path):
    bag = make_bag_dir(tmp_path)

    assert validate_path(bag, Profile.from_dict({"BagIt-Profile-Info": {}}, "empty")).valid


@pytest.mark.parametrize(
    "data, rule",
    [
        ({"totally": "unrelated"}, "is neither a BagIt-Profiles profile nor a DART profile"),
        ({}, "is neither a BagIt-Profiles profile nor a DART profile (it has no keys at all)"),
        ({**LAB, "Manifest-Required": ["md5"]}, "has keys this reader does not know: "
         "['Manifest-Required']"),
        ({"Bag-Info": {"Title": {"required": True, "emptyOk": True}}},
         "has keys this reader does not know: ['emptyOk']"),
        ({"Bag-Info": {}, "tags": []}, "mixes BagIt-Profiles keys and DART profile keys"),
        ({"manifestsRequired": ["md5"], "tags": [{"tagFile": "bag-info.txt",
          "tagName": "Title", "mustHave": True}]},
         "has keys this reader does not know: ['mustHave']"),
        ({"manifestsRequired": ["md5"], "bagItProfileInfo": {"owner": "x"}},
         "has keys this reader does not know: ['owner']"),
        ({"manifestsRequired": ["md5"], "allowMiscTopLevelFiles": False},
         "has keys this reader does not know: ['allowMiscTopLevelFiles']"),
    ],
)  # fmt: skip
def test_a_file_that_is_no_profile_or_holds_unknown_keys_is_refused(tmp_path, data, rule):
    with pytest.raises(InvalidInput) as caught:
        Profile.from_file(write_profile(tmp_path, data))

    assert caught.value.field.startswith("lab"), caught.value
    assert rule in caught.value.rule, caught.value.rule


def test_unknown_keys_exit_2_naming_them(tmp_path, monkeypatch, capsys):
    from tests.unit.test_bag_cli import stagebox

    path = write_profile(tmp_path, {"totally": "unrelated"})
    bag = make_bag_dir(tmp_path)

    code, _, err = stagebox(
        monkeypatch, capsys, "bag", "validate", str(bag), "--profile", str(path)
    )

    assert code == 2
    assert err.startswith("stagebox: lab: is neither a BagIt-Profiles profile"), err
    assert err.count("\n") == 1


def test_a_profile_can_require_fetch_txt_and_an_empty_payload(tmp_path):
    profile = Profile.from_dict({"Fetch.txt-Required": True, "Data-Empty": True}, source="holey")

    assert errors(validate_path(make_bag_dir(tmp_path), profile)) == [
        "fetch.txt: missing: required (profile holey)",
        "data/: the payload must be empty (at most one empty file) (profile holey)",
    ]
