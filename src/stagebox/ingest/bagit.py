"""The BagIt validator: RFC 8493 and the drafts from 0.93, judged from recorded facts.

:func:`validate` never reads payload bytes. It judges a bag from what a reader
recorded while streaming it once (every regular file's size and digests) and
from the tag files it asks ``read_tag`` for, so the ingest worker can validate
a tar it has already staged. :func:`validate_path` is the same for a bag on
disk (a directory, a tar or a zip), read once here.

Every problem is collected, not only the first, each naming the entry and the
rule. A MUST of RFC 8493 a bag breaks is an error; a SHOULD (or RECOMMENDED) it
breaks is a warning, which never makes it invalid. The verdicts follow bagit-python
(the test oracle), with deliberate differences where it is laxer than RFC 8493
or than the ingest worker can be, and RFC 8493 decides:

- every payload manifest must list every payload file (bagit-python is content
  with any one manifest listing it), and every fetch.txt path must be listed
  in the payload manifests;
- a malformed manifest line is an error (bagit-python logs and skips it); a
  payload manifest may list only paths under ``data/``;
- any algorithm Python's hashlib offers is checked, named as RFC 8493 section
  2.4 normalises it (``manifest-sha3256.txt``, which bagit-python does not
  see); hashlib's own spelling (``manifest-sha3_256.txt``, which bagit-python
  writes) breaks that MUST and is an error, as is an algorithm hashlib lacks;
- bagit.txt must be exactly its two lines, in order, as ``LABEL: VALUE``
  (bagit-python takes any order, extra lines and other whitespace); BagIt
  versions above 1.0 are refused;
- Payload-Oxum given twice is an error (bagit-python warns and takes the
  first), and the reserved bag-info labels are case-insensitive
  (``payload-oxum`` is checked; bagit-python ignores it);
- in BagIt 1.0 bags, ``%25`` in manifest and fetch.txt paths decodes to ``%``;
- ``fast`` also checks that the manifests and the payload list the same files
  (bagit-python's fast checks only Payload-Oxum, and needs one).

A file listed in fetch.txt but absent is missing, as for bagit-python: a bag is
valid only once complete (RFC 8493 section 3). So is a manifest path that
matches a payload file only after Unicode normalisation (bagit-python means to
accept it, but then cannot open the file on Linux); two payload names that
differ only by case or normalisation are warnings.
"""

from __future__ import annotations

import codecs
import posixpath
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from stagebox.ingest.bagread import BagEntry, read_bag
from stagebox.ingest.bagtree import shown
from stagebox.ingest.digests import ALGORITHMS
from stagebox.ingest.problems import Problem, Report
from stagebox.ingest.profiles import AutoProfile, BagSummary, Profile
from stagebox.ingest.tagfiles import (
    FetchLine,
    ManifestLine,
    check_algorithm,
    check_declaration,
    check_last_line,
    check_reserved,
    check_tag_manifests,
    decode_text,
    escape_rule,
    parse_fetch,
    parse_manifest,
    parse_tags,
    reserved_values,
)

__all__ = [
    "ALGORITHMS",
    "BagEntry",
    "Problem",
    "Profile",
    "Report",
    "validate",
    "validate_path",
]

OLDEST, NEWEST = (0, 93), (1, 0)

_MANIFEST = re.compile(r"manifest-([^/]+)\.txt")
_TAG_MANIFEST = re.compile(r"tagmanifest-([^/]+)\.txt")
_VERSION = re.compile(r"(\d+)\.(\d+)")
_OXUM = re.compile(r"(\d+)\.(\d+)")
# The tag files RFC 8493 describes, which "MUST adhere to the text tag file
# format" of its section 2.3 (other tag files MAY).
_RFC_TAG_FILE = re.compile(r"(bag|package)-info\.txt|fetch\.txt|(tag)?manifest-[^/]+\.txt")


def validate(
    entries: Mapping[str, BagEntry],
    read_tag: Callable[[str], bytes],
    profile: Profile | AutoProfile | None = None,
    *,
    structural: Sequence[Problem] = (),
    serialization: str | None = None,
    fast: bool = False,
    payload_dir: bool | None = None,
    name_mismatch: str | None = None,
) -> Report:
    """Judge a bag from its recorded entries.

    ``entries`` holds every regular file of the bag (payload and tag files)
    by path. ``read_tag`` returns a tag file's bytes; it is called only for
    top-level files in ``entries`` and may raise OSError (reported as an
    error). ``structural`` problems, found by the reader, become the first
    errors. ``serialization`` (``"tar"``, ``"tar.gz"``, ``"zip"``, or None for a
    directory) feeds the profile's Serialization rules. ``fast`` skips every
    digest comparison. ``payload_dir`` says whether ``data/`` exists; None
    infers it from ``entries`` (so a bag whose data/ is empty needs True).
    ``name_mismatch`` says how an archive's top directory differs from the
    archive's name: a warning, or an error where the profile requires them alike.
    """
    report = Report(errors=list(structural))
    summary = _Validation(entries, read_tag, report, fast).run(
        payload_dir, serialization, name_mismatch
    )
    if profile is not None:
        profile.check(summary, report)  # which judges name_mismatch too
    elif name_mismatch:
        report.warn("", name_mismatch)
    return report


def validate_path(
    path: Path, profile: Profile | AutoProfile | None = None, *, fast: bool = False
) -> Report:
    """Validate a bag directory, a tar (``.tar``, ``.tar.gz``, ``.tgz``...) or a zip.

    Each file is read once, hashed with :data:`ALGORITHMS` (for a directory,
    only those its manifests use; none when ``fast``); top-level tag files are
    kept in memory, up to 64 MiB each. A path that does not exist, or is no
    directory, tar or zip, raises :class:`stagebox.errors.InvalidInput`.
    """
    bag = read_bag(Path(path), hash_files=not fast)
    report = validate(
        bag.entries,
        bag.read_tag,
        profile,
        structural=bag.problems,
        serialization=bag.serialization,
        fast=fast,
        payload_dir=bag.payload_dir,
        name_mismatch=bag.name_mismatch,
    )
    report.warnings[:0] = bag.warnings
    return report


@dataclass
class _Manifest:
    name: str
    algorithm: str
    lines: dict[str, ManifestLine]


class _PayloadNames:
    """Payload names by their NFC form, to explain a manifest path that misses by normalisation."""

    def __init__(self, paths: Mapping[str, BagEntry]) -> None:
        self._nfc: dict[str, str] = {}
        for path in paths:
            self._nfc.setdefault(unicodedata.normalize("NFC", path), path)

    def near(self, path: str) -> str | None:
        return self._nfc.get(unicodedata.normalize("NFC", path))


class _Validation:
    def __init__(
        self,
        entries: Mapping[str, BagEntry],
        read_tag: Callable[[str], bytes],
        report: Report,
        fast: bool,
    ) -> None:
        self.entries = entries
        self.read_tag = read_tag
        self.report = report
        self.fast = fast
        self.payload = {p: e for p, e in entries.items() if p.startswith("data/")}
        self.tag_files = frozenset(p for p in entries if not p.startswith("data/"))
        self.version: tuple[int, int] | None = None
        self.encoding = "utf-8"
        self._parsed: dict[str, list[tuple[str, str]] | None] = {}

    @property
    def rules(self) -> tuple[int, int]:
        """The BagIt version whose rules apply: 1.0 when bagit.txt cannot say."""
        if self.version is None or not OLDEST <= self.version <= NEWEST:
            return NEWEST
        return self.version

    def run(
        self, payload_dir: bool | None, serialization: str | None, name_mismatch: str | None
    ) -> BagSummary:
        report = self.report
        report.payload_files = len(self.payload)
        report.payload_bytes = sum(e.size for e in self.payload.values())
        self._bagit_txt()
        if "data" in self.entries:
            report.error("data", "is a file; the payload directory data/ must be a directory")
        elif not (bool(self.payload) if payload_dir is None else payload_dir):
            report.error("data/", "missing (required by BagIt: the payload directory)")
        info_name = "package-info.txt" if self.rules < (0, 96) else "bag-info.txt"
        info = self.tags(info_name)
        if info is not None:
            self._oxum(info_name, info)
            self._reserved(info_name, info)
        manifests = self._manifests(_MANIFEST, "payload manifest")
        if not manifests and not any(_MANIFEST.fullmatch(p) for p in self.tag_files):
            report.error("", "no payload manifest: BagIt requires a manifest-<algorithm>.txt")
        tag_manifests: list[_Manifest] = []
        if self.rules >= (0, 97):
            tag_manifests = self._manifests(_TAG_MANIFEST, "tag manifest")
        fetched = self._fetch(manifests)
        self._payload(manifests, fetched)
        self._tags(tag_manifests)
        self._collisions()
        return BagSummary(
            version=self.version,
            manifests=self._algorithms(_MANIFEST),
            tag_manifests=self._algorithms(_TAG_MANIFEST),
            tag_files=self.tag_files,
            payload={p: e.size for p, e in self.payload.items()},
            info=info,
            serialization=serialization,
            tags=self.tags,
            name_mismatch=name_mismatch,
        )

    def tags(self, path: str) -> list[tuple[str, str]] | None:
        """The tag lines of the tag file ``path``, parsed once; None when the bag
        has no such file, and no lines when it cannot be read or decoded."""
        if path not in self._parsed:
            if path not in self.tag_files:
                self._parsed[path] = None
            else:
                text = self._text(path)
                self._parsed[path] = parse_tags(path, text, self.report) if text else []
        return self._parsed[path]

    def _text(self, path: str) -> str | None:
        try:
            data = self.read_tag(path)
        except OSError as exc:
            self.report.error(path, f"could not be read: {exc}")
            return None
        text = decode_text(path, data, self.encoding, self.report)
        if text is not None and _RFC_TAG_FILE.fullmatch(path):
            check_last_line(path, text, self.report)
        return text

    def _bagit_txt(self) -> None:
        report = self.report
        if "bagit.txt" not in self.entries:
            report.error("bagit.txt", "missing (required by BagIt)")
            return
        try:
            data = self.read_tag("bagit.txt")
        except OSError as exc:
            report.error("bagit.txt", f"could not be read: {exc}")
            return
        if data.startswith(codecs.BOM_UTF8):
            report.error("bagit.txt", "must not start with a byte-order mark")
            data = data[len(codecs.BOM_UTF8) :]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.error("bagit.txt", f"not valid UTF-8: byte {exc.start} cannot be decoded")
            return
        check_declaration(text, report)
        check_last_line("bagit.txt", text, report)
        values: dict[str, list[str]] = {}
        for label, value in parse_tags("bagit.txt", text, report):
            values.setdefault(label, []).append(value)
        for label in ("BagIt-Version", "Tag-File-Character-Encoding"):
            if label not in values:
                report.error("bagit.txt", f"required tag {label} is missing")
            elif len(values[label]) > 1:
                report.error("bagit.txt", f"tag {label} appears {len(values[label])} times")
        version = values.get("BagIt-Version", [""])[0]
        match = _VERSION.fullmatch(version)
        if version and match is None:
            report.error("bagit.txt", f"BagIt-Version must be MAJOR.MINOR, not {shown(version)}")
        elif match is not None:
            self.version = (int(match.group(1)), int(match.group(2)))
            if not OLDEST <= self.version <= NEWEST:
                report.error("bagit.txt", f"unsupported BagIt version {version} (0.93 to 1.0)")
        encoding = values.get("Tag-File-Character-Encoding", ["UTF-8"])[0]
        try:
            codec = codecs.lookup(encoding)
        except LookupError:
            report.error("bagit.txt", f"unknown Tag-File-Character-Encoding {shown(encoding)}")
        else:
            self.encoding = encoding
            if codec.name != "utf-8":
                # RFC 8493 section 2.1.1: "ENCODING SHOULD be "UTF-8"", and 2.3: "The
                # use of UTF-8 for text tag files is strongly RECOMMENDED."
                report.warn(
                    "bagit.txt",
                    f"Tag-File-Character-Encoding is {shown(encoding)}; RFC 8493 says it "
                    "should be UTF-8",
                )

    def _oxum(self, info_name: str, info: list[tuple[str, str]]) -> None:
        values = reserved_values(info).get("Payload-Oxum", [])
        if not values:
            return
        if len(values) > 1:
            # RFC 8493 section 2.2.2: "This metadata element MUST NOT be repeated."
            self.report.error(
                info_name,
                f"Payload-Oxum appears {len(values)} times; RFC 8493 allows it once "
                "(the first is checked)",
            )
        match = _OXUM.fullmatch(values[0])
        if match is None:
            self.report.error(
                info_name, f"malformed Payload-Oxum {shown(values[0])}: expected OCTETS.STREAMCOUNT"
            )
            return
        found = (self.report.payload_bytes, self.report.payload_files)
        if (int(match.group(1)), int(match.group(2))) != found:
            self.report.error(
                info_name,
                f"Payload-Oxum {values[0]} does not match the payload: "
                f"{found[0]} bytes in {found[1]} files",
            )

    def _reserved(self, info_name: str, info: list[tuple[str, str]]) -> None:
        """RFC 8493 section 2.2.2's SHOULDs on the reserved bag-info labels, as warnings."""
        check_reserved(info_name, info, self.report)

    def _algorithms(self, pattern: re.Pattern[str]) -> frozenset[str]:
        return frozenset(m.group(1) for p in self.tag_files if (m := pattern.fullmatch(p)))

    def _manifests(self, pattern: re.Pattern[str], kind: str) -> list[_Manifest]:
        manifests = []
        for name in sorted(self.tag_files):
            match = pattern.fullmatch(name)
            if match is None:
                continue
            algorithm = match.group(1)
            if not check_algorithm(name, algorithm, kind, self.report):
                continue
            text = self._text(name)
            if text is None:
                continue
            manifests.append(_Manifest(name, algorithm, self._lines(name, text)))
        return manifests

    def _lines(self, name: str, text: str) -> dict[str, ManifestLine]:
        lines: dict[str, ManifestLine] = {}
        for line in parse_manifest(name, text, self.rules, self.report):
            first = lines.get(line.path)
            if first is None:
                lines[line.path] = line
                continue
            again = f"is listed again (first on line {first.number})"
            where = f"line {line.number}: {shown(line.path)} {again}"
            if first.digest != line.digest:
                self.report.error(name, f"{where} with a different digest")
            elif self.rules >= (1, 0):
                self.report.error(name, where)
            else:
                self.report.warn(name, where)
        return lines

    def _fetch(self, manifests: list[_Manifest]) -> set[str]:
        if "fetch.txt" not in self.entries:
            return set()
        text = self._text("fetch.txt")
        if text is None:
            return set()
        paths = set()
        for line in parse_fetch(text, self.rules, self.report):
            paths.add(self._fetch_line(line, manifests))
        paths.discard("")
        return paths

    def _fetch_line(self, line: FetchLine, manifests: list[_Manifest]) -> str:
        report, where = self.report, f"line {line.number}"
        url = urlparse(line.url)
        if not (url.scheme and url.netloc) and url.scheme != "file":
            report.error("fetch.txt", f"{where}: malformed URL {shown(line.url)}")
        if line.length != "-" and not line.length.isdigit():
            report.error(
                "fetch.txt",
                f"{where}: the length must be a number of bytes or '-', not {shown(line.length)}",
            )
        path = posixpath.normpath(line.path)
        rule = escape_rule(path)
        if rule is not None:
            report.error("fetch.txt", f"{where}: the path {shown(path)} {rule}")
            return ""
        if not path.startswith("data/"):
            report.error(
                "fetch.txt",
                f"{where}: the path '{shown(path)}' is not a payload file (not under data/)",
            )
            return ""
        absent = [m.name for m in manifests if path not in m.lines]
        if absent:
            report.error(path, f"listed in fetch.txt but not in {', '.join(absent)}")
        present = self.payload.get(path)
        if present is not None and line.length.isdigit() and int(line.length) != present.size:
            # RFC 8493 section 2.2.3: "length is the number of octets in the file (or
            # "-", to leave it unspecified)"; 5.3: it "cannot be guaranteed to match".
            report.warn(
                "fetch.txt",
                f"{where}: the length {line.length} is not the size of {shown(path)} "
                f"({present.size} bytes)",
            )
        return path

    def _payload(self, manifests: list[_Manifest], fetched: set[str]) -> None:
        report = self.report
        listed: dict[str, set[str]] = {}
        missing: dict[str, list[str]] = {}
        for manifest in manifests:
            for line in manifest.lines.values():
                if not line.path.startswith("data/"):
                    report.error(
                        manifest.name,
                        f"line {line.number}: the path '{shown(line.path)}' is not a payload file "
                        "(not under data/)",
                    )
                elif line.path in self.payload:
                    listed.setdefault(line.path, set()).add(manifest.name)
                    self._compare(line.path, manifest, line)
                else:
                    missing.setdefault(line.path, []).append(manifest.name)
        names = _PayloadNames(self.payload)
        for path, in_manifests in missing.items():
            where = ", ".join(in_manifests)
            near = names.near(path)
            if near is not None:
                # bagit-python fails these too: no file has the manifest's exact name.
                listed.setdefault(near, set()).update(in_manifests)
                report.error(
                    shown(path),
                    f"listed in {where}, but the payload file's name {shown(near)} differs "
                    "in Unicode normalisation (NFC/NFD): rename one to match",
                )
                continue
            why = " (listed in fetch.txt: the bag must be fetched first)" if path in fetched else ""
            report.error(shown(path), f"listed in {where} but missing from the payload{why}")
        for path in sorted(self.payload):
            absent = [m.name for m in manifests if m.name not in listed.get(path, ())]
            if absent:
                report.error(shown(path), f"payload file not listed in {', '.join(absent)}")

    def _tags(self, tag_manifests: list[_Manifest]) -> None:
        if self.rules >= (0, 97):  # tag manifests came with 0.97
            check_tag_manifests(
                self._algorithms(_MANIFEST),
                self._algorithms(_TAG_MANIFEST),
                {m.name: m.lines.keys() for m in tag_manifests},
                self.report,
            )
        for manifest in tag_manifests:
            for line in manifest.lines.values():
                if line.path not in self.entries:
                    self.report.error(
                        shown(line.path), f"listed in {manifest.name} but missing from the bag"
                    )
                else:
                    self._compare(line.path, manifest, line)

    def _compare(self, path: str, manifest: _Manifest, line: ManifestLine) -> None:
        if self.fast:
            return
        algorithm = manifest.algorithm
        actual = self.entries[path].digests.get(algorithm)
        expected = line.digest.lower()
        if actual is None:
            self.report.error(
                shown(path),
                f"no {algorithm} digest was recorded, so {manifest.name} cannot be checked",
            )
        elif actual.lower() != expected:
            self.report.error(
                shown(path),
                f"{algorithm} digest mismatch: {manifest.name} says {shown(expected)}, "
                f"file has {actual.lower()}",
            )

    def _collisions(self) -> None:
        groups: dict[str, list[str]] = {}
        for path in sorted(self.payload):
            key = unicodedata.normalize("NFC", path).casefold()
            groups.setdefault(key, []).append(path)
        for paths in groups.values():
            first = paths[0]
            for other in paths[1:]:
                if unicodedata.normalize("NFC", first) == unicodedata.normalize("NFC", other):
                    how = "only by Unicode normalisation (NFC/NFD)"
                else:
                    how = "only by letter case"
                self.report.warn(
                    shown(other),
                    f"differs from {shown(first)} {how}: the two collide on some file systems",
                )
