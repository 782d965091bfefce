"""The OpenAPI description's patterns say exactly what the server's rules refuse,
but for the two a pattern cannot say (UTF-8 byte lengths, lone surrogates)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from stagebox.errors import InvalidInput
from stagebox.names import clean_component, clean_directory
from stagebox.server.api.admin import _ABSOLUTE
from stagebox.server.schemas import COMPONENT, DIRECTORY
from stagebox.server.services import boxes, uploaders

# Path-like text: the characters the rules are about, and any others.
TRICKY = st.sampled_from(["/", ".", "..", "\\", "\x00", "\n", "\x7f", "\x85", "a", "é", " "])
NAMES = st.one_of(
    st.text(max_size=300),
    st.lists(TRICKY, max_size=12).map("".join),
    st.from_regex(COMPONENT, fullmatch=True),
    st.from_regex(DIRECTORY, fullmatch=True),
)


def accepts(rule, value: str) -> bool:
    try:
        rule(value)
    except InvalidInput:
        return False
    return True


def expressible(value: str) -> bool:
    """Not refused for a reason the pattern cannot state."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return all(len(part.encode()) <= 255 for part in value.split("/"))


@settings(max_examples=200, deadline=None)
@given(NAMES)
def test_name_patterns_agree_with_the_name_rules(value: str):
    if not expressible(value):
        return
    assert bool(re.fullmatch(COMPONENT, value)) == accepts(
        lambda v: clean_component(v, "name"), value
    ), value
    if len(value.encode()) <= 1024:
        assert bool(re.fullmatch(DIRECTORY, value)) == accepts(clean_directory, value), value


PATHS = st.one_of(
    st.lists(st.sampled_from(["/", ".", "..", "a", "b_c", " ", "'", "x" * 256]), max_size=8).map(
        "".join
    ),
    st.from_regex(f"^{_ABSOLUTE}$", fullmatch=True),
)


@settings(max_examples=200, deadline=None)
@given(PATHS)
def test_box_path_pattern_agrees_with_the_box_rules(value: str):
    described = bool(re.fullmatch(_ABSOLUTE, value)) and len(value) <= boxes.MAX_PATH
    assert described == accepts(lambda v: boxes._absolute(v, "path"), value), value


@given(st.text(max_size=80))
def test_machine_description_rule_is_checked_on_the_value_as_sent(value: str):
    as_described = bool(re.fullmatch(r"[^\x00-\x1f\x7f]*", value)) and len(value) <= 64
    assert as_described == accepts(lambda v: uploaders._describe(v, "mac_address"), value), value
