import unicodedata

import pytest

from stagebox.errors import InvalidName
from stagebox.names import clean_component, clean_directory


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "must not be empty"),
        ("..", "must not be '..'"),
        (".", "must not be '.'"),
        ("a/b", "must not contain '/'"),
        ("nul\x00here", "must not contain NUL"),
        ("bell\x07", "control character U+0007"),
        ("new\nline", "control character U+000A"),
        ("back\\slash", "backslash"),
        ("x" * 256, "at most 255 bytes"),
    ],
)
def test_component_rules_name_the_field_and_rule(value, rule):
    with pytest.raises(InvalidName) as err:
        clean_component(value, "filename")
    assert err.value.field == "filename"
    assert rule in err.value.rule


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("/etc", "absolute"),
        ("a/../b", "'..'"),
        ("a//b", "empty"),
        ("a/./b", "'.'"),
        ("a/\x1b[31m", "control character"),
        ("d/" * 2500, "at most 1024 bytes"),
    ],
)
def test_directory_rules(value, rule):
    with pytest.raises(InvalidName) as err:
        clean_directory(value)
    assert rule in err.value.rule


def test_names_are_normalised_to_nfc():
    nfd = unicodedata.normalize("NFD", "café")
    assert nfd != "café"
    assert clean_component(nfd, "filename") == "café"
    assert clean_directory(f"x/{nfd}") == "x/café"


def test_top_level_directory_is_empty_string():
    assert clean_directory("") == ""
    assert clean_directory("raw/2024") == "raw/2024"
