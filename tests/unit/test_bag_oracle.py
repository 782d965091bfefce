"""bagit-python as the oracle: on every bag it can judge, our verdict is its verdict.

Each fixture is a bag made by bagit-python and spoilt on disk (tests/bags.py),
so bagit-python judges the directory; we judge the directory, its tar and its
zip. Fixtures that exist only as crafted tars (symlink or device entries, cut
archives) have no oracle: see test_bag_tarstream.py and test_bag_validate.py.
"""

from __future__ import annotations

import pytest

from stagebox.ingest.bagit import validate_path
from tests.bags import BREAKAGES, bagit_python_valid, broken_bag, to_tar, to_zip


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
