"""The BagIt validator: every error names the entry and the rule, and all are collected."""

from __future__ import annotations

import hashlib
import os
import tarfile
import unicodedata
from datetime import date
from pathlib import Path

import pytest

from stagebox.ingest import bagread
from stagebox.ingest.bagit import ALGORITHMS, BagEntry, Problem, Report, validate, validate_path
from tests.bags import (
    TarBuilder,
    broken_bag,
    make_bag_dir,
    retag,
    set_tag,
    set_version,
    to_tar,
    to_zip,
)


def errors(report: Report) -> list[str]:
    return [str(p) for p in report.errors]


def warnings(report: Report) -> list[str]:
    return [str(p) for p in report.warnings]


def has(lines: list[str], prefix: str) -> bool:
    return any(line.startswith(prefix) for line in lines)


FORMS = {
    "dir": lambda bag: bag,
    "tar": to_tar,
    "tar.gz": lambda bag: to_tar(bag, compression="gz"),
    "zip": to_zip,
}


# -- good bags -----------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_a_bag_made_by_bagit_python_is_valid_in_every_form(tmp_path, form):
    bag = make_bag_dir(tmp_path, algorithms=("md5", "sha1", "sha256", "sha512"))

    report = validate_path(FORMS[form](bag))

    assert errors(report) == [] and warnings(report) == []
    assert report.valid
    assert (report.payload_files, report.payload_bytes) == (5, 10269)


@pytest.mark.parametrize("version", ["0.97", "1.0", "0.96"])
def test_bags_of_each_supported_version_are_valid(tmp_path, version):
    bag = make_bag_dir(tmp_path)  # bagit-python writes 0.97
    set_version(bag, version)

    assert errors(validate_path(to_tar(bag))) == []


def test_an_0_95_bag_keeps_its_metadata_in_package_info(tmp_path):
    bag = broken_bag(tmp_path, "version_0_95")

    assert errors(validate_path(bag)) == []


def test_a_bag_with_an_empty_payload_directory_and_manifest_is_valid(tmp_path):
    bag = broken_bag(tmp_path, "empty_payload")

    for form in ("dir", "tar", "zip"):
        assert errors(validate_path(FORMS[form](bag))) == [], form


def test_only_the_manifests_algorithms_are_hashed_for_a_directory(tmp_path):
    bag = make_bag_dir(tmp_path, algorithms=("sha256",))

    read = bagread.read_bag(bag)

    assert set(read.entries["data/a.txt"].digests) == {"sha256"}
    assert set(bagread.read_bag(to_tar(bag)).entries["data/a.txt"].digests) == set(ALGORITHMS)


def test_a_tar_whose_manifests_need_another_algorithm_is_read_again_for_it_alone(tmp_path):
    tar = to_tar(make_bag_dir(tmp_path, algorithms=("sha384",)))

    entry = bagread.read_bag(tar).entries["data/a.txt"]

    assert set(entry.digests) == {*ALGORITHMS, "sha384"}  # the four while streaming, then one
    assert entry.digests["sha384"] == hashlib.sha384(b"alpha\n").hexdigest()


# -- bad bags: each error names the entry and the rule ---------------------------


def test_a_missing_manifest(tmp_path):
    report = validate_path(to_tar(broken_bag(tmp_path, "missing_manifests")))

    assert "no payload manifest: BagIt requires a manifest-<algorithm>.txt" in errors(report)


def test_a_wrong_digest_names_the_file_the_algorithm_and_both_digests(tmp_path):
    report = validate_path(to_tar(broken_bag(tmp_path, "wrong_digest")))

    good = hashlib.sha256(b"alpha\n").hexdigest()
    bad = hashlib.sha256(b"ALPHA\n").hexdigest()
    assert (
        f"data/a.txt: sha256 digest mismatch: manifest-sha256.txt says {good}, file has {bad}"
        in errors(report)
    )
    assert len(errors(report)) == 3  # md5, sha256 and sha512 all disagree


def test_an_extra_payload_file(tmp_path):
    report = validate_path(to_tar(broken_bag(tmp_path, "extra_payload")))

    assert (
        "data/new.txt: payload file not listed in manifest-md5.txt, manifest-sha256.txt, "
        "manifest-sha512.txt"
    ) in errors(report)


def test_a_payload_file_missing_from_just_one_manifest(tmp_path):
    bag = make_bag_dir(tmp_path)
    manifest = bag / "manifest-sha512.txt"
    kept = [line for line in manifest.read_text().splitlines() if "data/a.txt" not in line]
    manifest.write_text("\n".join(kept) + "\n")

    report = validate_path(bag)

    assert has(errors(report), "data/a.txt: payload file not listed in manifest-sha512.txt")


def test_a_missing_payload_file(tmp_path):
    report = validate_path(to_tar(broken_bag(tmp_path, "missing_payload")))

    assert has(errors(report), "data/a.txt: listed in manifest-md5.txt, manifest-sha256.txt")
    assert has(errors(report), "bag-info.txt: Payload-Oxum 10269.5 does not match the payload")


def test_no_bagit_txt(tmp_path):
    report = validate_path(to_tar(broken_bag(tmp_path, "no_bagit_txt")))

    assert "bagit.txt: missing (required by BagIt)" in errors(report)


def test_a_payload_oxum_mismatch(tmp_path):
    report = validate_path(to_tar(broken_bag(tmp_path, "oxum_mismatch")))

    assert errors(report) == [
        "bag-info.txt: Payload-Oxum 999.5 does not match the payload: 10269 bytes in 5 files"
    ]


def test_a_tag_manifest_mismatch(tmp_path):
    report = validate_path(to_tar(broken_bag(tmp_path, "tag_manifest_mismatch")))

    assert has(errors(report), "bag-info.txt: sha256 digest mismatch: tagmanifest-sha256.txt says")


def test_a_tag_file_listed_in_a_tag_manifest_but_missing(tmp_path):
    bag = make_bag_dir(tmp_path)
    with (bag / "tagmanifest-sha256.txt").open("a") as f:
        f.write(f"{'0' * 64} extra/notes.txt\n")

    assert has(errors(validate_path(bag)), "extra/notes.txt: listed in tagmanifest-sha256.txt")


def test_a_fetched_file_that_is_present_is_fine_without_a_profile(tmp_path):
    assert errors(validate_path(to_tar(broken_bag(tmp_path, "fetch_present")))) == []


def test_a_file_listed_in_fetch_txt_but_absent_makes_the_bag_incomplete(tmp_path):
    report = validate_path(to_tar(broken_bag(tmp_path, "fetch_absent")))

    assert (
        "data/a.txt: listed in manifest-md5.txt, manifest-sha256.txt, manifest-sha512.txt but "
        "missing from the payload (listed in fetch.txt: the bag must be fetched first)"
    ) in errors(report)


def test_fetch_txt_lines_are_checked(tmp_path):
    bag = make_bag_dir(tmp_path)
    (bag / "fetch.txt").write_text(
        "not-a-url 6 data/a.txt\n"
        "https://example.org/x six data/a.txt\n"
        "https://example.org/x 1 ../../etc/passwd\n"
        "https://example.org/x 1 bagit.txt\n"
        "https://example.org/x - data/unlisted.txt\n"
        "only two\n"
    )

    lines = errors(validate_path(bag))

    assert "fetch.txt: line 1: malformed URL not-a-url" in lines
    assert "fetch.txt: line 2: the length must be a number of bytes or '-', not six" in lines
    assert has(lines, "fetch.txt: line 3: the path ../../etc/passwd climbs out of the bag")
    assert "fetch.txt: line 4: the path 'bagit.txt' is not a payload file (not under data/)" in (
        lines
    )
    assert has(lines, "data/unlisted.txt: listed in fetch.txt but not in manifest-md5.txt")
    assert has(lines, "fetch.txt: line 6: not a 'URL LENGTH PATH' line")


def test_a_manifest_path_that_escapes_the_bag(tmp_path):
    report = validate_path(broken_bag(tmp_path, "manifest_escapes"))

    assert (
        "manifest-sha256.txt: line 6: the path ../outside.txt climbs out of the bag with '..'"
        in errors(report)
    )


def test_malformed_manifest_lines_and_unsupported_algorithms(tmp_path):
    bag = make_bag_dir(tmp_path)
    with (bag / "manifest-sha256.txt").open("a") as f:
        f.write("justadigest\n")
    (bag / "manifest-md4x.txt").write_text("")

    lines = errors(validate_path(bag))

    assert "manifest-sha256.txt: line 6: not a 'DIGEST PATH' line: justadigest" in lines
    assert has(lines, "manifest-md4x.txt: unsupported algorithm md4x for a payload manifest")


def test_an_unsupported_version_and_a_bom_in_bagit_txt(tmp_path):
    assert has(
        errors(validate_path(broken_bag(tmp_path / "a", "version_2_0"))), "bagit.txt: unsupp"
    )
    bom = errors(validate_path(broken_bag(tmp_path / "b", "bagit_txt_bom")))
    assert bom == ["bagit.txt: must not start with a byte-order mark"]


def test_unsafe_tar_entries_make_the_bag_invalid(tmp_path):
    bag = make_bag_dir(tmp_path)
    tar = (
        TarBuilder(tmp_path / "bag1.tar")
        .bag(bag)
        .special("bag1/data/link", tarfile.SYMTYPE, "../../etc/passwd")
        .special("bag1/data/hard", tarfile.LNKTYPE, "bag1/data/a.txt")
        .special("bag1/data/tty", tarfile.CHRTYPE)
        .special("bag1/data/fifo", tarfile.FIFOTYPE)
        .file("bag1/data/../../escape.txt")
        .file("/abs.txt")
        .file("bag1/data/bell\a.txt")
        .file("bag1/data/a.txt", b"alpha\n")
        .file("bag2/data/x.txt")
        .close()
    )

    report = validate_path(tar)

    assert errors(report) == [
        "bag1/data/link: symlink to ../../etc/passwd: a bag holds only regular files and "
        "directories",
        "bag1/data/hard: hard link to bag1/data/a.txt: a bag holds only regular files and "
        "directories",
        "bag1/data/tty: character device: a bag holds only regular files and directories",
        "bag1/data/fifo: FIFO (named pipe): a bag holds only regular files and directories",
        "bag1/data/../../escape.txt: '..' in the path: the entry would land outside the bag",
        "/abs.txt: absolute path: the entry would land outside the bag",
        "bag1/data/a.txt: duplicate entry: the path appeared earlier; this copy is refused",
        "bag2/data/x.txt: two top-level directories: bag1 and bag2",
        # admitted (RFC 8493 allows control characters), but in no manifest
        "bag-info.txt: Payload-Oxum 10269.5 does not match the payload: 10271 bytes in 6 files",
        "data/bell\\x07.txt: payload file not listed in manifest-md5.txt, "
        "manifest-sha256.txt, manifest-sha512.txt",
    ]  # the bag itself is fine: only the refused entries are wrong


def test_a_truncated_tar_is_invalid(tmp_path):
    whole = to_tar(make_bag_dir(tmp_path)).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: len(whole) // 2])

    report = validate_path(cut)

    assert has(errors(report), "cut.tar: truncated tar: ")
    assert not report.valid


def test_a_directory_bag_refuses_symlinks(tmp_path):
    bag = make_bag_dir(tmp_path)
    os.symlink("/etc/passwd", bag / "data/link")

    assert has(errors(validate_path(bag)), "data/link: symlink to /etc/passwd")


def test_a_zip_refuses_symlinks_and_escaping_names(tmp_path):
    import zipfile

    dest = to_zip(make_bag_dir(tmp_path))
    with zipfile.ZipFile(dest, "a") as archive:
        link = zipfile.ZipInfo("bag1/data/link")
        link.create_system = 3
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr("bag1/../evil.txt", "x")

    lines = errors(validate_path(dest))

    assert has(lines, "bag1/data/link: symlink: a bag holds only regular files")
    assert has(lines, "bag1/../evil.txt: '..' in the path")


def test_every_error_is_collected_not_only_the_first(tmp_path):
    bag = make_bag_dir(tmp_path)
    (bag / "data/a.txt").write_bytes(b"ALPHA\n")
    (bag / "data/with space.txt").unlink()
    (bag / "data/new.txt").write_bytes(b"new")
    with (bag / "bag-info.txt").open("a") as f:
        f.write("no colon here\n")

    lines = errors(validate_path(bag))

    assert has(lines, "data/a.txt: md5 digest mismatch")
    assert has(lines, "data/with space.txt: listed in")
    assert has(lines, "data/new.txt: payload file not listed")
    assert has(lines, "bag-info.txt: line 5: not a 'Label: value' tag line")
    assert has(lines, "bag-info.txt: md5 digest mismatch: tagmanifest-md5.txt")


# -- fast ------------------------------------------------------------------------


def test_fast_compares_no_digest_but_still_checks_completeness_and_oxum(tmp_path):
    assert errors(validate_path(broken_bag(tmp_path / "a", "wrong_digest"), fast=True)) == []
    extra = errors(validate_path(broken_bag(tmp_path / "b", "extra_payload"), fast=True))
    assert has(extra, "data/new.txt: payload file not listed")
    assert has(extra, "bag-info.txt: Payload-Oxum")


# -- validate() on recorded entries, as the ingest worker calls it ---------------


def recorded(bag: Path) -> tuple[dict[str, BagEntry], dict[str, bytes]]:
    entries, tags = {}, {}
    for path in sorted(bag.rglob("*")):
        if path.is_file():
            rel = path.relative_to(bag).as_posix()
            data = path.read_bytes()
            digests = {a: hashlib.new(a, data).hexdigest() for a in ALGORITHMS}
            entries[rel] = BagEntry(rel, len(data), digests)
            if not rel.startswith("data/"):
                tags[rel] = data
    return entries, tags


def test_validate_reads_only_top_level_tag_files_through_read_tag(tmp_path):
    entries, tags = recorded(make_bag_dir(tmp_path))
    asked: list[str] = []

    def read_tag(path: str) -> bytes:
        asked.append(path)
        return tags[path]

    report = validate(entries, read_tag, serialization="tar")

    assert report.valid
    assert sorted(set(asked)) == sorted(tags)  # bagit.txt, bag-info.txt and the manifests
    assert not any(p.startswith("data/") for p in asked)


def test_structural_problems_come_first_and_make_the_bag_invalid(tmp_path):
    entries, tags = recorded(make_bag_dir(tmp_path))

    report = validate(entries, tags.__getitem__, structural=[Problem("x.tar", "truncated tar: …")])

    assert errors(report) == ["x.tar: truncated tar: …"]


def test_a_read_error_on_a_tag_file_is_an_error_not_an_exception(tmp_path):
    entries, tags = recorded(make_bag_dir(tmp_path))

    def read_tag(path: str) -> bytes:
        if path == "manifest-sha256.txt":
            raise OSError("staging box is gone")
        return tags[path]

    assert "manifest-sha256.txt: could not be read: staging box is gone" in errors(
        validate(entries, read_tag)
    )


def test_a_tag_file_too_large_to_keep_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(bagread, "TAG_FILE_LIMIT", 100)

    lines = errors(validate_path(make_bag_dir(tmp_path)))

    assert has(lines, "manifest-sha512.txt: could not be read: larger than")


def test_missing_digests_are_errors_unless_fast(tmp_path):
    entries, tags = recorded(make_bag_dir(tmp_path))
    bare = {p: BagEntry(p, e.size) for p, e in entries.items()}

    assert has(errors(validate(bare, tags.__getitem__)), "data/a.txt: no md5 digest was recorded")
    assert validate(bare, tags.__getitem__, fast=True).valid


def test_an_empty_payload_needs_the_reader_to_have_seen_data(tmp_path):
    entries, tags = recorded(broken_bag(tmp_path, "empty_payload"))

    assert errors(validate(entries, tags.__getitem__)) == [
        "data/: missing (required by BagIt: the payload directory)"
    ]
    assert validate(entries, tags.__getitem__, payload_dir=True).valid


def test_names_that_differ_only_by_case_or_normalisation_are_warnings(tmp_path):
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    payload = {"README.txt": b"1", "readme.txt": b"2", nfc: b"3", nfd: b"4"}
    entries, tags = recorded(make_bag_dir(tmp_path, payload=payload))

    report = validate(entries, tags.__getitem__)

    assert report.valid
    assert sorted(warnings(report)) == [
        f"data/{nfc}: differs from data/{nfd} only by Unicode normalisation (NFC/NFD): "
        "the two collide on some file systems",
        "data/readme.txt: differs from data/README.txt only by letter case: "
        "the two collide on some file systems",
    ]


def test_a_manifest_name_that_differs_from_the_file_by_normalisation_is_an_error(tmp_path):
    report = validate_path(broken_bag(tmp_path, "manifest_nfd"))

    assert len(report.errors) == 1
    assert "differs in Unicode normalisation (NFC/NFD): rename one to match" in errors(report)[0]


def test_version_1_0_decodes_percent_encoded_manifest_paths(tmp_path):
    payload = {"100%.txt": b"percent", "two\nlines.txt": b"newline"}
    entries, tags = recorded(make_bag_dir(tmp_path, payload=payload, algorithms=("sha256",)))
    manifest = "".join(
        f"{entries[p].digests['sha256']}  {p.replace('%', '%25').replace(chr(10), '%0A')}\n"
        for p in entries
        if p.startswith("data/")
    )
    tags["manifest-sha256.txt"] = manifest.encode()
    tags["bagit.txt"] = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
    del entries["tagmanifest-sha256.txt"]

    assert errors(validate(entries, tags.__getitem__)) == []


def test_error_lines_are_capped_with_a_count_of_the_rest():
    report = Report(errors=[Problem(f"data/{i}", "bad") for i in range(7)])

    assert report.error_lines(cap=3) == ["data/0: bad", "data/1: bad", "data/2: bad",
                                         "... and 4 more errors"]  # fmt: skip
    assert len(report.error_lines()) == 7
    assert str(Problem("", "empty tar")) == "empty tar"


def test_a_tar_whose_top_directory_is_not_named_like_it_gets_a_warning(tmp_path):
    tar = to_tar(make_bag_dir(tmp_path), tmp_path / "deposit-7.tar")

    report = validate_path(tar)

    assert report.valid
    assert warnings(report) == [
        "the top-level directory bag1 is not named like the archive (deposit-7)"
    ]


def test_a_path_that_is_no_bag_at_all_is_invalid_input(tmp_path):
    from stagebox.errors import InvalidInput

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInput, match="not a directory, tar or zip"):
        validate_path(tmp_path / "notes.txt")
    with pytest.raises(InvalidInput, match="No such file"):
        validate_path(tmp_path / "missing.tar")


def test_only_top_level_files_are_manifests(tmp_path):
    bag = make_bag_dir(tmp_path)
    (bag / "extra").mkdir()
    (bag / "extra/manifest-whirlpool.txt").write_text("not a manifest of this bag\n")

    assert errors(validate_path(to_tar(bag))) == []


def rfc_named_bag(root: Path, algorithm: str, name: str = "bag1") -> Path:
    """A bag made by bagit-python with hashlib's ``algorithm``, its manifests
    renamed as RFC 8493 section 2.4 spells it (``sha3_256`` -> ``sha3256``)."""
    bag = make_bag_dir(root, name, algorithms=(algorithm,))
    spelt = algorithm.replace("_", "")
    if spelt != algorithm:
        (bag / f"manifest-{algorithm}.txt").rename(bag / f"manifest-{spelt}.txt")
        (bag / f"tagmanifest-{algorithm}.txt").unlink()
        listed = sorted(p for p in bag.iterdir() if p.is_file())
        (bag / f"tagmanifest-{spelt}.txt").write_text(
            "".join(
                f"{hashlib.new(algorithm, p.read_bytes()).hexdigest()}  {p.name}\n" for p in listed
            )  # fmt: skip
        )
    return bag


@pytest.mark.parametrize(
    "spelt, algorithm",
    [("sha224", "sha224"), ("sha384", "sha384"), ("sha3256", "sha3_256"), ("blake2b", "blake2b")],
)
@pytest.mark.parametrize("form", ["directory", "tar", "tar.gz", "zip"])
def test_a_bag_whose_only_manifests_are_any_hashlib_digest_is_checked(
    tmp_path, spelt, algorithm, form
):
    # RFC 8493 names no fixed set of algorithms: every one hashlib offers is checked
    bag = rfc_named_bag(tmp_path, algorithm)
    spoilt = rfc_named_bag(tmp_path / "spoilt", algorithm)
    (spoilt / "data/a.txt").write_bytes(b"ALPHA\n")  # same size: only the digest tells
    serialise = {
        "directory": lambda b: b,
        "tar": to_tar,
        "tar.gz": lambda b: to_tar(b, compression="gz"),
        "zip": to_zip,
    }[form]

    assert errors(validate_path(serialise(bag))) == []
    found = errors(validate_path(serialise(spoilt)))
    assert found == [f"data/a.txt: {spelt} digest mismatch: manifest-{spelt}.txt says "
                     f"{found[0].split(' says ')[1].split(',')[0]}, file has "
                     f"{hashlib.new(algorithm, b'ALPHA' + bytes([10])).hexdigest()}"]  # fmt: skip


def test_an_algorithm_hashlib_does_not_offer_is_an_error(tmp_path):
    bag = make_bag_dir(tmp_path, algorithms=("sha256",))
    (bag / "manifest-whirlpool.txt").write_text("00  data/a.txt\n")

    assert (
        "manifest-whirlpool.txt: unsupported algorithm whirlpool for a payload manifest: "
        "it is none of the digests Python's hashlib offers" in errors(validate_path(bag))
    )


@pytest.mark.parametrize("written", ["sha3_256", "SHA256", "sha-512"])
def test_an_algorithm_name_not_normalized_as_rfc_8493_says_is_an_error(tmp_path, written):
    bag = make_bag_dir(tmp_path, algorithms=("sha256",))
    (bag / f"manifest-{written}.txt").write_text("")
    spelt = written.lower().replace("_", "").replace("-", "")

    assert errors(validate_path(bag)) == [
        f"manifest-{written}.txt: the algorithm name {written} is not normalized as RFC 8493 "
        f"requires (lower case, letters and digits only): name it manifest-{spelt}.txt"
    ]


@pytest.mark.parametrize(
    "bagit_txt, rule",
    [
        ("BagIt-Version: 0.97\n", "has 1 line; RFC 8493 requires exactly two"),
        ("Tag-File-Character-Encoding: UTF-8\nBagIt-Version: 0.97\n",
         "line 1 must be the BagIt-Version tag"),
        ("BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\nContact: me\n",
         "has 3 lines"),
        ("BagIt-Version:0.97\nTag-File-Character-Encoding: UTF-8\n",
         "line 1: BagIt-Version:0.97 is not 'LABEL: VALUE'"),
        ("BagIt-Version :  0.97\nTag-File-Character-Encoding: UTF-8\n",
         "line 1: BagIt-Version :  0.97 is not 'LABEL: VALUE'"),
        ("BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8 \n",
         "line 2: Tag-File-Character-Encoding: UTF-8  is not 'LABEL: VALUE'"),
        ("BagIt-Version: 0.97\n\nTag-File-Character-Encoding: UTF-8\n", "has 3 lines"),
        ("BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n\n",
         "has 3 lines; RFC 8493 requires exactly two (BagIt-Version, then "
         "Tag-File-Character-Encoding); line 3: an empty line"),
        ("BagIt-Version:\t0.97\nTag-File-Character-Encoding: UTF-8\n",
         "line 1: BagIt-Version:\\x090.97 is not 'LABEL: VALUE'"),
        (" BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n",
         "line 1:  BagIt-Version: 0.97 is not 'LABEL: VALUE'"),
        ("bagit-version: 0.97\nTag-File-Character-Encoding: UTF-8\n",
         "line 1 must be the BagIt-Version tag, not bagit-version: 0.97"),
        ("BagIt-Version: 0.97\nTag-File-Character-Encoding:\n",
         "line 2: Tag-File-Character-Encoding: is not 'LABEL: VALUE'"),
        ("BagIt-Version: 1.0\r\nTag-File-Character-Encoding:  UTF-8\r\n",
         "line 2: Tag-File-Character-Encoding:  UTF-8 is not 'LABEL: VALUE'"),
    ],
)  # fmt: skip
def test_bagit_txt_has_exactly_the_form_rfc_8493_gives(tmp_path, bagit_txt, rule):
    bag = make_bag_dir(tmp_path)
    (bag / "bagit.txt").write_text(bagit_txt)

    found = errors(validate_path(bag, fast=True))

    assert any(e.startswith(f"bagit.txt: {rule}") for e in found), found


def test_what_rfc_8493_says_a_bag_should_do_is_a_warning_only(tmp_path):
    bag = make_bag_dir(tmp_path, payload={"a.txt": b"alpha\n"})  # ASCII: latin-1 reads it
    (bag / "bagit.txt").write_text("BagIt-Version: 0.97\nTag-File-Character-Encoding: latin-1\n")
    with (bag / "bag-info.txt").open("a") as f:
        f.write("Bag-Count: one of many\nBag-Group-Identifier: a\nBag-Group-Identifier: b\n")
    (bag / "bag-info.txt").write_text(
        (bag / "bag-info.txt").read_text().replace("Bagging-Date: ", "Bagging-Date: on ")
    )

    report = validate_path(bag, fast=True)

    assert report.valid, errors(report)
    assert [str(w) for w in report.warnings] == [
        "bagit.txt: Tag-File-Character-Encoding is latin-1; RFC 8493 says it should be UTF-8",
        "bag-info.txt: Bag-Group-Identifier appears 2 times; RFC 8493 says it should not be "
        "repeated",
        f"bag-info.txt: Bagging-Date on {date.today().isoformat()} is not in RFC 8493's form "
        "(YYYY-MM-DD)",
        "bag-info.txt: Bag-Count one of many is not in RFC 8493's form (N of T, T a number or ?)",
    ]


def _sha224_manifests(bag: Path) -> None:
    paths = [
        line.split(None, 1)[1] for line in (bag / "manifest-sha256.txt").read_text().splitlines()
    ]
    (bag / "manifest-sha224.txt").write_text(
        "".join(f"{hashlib.sha224((bag / p).read_bytes()).hexdigest()}  {p}\n" for p in paths)
    )
    (bag / "tagmanifest-sha224.txt").write_text("")
    retag(bag)


def _md5sum_stars(bag: Path) -> None:
    manifest = bag / "manifest-sha256.txt"
    manifest.write_text(
        "".join(line.replace("  ", " *", 1) + "\n" for line in manifest.read_text().splitlines())
    )
    retag(bag)


def _no_last_line_end(bag: Path, name: str) -> None:
    (bag / name).write_text((bag / name).read_text().rstrip("\n"))
    retag(bag)


def _appended(bag: Path, name: str, text: str) -> None:
    with (bag / name).open("a") as f:
        f.write(text)
    retag(bag)


def _tag_manifest_lists_less(bag: Path) -> None:
    manifest = bag / "tagmanifest-sha512.txt"
    kept = [line for line in manifest.read_text().splitlines() if "bag-info.txt" not in line]
    manifest.write_text("\n".join(kept) + "\n")


WHERE_RFC_8493_SAYS_SHOULD = {
    # 2.2.2 "Bagging-Date: Date (YYYY-MM-DD)"
    "Bagging-Date is a date": (
        lambda bag: set_tag(bag, "bag-info.txt", "Bagging-Date", "2024-02-30"),
        ["bag-info.txt: Bagging-Date 2024-02-30 is not in RFC 8493's form (YYYY-MM-DD)"],
    ),
    # 2.2.2 "Bag-Size: ... followed by an abbreviation such as MB (megabytes), GB, or TB"
    "Bag-Size has a unit": (
        lambda bag: set_tag(bag, "bag-info.txt", "Bag-Size", "big"),
        ["bag-info.txt: Bag-Size big is not in RFC 8493's form (a size and a unit, as 42.6 GB)"],
    ),
    # 2.2.2 "This metadata element SHOULD NOT be repeated"; names are case-insensitive
    "Bag-Count is not repeated": (
        lambda bag: _appended(
            bag, "bag-info.txt", "Bag-Count: 1 of 2\nbag-count: 2 of 2\nBag-Group-Identifier: g\n"
        ),
        ["bag-info.txt: Bag-Count appears 2 times; RFC 8493 says it should not be repeated"],
    ),
    # 2.2.2 "it is RECOMMENDED to also include the Bag-Group-Identifier element"
    "Bag-Count comes with Bag-Group-Identifier": (
        lambda bag: set_tag(bag, "bag-info.txt", "Bag-Count", "1 of ?"),
        ["bag-info.txt: Bag-Count without Bag-Group-Identifier; RFC 8493 recommends giving both"],
    ),
    # 2.3 "It is RECOMMENDED that the last line in a tag file also ends with LF, CR, or CRLF"
    "bag-info.txt ends its last line": (
        lambda bag: _no_last_line_end(bag, "bag-info.txt"),
        ["bag-info.txt: the last line has no line end (LF, CR or CRLF); RFC 8493 recommends one"],
    ),
    "bagit.txt ends its last line": (
        lambda bag: _no_last_line_end(bag, "bagit.txt"),
        ["bagit.txt: the last line has no line end (LF, CR or CRLF); RFC 8493 recommends one"],
    ),
    # 2.2.1 "Tag manifests SHOULD use the same algorithms as the payload manifests"
    "tag manifests use the payload manifests' algorithms": (
        lambda bag: (bag / "tagmanifest-sha512.txt").unlink(),
        ["manifest-sha512.txt: no tag manifest uses sha512; RFC 8493 says tag manifests should "
         "use the payload manifests' algorithms"],
    ),
    # 2.2.1 "each tag manifest SHOULD list the same set of tag files"
    "tag manifests list the same tag files": (
        _tag_manifest_lists_less,
        ["tagmanifest-sha512.txt: does not list bag-info.txt, which another tag manifest lists; "
         "RFC 8493 says each should list the same tag files"],
    ),
    # 2.4 "the checksum algorithm SHOULD be registered in IANA's "Named Information Hash
    # Algorithm Registry""
    "the algorithm is a registered one": (
        _sha224_manifests,
        [f"{name}: sha224 is not in IANA's Named Information Hash Algorithm Registry; RFC 8493 "
         "says a manifest's algorithm should be (or be md5 or sha1)"
         for name in ("manifest-sha224.txt", "tagmanifest-sha224.txt")],
    ),
    # Legacy Checksum Tools: accepting md5sum's '*' "MUST warn the user"
    "no md5sum '*' before manifest paths": (
        _md5sum_stars,
        ["manifest-sha256.txt: 5 lines (first: line 1) put md5sum's binary-mode '*' before the "
         "path: read without it, but the bag will fail strict validation"],
    ),
    # 2.2.3 "length is the number of octets in the file"
    "a fetch.txt length is the file's size": (
        lambda bag: _appended(bag, "fetch.txt", "https://example.org/a.txt 7 data/a.txt\n"),
        ["fetch.txt: line 1: the length 7 is not the size of data/a.txt (6 bytes)"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("should", WHERE_RFC_8493_SAYS_SHOULD)
@pytest.mark.parametrize("form", ["directory", "tar"])
def test_each_should_a_bag_breaks_is_a_warning_and_the_bag_stays_valid(tmp_path, should, form):
    bag = make_bag_dir(tmp_path, algorithms=("sha256", "sha512"))
    spoil, expected = WHERE_RFC_8493_SAYS_SHOULD[should]
    spoil(bag)

    report = validate_path(bag if form == "directory" else to_tar(bag))

    assert errors(report) == []
    assert warnings(report) == expected


def test_a_bag_that_keeps_every_should_has_no_warning(tmp_path):
    bag = make_bag_dir(tmp_path, algorithms=("sha256", "sha512"))
    set_tag(bag, "bag-info.txt", "Bag-Size", "10 KB")
    set_tag(bag, "bag-info.txt", "Bag-Count", "1 of 2")
    set_tag(bag, "bag-info.txt", "Bag-Group-Identifier", "deposit-7")

    assert warnings(validate_path(to_tar(bag))) == []


def test_payload_oxum_given_twice_is_an_error_as_rfc_8493_says_it_must_not_be(tmp_path):
    bag = make_bag_dir(tmp_path)
    _appended(bag, "bag-info.txt", "payload-oxum: 10269.5\n")  # reserved names ignore case

    assert errors(validate_path(bag)) == [
        "bag-info.txt: Payload-Oxum appears 2 times; RFC 8493 allows it once (the first is checked)"
    ]
