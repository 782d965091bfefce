"""bagit-python as the oracle: on every bag it can judge, our verdict is its verdict.

Each fixture is a bag made by bagit-python and spoilt on disk (tests/bags.py),
so bagit-python judges the directory; we judge the directory, its tar and its
zip. Fixtures that exist only as crafted tars (symlink or device entries, cut
archives) have no oracle: see test_bag_tarstream.py and test_bag_validate.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stagebox.ingest.bagit import validate_path
from tests.bags import (
    BREAKAGES,
    bagit_python_valid,
    broken_bag,
    make_bag_dir,
    retag,
    to_tar,
    to_zip,
)
from tests.unit.test_bag_validate import rfc_named_bag


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_our_verdict_is_bagit_pythons(tmp_path, breakage):
    bag = broken_bag(tmp_path, breakage)
    _, expected = BREAKAGES[breakage]

    theirs = bagit_python_valid(bag)
    ours = validate_path(bag)

    assert theirs == expected, "the fixture no longer breaks the bag the way it says"
    assert ours.valid == theirs, [str(p) for p in ours.errors]


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_bag_gets_the_same_verdict_as_a_directory_a_tar_and_a_zip(tmp_path, breakage):
    bag = broken_bag(tmp_path, breakage)

    verdicts = {
        "dir": validate_path(bag).valid,
        "tar": validate_path(to_tar(bag)).valid,
        "zip": validate_path(to_zip(bag)).valid,
    }

    assert set(verdicts.values()) == {BREAKAGES[breakage][1]}, verdicts


def test_there_are_enough_oracle_fixtures():
    assert len(BREAKAGES) >= 10
    assert sum(valid for _, valid in BREAKAGES.values()) >= 5


# -- where RFC 8493 decides ------------------------------------------------------
#
# Bags on which bagit-python's verdict is not ours, or is ours only by chance of
# its own rules: each case says what bagit-python answers (checked, so a new
# bagit-python that changes its mind shows here) and what RFC 8493 makes ours.
# The README's bag validation section lists the same cases.

Make = Callable[[Path], Path]


def _spoilt(spoil: Callable[[Path], None]) -> Make:
    def make(root: Path) -> Path:
        bag = make_bag_dir(root)
        spoil(bag)
        return bag

    return make


def _bagit_txt(text: str) -> Make:
    def spoil(bag: Path) -> None:
        (bag / "bagit.txt").write_text(text)
        retag(bag)

    return _spoilt(spoil)


def _bag_info(text: str) -> Make:
    def spoil(bag: Path) -> None:
        with (bag / "bag-info.txt").open("a") as f:
            f.write(text)
        retag(bag)

    return _spoilt(spoil)


def _only(algorithm: str) -> Make:
    return lambda root: make_bag_dir(root, algorithms=(algorithm,))


def _md5sum_stars(bag: Path) -> None:
    for manifest in bag.glob("manifest-*.txt"):
        lines = manifest.read_text().splitlines()
        manifest.write_text("".join(line.replace("  ", " *", 1) + "\n" for line in lines))
    retag(bag)


GOOD_BAGIT_TXT = "BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n"

# name -> (the bag, bagit-python valid?, stagebox valid?)
RFC_DECIDES: dict[str, tuple[Make, bool, bool]] = {
    # 2.1.1: bagit.txt "MUST consist of exactly two lines in this order"
    "bagit.txt in the other order": (
        _bagit_txt("Tag-File-Character-Encoding: UTF-8\nBagIt-Version: 0.97\n"),
        True,
        False,
    ),
    "bagit.txt with a third line": (_bagit_txt(GOOD_BAGIT_TXT + "Contact: me\n"), True, False),
    "bagit.txt ending in an empty line": (_bagit_txt(GOOD_BAGIT_TXT + "\n"), True, False),
    "bagit.txt with an empty line between": (
        _bagit_txt(GOOD_BAGIT_TXT.replace("\n", "\n\n", 1)),
        True,
        False,
    ),
    "bagit.txt without the space": (_bagit_txt(GOOD_BAGIT_TXT.replace(": ", ":", 1)), True, False),
    "bagit.txt with a tab": (_bagit_txt(GOOD_BAGIT_TXT.replace(": ", ":\t", 1)), True, False),
    "bagit.txt with spaces around the colon": (
        _bagit_txt(GOOD_BAGIT_TXT.replace(": ", " :  ", 1)),
        True,
        False,
    ),
    "bagit.txt with trailing whitespace": (
        _bagit_txt(GOOD_BAGIT_TXT.replace("UTF-8", "UTF-8 ")),
        True,
        False,
    ),
    # where both refuse it
    "bagit.txt with one line": (_bagit_txt("BagIt-Version: 0.97\n"), False, False),
    "bagit.txt with a label in other case": (
        _bagit_txt(GOOD_BAGIT_TXT.replace("BagIt-Version", "BagIt-version")),
        False,
        False,
    ),
    # 2.3: the last line SHOULD end: a warning, valid for both
    "bagit.txt without a last line end": (_bagit_txt(GOOD_BAGIT_TXT.rstrip("\n")), True, True),
    # 2.4: names "MUST be normalized ... removing all non-alphanumeric characters"
    "a sha3-256 manifest named sha3256": (
        lambda root: rfc_named_bag(root, "sha3_256"),
        False,
        True,
    ),
    "a sha3-256 manifest named sha3_256, as bagit-python writes it": (
        _only("sha3_256"),
        True,
        False,
    ),
    "only sha224 manifests": (_only("sha224"), True, True),
    "only sha384 manifests": (_only("sha384"), True, True),
    # 2.2.2: Payload-Oxum "MUST NOT be repeated"; "names are case-insensitive"
    "Payload-Oxum twice": (_bag_info("Payload-Oxum: 10269.5\n"), True, False),
    "a wrong payload-oxum in lower case": (_bag_info("payload-oxum: 1.1\n"), True, False),
    # Legacy Checksum Tools: md5sum's '*' may be read, with a warning
    "md5sum's '*' before the paths": (_spoilt(_md5sum_stars), True, True),
}


@pytest.mark.parametrize("case", RFC_DECIDES)
def test_where_bagit_python_and_rfc_8493_disagree_the_rfc_decides(tmp_path, case):
    make, theirs_expected, ours_expected = RFC_DECIDES[case]
    bag = make(tmp_path)

    theirs = bagit_python_valid(bag)
    verdicts = {
        "dir": validate_path(bag).valid,
        "tar": validate_path(to_tar(bag)).valid,
        "zip": validate_path(to_zip(bag)).valid,
    }

    assert theirs == theirs_expected, "bagit-python no longer answers as this case says"
    assert set(verdicts.values()) == {ours_expected}, verdicts
