"""BagIt profiles (https://github.com/bagit-profiles/bagit-profiles-specification).

A :class:`Profile` is read from the profile JSON and checks a
:class:`BagSummary`, the facts :func:`stagebox.ingest.bagit.validate` gathered
about a bag, adding one error per broken constraint to a :class:`Report`.
Supported: ``BagIt-Profile-Info``, ``Bag-Info`` (``required``, ``values``,
``repeatable``), ``Manifests-Required``/``-Allowed``,
``Tag-Manifests-Required``/``-Allowed``, ``Tag-Files-Required``/``-Allowed``,
``Allow-Fetch.txt``, ``Fetch.txt-Required``, ``Data-Empty``, ``Serialization``,
``Accept-Serialization`` and ``Accept-BagIt-Version``; other keys are ignored.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from stagebox.errors import InvalidInput
from stagebox.ingest.problems import Report

# The MIME types each serialization answers to in Accept-Serialization.
MIME_TYPES = {
    "tar": ("application/x-tar", "application/tar"),
    "tar.gz": ("application/gzip", "application/x-gzip", "application/tar+gzip"),
    "tar.bz2": ("application/x-bzip2", "application/x-bzip"),
    "tar.xz": ("application/x-xz",),
    "zip": ("application/zip", "application/x-zip", "application/x-zip-compressed"),
}
SHIPPED = ("aptrust",)
SERIALIZATION_RULES = ("forbidden", "required", "optional")
# Tag files BagIt itself defines; Tag-Files-Allowed speaks about the others.
_BAGIT_TAG_FILE = re.compile(
    r"bagit\.txt|bag-info\.txt|package-info\.txt|fetch\.txt|(tag)?manifest-[^/]+\.txt"
)
_VERSION = re.compile(r"(\d+)\.(\d+)")


@dataclass(frozen=True)
class BagSummary:
    """What a profile needs to know about a bag.

    ``version`` is the parsed BagIt-Version, None when bagit.txt is missing or
    unreadable. ``info`` holds bag-info.txt's ``(label, value)`` pairs in
    order, None when the bag has no bag-info.txt. ``payload`` maps each payload
    path (``data/...``) to its size; ``tag_files`` holds every other path.
    ``serialization`` is ``"tar"``, ``"tar.gz"``, ``"zip"``... or None for a
    directory. ``tags`` gives any tag file's ``(label, value)`` pairs (None
    when the bag has no such file). ``name_mismatch`` says how an archive's top
    directory differs from the archive's name, None when alike (or a directory).
    """

    version: tuple[int, int] | None
    manifests: frozenset[str]
    tag_manifests: frozenset[str]
    tag_files: frozenset[str]
    payload: Mapping[str, int]
    info: Sequence[tuple[str, str]] | None
    serialization: str | None
    tags: Callable[[str], Sequence[tuple[str, str]] | None] = lambda _path: None
    name_mismatch: str | None = None


@dataclass(frozen=True)
class TagRule:
    """One ``Bag-Info`` entry; ``values`` None or empty accepts any value."""

    required: bool = False
    values: tuple[str, ...] | None = None
    repeatable: bool = True


@dataclass(frozen=True)
class Profile:
    """A parsed BagIt profile. ``name`` is how errors refer to it."""

    name: str
    info: Mapping[str, str] = field(default_factory=dict)
    bag_info: Mapping[str, TagRule] = field(default_factory=dict)
    manifests_required: tuple[str, ...] = ()
    manifests_allowed: tuple[str, ...] | None = None
    tag_manifests_required: tuple[str, ...] = ()
    tag_manifests_allowed: tuple[str, ...] | None = None
    tag_files_required: tuple[str, ...] = ()
    tag_files_allowed: tuple[str, ...] | None = None
    allow_fetch: bool = True
    fetch_required: bool = False
    data_empty: bool = False
    serialization: str = "optional"
    accept_serialization: tuple[str, ...] = ()
    accept_bagit_version: tuple[str, ...] | None = None
    tar_dir_must_match_name: bool = False

    @property
    def identifier(self) -> str | None:
        return self.info.get("BagIt-Profile-Identifier")

    @classmethod
    def default(cls) -> Profile:
        """The shipped APTrust-like profile (``profiles/aptrust.json``), named "aptrust".

        BagIt 0.97 or 1.0, tarred (``application/x-tar``), no fetch.txt, a
        bag-info.txt naming its Source-Organization, an optional Access of
        Consortia, Institution or Restricted. APTrust itself takes md5 or
        sha256 manifests; this profile requires sha256, which stagebox
        computes anyway and which, unlike md5, still resists forgery. md5,
        sha1 and sha512 manifests are allowed beside it.
        """
        return cls.from_dict(*profile_json("aptrust"))

    @classmethod
    def load(cls, spec: str) -> Profile:
        """A profile JSON file by path, or the shipped one by its name ``aptrust``.

        An existing file wins over the name. Anything else is InvalidInput.
        """
        return cls.from_dict(*profile_json(spec))

    @classmethod
    def from_file(cls, path: Path) -> Profile:
        """Read a profile JSON file; InvalidInput names the file and the bad field."""
        return cls.from_dict(_read_json(Path(path)), source=Path(path).stem)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> Profile:
        """A profile from parsed JSON; InvalidInput names ``source`` and the bad field."""
        if not isinstance(data, Mapping):
            raise InvalidInput(source, "a profile must be a JSON object")
        read = _Fields(data, source)
        profile = cls(
            name=source,
            info=read.strings_map("BagIt-Profile-Info"),
            bag_info=read.tag_rules("Bag-Info"),
            manifests_required=read.strings("Manifests-Required") or (),
            manifests_allowed=read.strings("Manifests-Allowed"),
            tag_manifests_required=read.strings("Tag-Manifests-Required") or (),
            tag_manifests_allowed=read.strings("Tag-Manifests-Allowed"),
            tag_files_required=read.strings("Tag-Files-Required") or (),
            tag_files_allowed=read.strings("Tag-Files-Allowed"),
            allow_fetch=read.boolean("Allow-Fetch.txt", True),
            fetch_required=read.boolean("Fetch.txt-Required", False),
            data_empty=read.boolean("Data-Empty", False),
            serialization=read.choice("Serialization", SERIALIZATION_RULES, "optional"),
            accept_serialization=read.strings("Accept-Serialization") or (),
            accept_bagit_version=read.strings("Accept-BagIt-Version"),
        )
        for required, allowed, key in (
            (profile.manifests_required, profile.manifests_allowed, "Manifests-Allowed"),
            (
                profile.tag_manifests_required,
                profile.tag_manifests_allowed,
                "Tag-Manifests-Allowed",
            ),
        ):
            missing = [a for a in required if allowed is not None and a not in allowed]
            if missing:
                raise InvalidInput(f"{source}: {key}", f"must include the required {missing}")
        for version in profile.accept_bagit_version or ():
            if not _VERSION.fullmatch(version):
                raise InvalidInput(
                    f"{source}: Accept-BagIt-Version", f"{version!r} is not a M.N version"
                )
        return profile

    def check(self, bag: BagSummary, report: Report) -> None:
        """Add an error to ``report`` for each constraint ``bag`` breaks."""
        by = f"(profile {self.name})"
        self._check_version(bag, report, by)
        self._check_serialization(bag, report, by)
        for kind, present, required, allowed in (
            ("manifest", bag.manifests, self.manifests_required, self.manifests_allowed),
            ("tagmanifest", bag.tag_manifests, self.tag_manifests_required,
             self.tag_manifests_allowed),
        ):  # fmt: skip
            for alg in required:
                if alg not in present:
                    report.error(f"{kind}-{alg}.txt", f"missing: required {by}")
            for alg in sorted(present):
                if allowed is not None and alg not in allowed:
                    report.error(
                        f"{kind}-{alg}.txt",
                        f"{alg} is not allowed {by}; allowed: {', '.join(allowed)}",
                    )
        for path in self.tag_files_required:
            if path not in bag.tag_files:
                report.error(path, f"missing: a tag file required {by}")
        if self.tag_files_allowed is not None:
            for path in sorted(bag.tag_files):
                if _BAGIT_TAG_FILE.fullmatch(path):
                    continue
                if not any(fnmatch.fnmatchcase(path, p) for p in self.tag_files_allowed):
                    report.error(path, f"tag file not allowed {by}")
        if "fetch.txt" in bag.tag_files and not self.allow_fetch:
            report.error("fetch.txt", f"fetch.txt is not allowed by the profile {self.name}")
        if self.fetch_required and "fetch.txt" not in bag.tag_files:
            report.error("fetch.txt", f"missing: required {by}")
        if self.data_empty and not (
            len(bag.payload) <= 1 and all(size == 0 for size in bag.payload.values())
        ):
            report.error("data/", f"the payload must be empty (at most one empty file) {by}")
        self._check_bag_info(bag, report, by)

    def _check_version(self, bag: BagSummary, report: Report, by: str) -> None:
        if self.accept_bagit_version is None or bag.version is None:
            return
        accepted = {_parse_version(v) for v in self.accept_bagit_version}
        if bag.version not in accepted:
            report.error(
                "bagit.txt",
                f"BagIt version {bag.version[0]}.{bag.version[1]} is not accepted {by}; "
                f"accepted: {', '.join(self.accept_bagit_version)}",
            )

    def _check_serialization(self, bag: BagSummary, report: Report, by: str) -> None:
        if bag.serialization is None:
            if self.serialization == "required":
                wanted = ", ".join(self.accept_serialization) or "an archive"
                report.error("", f"the bag must be serialized ({wanted}), not a directory {by}")
            return
        if self.serialization == "forbidden":
            report.error("", f"the bag must be a directory, not a {bag.serialization} {by}")
            return
        mimes = MIME_TYPES.get(bag.serialization, ())
        if self.accept_serialization and not set(mimes) & set(self.accept_serialization):
            report.error(
                "",
                f"serialization {bag.serialization} ({', '.join(mimes) or 'unknown type'}) "
                f"is not accepted {by}; accepted: {', '.join(self.accept_serialization)}",
            )

    def _check_bag_info(self, bag: BagSummary, report: Report, by: str) -> None:
        if bag.info is None:
            if self.bag_info:
                report.error("bag-info.txt", f"missing: the profile's tags need it {by}")
            return
        values: dict[str, list[str]] = {}
        for label, value in bag.info:
            values.setdefault(label, []).append(value)
        for label, rule in self.bag_info.items():
            found = values.get(label, [])
            if not found:
                if rule.required:
                    report.error("bag-info.txt", f"required tag {label} is missing {by}")
                continue
            if rule.required and not any(v.strip() for v in found):
                report.error("bag-info.txt", f"required tag {label} is empty {by}")
            if not rule.repeatable and len(found) > 1:
                report.error(
                    "bag-info.txt",
                    f"tag {label} appears {len(found)} times, but is not repeatable {by}",
                )
            if rule.values:
                for value in found:
                    if value not in rule.values:
                        report.error(
                            "bag-info.txt",
                            f"tag {label} has value {value!r}, which is not allowed {by}; "
                            f"allowed: {', '.join(repr(v) for v in rule.values)}",
                        )
        declared = values.get("BagIt-Profile-Identifier", [])
        if self.identifier and declared and self.identifier not in declared:
            report.warn(
                "bag-info.txt",
                f"BagIt-Profile-Identifier {', '.join(declared)} is not this profile's "
                f"({self.identifier})",
            )


def _parse_version(text: str) -> tuple[int, int]:
    match = _VERSION.fullmatch(text)
    assert match is not None  # from_dict checked every accepted version
    return int(match.group(1)), int(match.group(2))


def profile_json(spec: str) -> tuple[dict[str, Any], str]:
    """A profile's parsed JSON and the name it goes by: a file by path, or the
    shipped one by its name (an existing file wins). The ingest worker keeps
    this JSON with each job; anything else is InvalidInput."""
    path = Path(spec)
    if path.is_file():
        return _read_json(path), path.stem
    if spec in SHIPPED:
        text = resources.files("stagebox.ingest").joinpath(f"profiles/{spec}.json").read_text()
        return _load_json(text, f"{spec}.json"), spec
    raise InvalidInput("--profile", f"no such profile file {spec!r} (or use {', '.join(SHIPPED)})")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(str(path), f"cannot read the profile: {exc}") from None
    return _load_json(text, str(path))


def _load_json(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(source, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(source, "a profile must be a JSON object")
    return data


class _Fields:
    """Typed reads of a profile's top-level keys; a wrong type is InvalidInput."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self._data = data
        self._source = source

    def _bad(self, key: str, rule: str) -> InvalidInput:
        return InvalidInput(f"{self._source}: {key}", rule)

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "must be a list of strings")
        return tuple(value)

    def strings_map(self, key: str) -> dict[str, str]:
        value = self._data.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._bad(key, "must be an object of strings")
        return dict(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._data.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "must be true or false")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self._data.get(key, default)
        if value not in choices:
            raise self._bad(key, f"must be one of {', '.join(choices)}")
        return str(value)

    def tag_rules(self, key: str) -> dict[str, TagRule]:
        value = self._data.get(key, {})
        if not isinstance(value, dict):
            raise self._bad(key, "must be an object of tag rules")
        rules = {}
        for label, spec in value.items():
            where = f"{key}.{label}"
            if not isinstance(spec, dict):
                raise self._bad(where, "must be an object")
            required = spec.get("required", False)
            repeatable = spec.get("repeatable", True)
            values = spec.get("values")
            if not isinstance(required, bool):
                raise self._bad(f"{where}.required", "must be true or false")
            if not isinstance(repeatable, bool):
                raise self._bad(f"{where}.repeatable", "must be true or false")
            if values is not None and (
                not isinstance(values, list) or not all(isinstance(v, str) for v in values)
            ):
                raise self._bad(f"{where}.values", "must be a list of strings")
            rules[label] = TagRule(required, tuple(values) if values else None, repeatable)
        return rules
