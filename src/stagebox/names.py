"""Rules for names an uploader sends: datasets, experiments, directories, files.

The same rules run on the client (so a bad local name fails that file only) and
on the server (so nothing a client sends can name a path outside its root).
"""

from __future__ import annotations

import unicodedata

from stagebox.errors import InvalidName

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 1024


def _check_component(value: str, field: str) -> None:
    if value in ("", ".", ".."):
        rule = "must not be empty" if value == "" else f"must not be '{value}'"
        raise InvalidName(field, rule, value)
    # Printable ASCII has no control characters: skip the per-character scan.
    plain = value.isascii() and value.isprintable()
    for ch in "" if plain else value:
        if ch == "\x00":
            raise InvalidName(field, "must not contain NUL", value)
        if unicodedata.category(ch) == "Cc":
            raise InvalidName(field, f"must not contain control character U+{ord(ch):04X}", value)
    if "\\" in value:
        raise InvalidName(field, "must not contain a backslash", value)
    if len(value.encode()) > MAX_COMPONENT_BYTES:
        raise InvalidName(field, f"a path component must be at most {MAX_COMPONENT_BYTES} bytes")


def _normalise(value: str, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidName(field, "must be a string", value)
    if len(value) > MAX_PATH_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidName(field, f"must be at most {MAX_PATH_BYTES} bytes")
    if value.isascii():
        return value  # ASCII is NFC already
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidName(field, "must be valid UTF-8", value) from None
    return unicodedata.normalize("NFC", value)


def clean_component(value: str, field: str) -> str:
    """Return ``value`` NFC-normalised, or raise :class:`InvalidName`.

    A component is one path segment: no slash, not ``.``/``..``, no control
    characters, at most 255 bytes.
    """
    value = _normalise(value, field)
    if "/" in value:
        raise InvalidName(field, "must not contain '/'", value)
    _check_component(value, field)
    return value


def clean_directory(value: str, field: str = "directory") -> str:
    """Return a relative directory path, NFC-normalised, '' for the top.

    Segments are joined with '/'; absolute paths, '..', '.', empty segments and
    control characters are refused.
    """
    value = _normalise(value, field)
    if value == "":
        return ""
    if value.startswith("/"):
        raise InvalidName(field, "must be relative, not an absolute path", value)
    for part in value.split("/"):
        _check_component(part, field)
    return value


def join_key(*parts: str) -> str:
    """Join cleaned parts into a storage key, skipping empty ones."""
    return "/".join(p for p in parts if p)
