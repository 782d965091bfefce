"""Reading BagIt tag files: tag lines, manifests and fetch.txt.

Parsing is as lenient as bagit-python's where RFC 8493 leaves room (blank
lines and ``#`` comments in manifests, a ``*`` before a manifest path, a
byte-order mark before UTF tag files other than bagit.txt), and reports, never
raises, when a file breaks a rule. Lines end at CR, LF or CRLF.
"""

from __future__ import annotations

import codecs
import posixpath
import re
from dataclasses import dataclass

from stagebox.ingest.bagtree import shown
from stagebox.ingest.problems import Report

_LINE_END = re.compile(r"\r\n|\r|\n")
_ENCODED = re.compile(r"%(0[DdAa]|25)")
_DECODED = {"0d": "\r", "0a": "\n", "25": "%"}


def lines(text: str) -> list[str]:
    """``text`` split at CR, LF and CRLF; a final line end makes no extra line."""
    parts = _LINE_END.split(text)
    if parts and parts[-1] == "":
        parts.pop()
    return parts


def decode_text(path: str, data: bytes, encoding: str, report: Report) -> str | None:
    """``data`` decoded with the bag's tag-file encoding, or None (an error is reported).

    A leading byte-order mark is dropped, with a warning when the encoding is
    UTF-8 (RFC 8493 forbids one there).
    """
    name = codecs.lookup(encoding).name
    if name == "utf-8" and data.startswith(codecs.BOM_UTF8):
        report.warn(path, "starts with a byte-order mark, which RFC 8493 does not allow")
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        report.error(path, f"not valid {encoding}: byte {exc.start} cannot be decoded")
        return None
    return text.removeprefix("\ufeff")


def parse_tags(path: str, text: str, report: Report) -> list[tuple[str, str]]:
    """The ``(label, value)`` pairs of a tag file, in order, repeats kept.

    A line starting with whitespace continues the previous value (folded with
    its leading whitespace kept); a line without ``:`` is an error.
    """
    tags: list[tuple[str, str]] = []
    label: str | None = None
    value = ""
    for number, line in enumerate(lines(text), 1):
        if not line or line.isspace():
            continue
        if line[0].isspace() and label is not None:
            value += line
            continue
        if label is not None:
            tags.append((label, value.strip()))
            label = None
        if ":" not in line:
            report.error(path, f"line {number}: not a 'Label: value' tag line: {shown(line)}")
            continue
        label, value = line.strip().split(":", 1)
        label = label.strip()
    if label is not None:
        tags.append((label, value.strip()))
    return tags


def decode_path(path: str, version: tuple[int, int]) -> str:
    """A manifest or fetch.txt path with its percent-encoding undone.

    ``%0D`` and ``%0A`` are decoded in every version (as bagit-python does),
    ``%25`` only from BagIt 1.0, where RFC 8493 introduced it.
    """
    if "%" not in path:
        return path

    def replace(match: re.Match[str]) -> str:
        code = match.group(1).lower()
        if code == "25" and version < (1, 0):
            return match.group(0)
        return _DECODED[code]

    return _ENCODED.sub(replace, path)


def escape_rule(path: str) -> str | None:
    """Why ``path`` (already normalised) would name something outside the bag, or None."""
    if path.startswith("/"):
        return "is an absolute path"
    if path == ".." or path.startswith("../"):
        return "climbs out of the bag with '..'"
    if path.startswith("~"):
        return "starts with '~' (a home directory)"
    return None


@dataclass(frozen=True)
class ManifestLine:
    """One ``DIGEST PATH`` line; ``path`` normalised and decoded."""

    number: int
    digest: str
    path: str


def parse_manifest(
    name: str, text: str, version: tuple[int, int], report: Report
) -> list[ManifestLine]:
    """The entries of a (tag) manifest, safe paths only; bad lines are errors."""
    entries: list[ManifestLine] = []
    for number, raw in enumerate(lines(text), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            report.error(name, f"line {number}: not a 'DIGEST PATH' line: {shown(line)}")
            continue
        digest, listed = parts
        path = decode_path(posixpath.normpath(listed.lstrip("*")), version)
        rule = escape_rule(path)
        if rule is not None:
            report.error(name, f"line {number}: the path {shown(path)} {rule}")
            continue
        entries.append(ManifestLine(number, digest, path))
    return entries


@dataclass(frozen=True)
class FetchLine:
    """One ``URL LENGTH PATH`` line of fetch.txt; ``path`` decoded, not yet checked."""

    number: int
    url: str
    length: str
    path: str


def parse_fetch(text: str, version: tuple[int, int], report: Report) -> list[FetchLine]:
    """The lines of fetch.txt; lines without three fields are errors."""
    entries: list[FetchLine] = []
    for number, raw in enumerate(lines(text), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split(None, 2)
        if len(parts) != 3:
            report.error("fetch.txt", f"line {number}: not a 'URL LENGTH PATH' line: {shown(line)}")
            continue
        url, length, path = parts
        entries.append(FetchLine(number, url, length, decode_path(path, version)))
    return entries
