"""Reading BagIt tag files: bagit.txt, tag lines, manifests and fetch.txt.

Parsing is as lenient as bagit-python's where RFC 8493 leaves room (blank
lines and ``#`` comments in manifests, a ``*`` before a manifest path, with a
warning, a byte-order mark before UTF tag files other than bagit.txt), and
reports, never raises, when a file breaks a rule. Lines end at CR, LF or CRLF.
bagit.txt alone has a fixed form (:func:`check_declaration`); what RFC 8493
says a tag file SHOULD do is a warning (:func:`check_last_line`,
:func:`check_reserved`).
"""

from __future__ import annotations

import codecs
import datetime as dt
import posixpath
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from stagebox.ingest.bagtree import shown
from stagebox.ingest.digests import MANIFEST_ALGORITHMS, REGISTERED, normalized
from stagebox.ingest.problems import Report

_LINE_END = re.compile(r"\r\n|\r|\n")
_ENCODED = re.compile(r"%(0[DdAa]|25)")
_DECODED = {"0d": "\r", "0a": "\n", "25": "%"}
_DECLARATION = ("BagIt-Version", "Tag-File-Character-Encoding")
_DECLARATION_LINE = re.compile(r"[^\s:]+: \S(?:.*\S)?")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
# RFC 8493 section 2.2.2, the reserved elements that "SHOULD NOT be repeated"
# (Payload-Oxum "MUST NOT" be: an error, see the validator).
_NOT_REPEATED = ("Bagging-Date", "Bag-Size", "Bag-Group-Identifier", "Bag-Count")
# RFC 8493 section 2.2.2, each reserved element's form, as the RFC gives it:
_FORMS = (
    # "Bagging-Date: Date (YYYY-MM-DD) that the content was prepared for transfer."
    ("Bagging-Date", None, "YYYY-MM-DD"),
    # "Bag-Size: Size or approximate size of the bag being transferred, followed
    # by an abbreviation such as MB (megabytes), GB, or TB; for example, 42600 MB,
    # 42.6 GB, or .043 TB."
    ("Bag-Size", re.compile(r"(\d+(\.\d*)?|\.\d+) ?[A-Za-z]+"), "a size and a unit, as 42.6 GB"),
    # "Bag-Count: Two numbers separated by "of", in particular, "N of T", where T
    # is the total number of bags in a group of bags and N is the ordinal number
    # within the group; if T is not known, specify it as "?" (question mark)."
    ("Bag-Count", re.compile(r"\d+ of (\d+|\?)"), "N of T, T a number or ?"),
)


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


def check_declaration(text: str, report: Report) -> None:
    """bagit.txt's form, each rule it breaks an error naming the line.

    RFC 8493 section 2.1.1: "The "bagit.txt" tag file MUST consist of exactly
    two lines in this order: BagIt-Version: M.N / Tag-File-Character-Encoding:
    ENCODING": the label, a colon, one space and the value, nothing around them.
    """
    found = lines(text)
    if len(found) != 2:
        rule = (
            f"has {len(found)} line{'' if len(found) == 1 else 's'}; RFC 8493 requires "
            "exactly two (BagIt-Version, then Tag-File-Character-Encoding)"
        )
        extra = [f"line {n}: {_line(line)}" for n, line in enumerate(found[2:], 3)]
        report.error("bagit.txt", "; ".join([rule, *extra]))
    for number, (line, label) in enumerate(zip(found, _DECLARATION, strict=False), 1):
        if line.split(":", 1)[0].strip() != label:
            report.error("bagit.txt", f"line {number} must be the {label} tag, not {_line(line)}")
        elif not _DECLARATION_LINE.fullmatch(line):
            report.error(
                "bagit.txt",
                f"line {number}: {shown(line)} is not 'LABEL: VALUE' with one colon and "
                "one space between, and no other whitespace around them",
            )


def _line(line: str) -> str:
    return shown(line) if line else "an empty line"


def check_last_line(path: str, text: str, report: Report) -> None:
    """A warning when the last line of a tag file RFC 8493 describes has no line end.

    RFC 8493 section 2.3: "It is RECOMMENDED that the last line in a tag file
    also ends with LF, CR, or CRLF."
    """
    if text and not text.endswith(("\n", "\r")):
        report.warn(path, "the last line has no line end (LF, CR or CRLF); RFC 8493 recommends one")


def check_reserved(path: str, tags: Sequence[tuple[str, str]], report: Report) -> None:
    """Warnings for the SHOULDs of RFC 8493 section 2.2.2 on the reserved bag-info tags.

    "Reserved metadata element names are case-insensitive", so ``bag-count`` is
    Bag-Count. Each warning quotes the rule; none makes the bag invalid.
    """
    values = reserved_values(tags)
    for label in _NOT_REPEATED:
        # "This metadata element SHOULD NOT be repeated."
        if len(values.get(label, ())) > 1:
            report.warn(
                path,
                f"{label} appears {len(values[label])} times; RFC 8493 says it should not be "
                "repeated",
            )
    for label, pattern, form in _FORMS:
        for value in values.get(label, [])[:1]:
            if not (_is_date(value) if pattern is None else pattern.fullmatch(value)):
                report.warn(path, f"{label} {shown(value)} is not in RFC 8493's form ({form})")
    if "Bag-Count" in values and "Bag-Group-Identifier" not in values:
        # "If this metadata element is present, it is RECOMMENDED to also include
        # the Bag-Group-Identifier element."
        report.warn(path, "Bag-Count without Bag-Group-Identifier; RFC 8493 recommends giving both")


_RESERVED = (*_NOT_REPEATED, "Payload-Oxum")


def reserved_values(tags: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """The values of RFC 8493's reserved tags that carry a rule, by their RFC
    spelling, whatever case the bag writes the label in."""
    spelling = {label.casefold(): label for label in _RESERVED}
    values: dict[str, list[str]] = {}
    for label, value in tags:
        reserved = spelling.get(label.casefold())
        if reserved is not None:
            values.setdefault(reserved, []).append(value)
    return values


def _is_date(value: str) -> bool:
    match = _DATE.fullmatch(value)
    if match is None:
        return False
    try:
        dt.date(*(int(part) for part in match.groups()))
    except ValueError:
        return False
    return True


def check_algorithm(name: str, algorithm: str, kind: str, report: Report) -> bool:
    """Whether the (tag) manifest ``name`` of ``algorithm`` can be checked; why not
    is an error. An algorithm outside IANA's registry is a warning."""
    if algorithm not in MANIFEST_ALGORITHMS:
        spelt = normalized(algorithm)
        if spelt != algorithm and spelt in MANIFEST_ALGORITHMS:
            # RFC 8493 section 2.4: "The name of the checksum algorithm MUST be
            # normalized for use in the manifest's filename by lowercasing the
            # common name of the algorithm and removing all non-alphanumeric
            # characters." (bagit-python writes hashlib's sha3_256.)
            right = name[: -len(algorithm) - len(".txt")] + spelt + ".txt"
            report.error(
                name,
                f"the algorithm name {shown(algorithm)} is not normalized as RFC 8493 "
                f"requires (lower case, letters and digits only): name it {right}",
            )
        else:
            report.error(
                name,
                f"unsupported algorithm {shown(algorithm)} for a {kind}: "
                "it is none of the digests Python's hashlib offers",
            )
        return False
    if algorithm not in REGISTERED:
        # RFC 8493 section 2.4: "the checksum algorithm SHOULD be registered in
        # IANA's "Named Information Hash Algorithm Registry" [...], but MAY for
        # backwards compatibility also be MD5 [RFC1321] or SHA-1 [RFC3174]."
        report.warn(
            name,
            f"{algorithm} is not in IANA's Named Information Hash Algorithm Registry; "
            "RFC 8493 says a manifest's algorithm should be (or be md5 or sha1)",
        )
    return True


def check_tag_manifests(
    payload: Collection[str],
    tagged: Collection[str],
    listed: Mapping[str, Collection[str]],
    report: Report,
) -> None:
    """Warnings for the SHOULDs of RFC 8493 section 2.2.1 on tag manifests.

    ``payload`` and ``tagged`` are the algorithms of the payload and tag
    manifests present; ``listed`` the paths each readable tag manifest lists.
    """
    if tagged:
        # "Tag manifests SHOULD use the same algorithms as the payload manifests
        # that are present in the bag."
        for algorithm in sorted(set(tagged) - set(payload)):
            report.warn(
                f"tagmanifest-{algorithm}.txt",
                f"no payload manifest uses {algorithm}; RFC 8493 says tag manifests "
                "should use the payload manifests' algorithms",
            )
        for algorithm in sorted(set(payload) - set(tagged)):
            report.warn(
                f"manifest-{algorithm}.txt",
                f"no tag manifest uses {algorithm}; RFC 8493 says tag manifests should "
                "use the payload manifests' algorithms",
            )
    # "A bag MAY contain one or more tag manifests, in which case each tag
    # manifest SHOULD list the same set of tag files."
    every = set().union(*listed.values())
    for name, paths in listed.items():
        absent = sorted(every.difference(paths))
        if absent:
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            report.warn(
                name,
                f"does not list {', '.join(shown(p) for p in absent[:3])}{more}, which "
                "another tag manifest lists; RFC 8493 says each should list the same tag files",
            )


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
    starred: list[int] = []
    for number, raw in enumerate(lines(text), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            report.error(name, f"line {number}: not a 'DIGEST PATH' line: {shown(line)}")
            continue
        digest, listed = parts
        if listed.startswith("*"):
            starred.append(number)
        path = decode_path(posixpath.normpath(listed.lstrip("*")), version)
        rule = escape_rule(path)
        if rule is not None:
            report.error(name, f"line {number}: the path {shown(path)} {rule}")
            continue
        entries.append(ManifestLine(number, digest, path))
    if starred:
        # RFC 8493, "Legacy Checksum Tools": implementations may accept md5sum's
        # format "by ignoring a leading asterisk [...] but, if so, implementations
        # MUST warn the user that the bag in question will fail strict validation".
        report.warn(
            name,
            f"{len(starred)} line{'' if len(starred) == 1 else 's'} (first: line "
            f"{starred[0]}) put md5sum's binary-mode '*' before the path: read without it, "
            "but the bag will fail strict validation",
        )
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
