"""BagIt profiles: the rules a repository adds to RFC 8493, and the ones stagebox ships.

A :class:`Profile` is read from a profile file in either format
:mod:`stagebox.ingest.profile_formats` knows (BagIt-Profiles JSON, DART's
profile JSON) and checks a :class:`BagSummary`, the facts
:func:`stagebox.ingest.bagit.validate` gathered about a bag, adding one error
per broken rule to a :class:`Report`; each names the file, the tag and the rule.

Shipped, by name (:data:`SHIPPED`): ``aptrust`` is APTrust's own profile file,
version 2.3, as APTrust publishes it; ``btr`` is BTR 1.0 as APTrust ships it.
``--profile none`` is RFC 8493 alone; ``--profile auto`` picks the shipped
profile that the bag's ``BagIt-Profile-Identifier`` names (:class:`AutoProfile`).

APTrust's rule on file names (no control characters, literal or escaped as
``\\u00XX``, and no no-break space: APTrust's ingest refuses them though its
profile file cannot say so) is the profile option ``plain_names``, on for any
profile that carries one of APTrust's identifiers.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from stagebox.errors import InvalidInput
from stagebox.ingest.bagtree import shown
from stagebox.ingest.problems import Report
from stagebox.ingest.profile_formats import TagRule, profile_fields

# The MIME types each serialization answers to in Accept-Serialization.
MIME_TYPES = {
    "tar": ("application/x-tar", "application/tar"),
    "tar.gz": ("application/gzip", "application/x-gzip", "application/tar+gzip"),
    "tar.bz2": ("application/x-bzip2", "application/x-bzip"),
    "tar.xz": ("application/x-xz",),
    "zip": ("application/zip", "application/x-zip", "application/x-zip-compressed"),
}
# The profiles stagebox ships, by name: the file, and the identifiers bags declare it by.
SHIPPED: dict[str, tuple[str, tuple[str, ...]]] = {
    "aptrust": (
        "aptrust-v2.3.json",
        (
            "https://raw.githubusercontent.com/APTrust/preservation-services/master/profiles/aptrust-v2.3.json",
            # 2.3 only adds a storage option to 2.2: a 2.2 bag is judged by 2.3.
            "https://raw.githubusercontent.com/APTrust/preservation-services/master/profiles/aptrust-v2.2.json",
        ),
    ),
    "btr": (
        "btr-v1.0.json",
        (
            "https://raw.githubusercontent.com/dpscollaborative/btr_bagit_profile/master/btr-bagit-profile.json",
            "https://github.com/dpscollaborative/btr_bagit_profile/releases/download/1.0/btr-bagit-profile.json",
            "https://github.com/dpscollaborative/btr_bagit_profile/blob/1.0/btr-bagit-profile.json",
        ),
    ),
}
CHOICES = (*SHIPPED, "auto", "none")
# Identifiers whose profiles turn on APTrust's file-name rule.
_APTRUST_IDS = frozenset(SHIPPED["aptrust"][1])
# What APTrust's ingest refuses in a name: Unicode control characters, the
# no-break space, and those control characters escaped as \u00XX.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\xa0]")
_ESCAPED_CONTROL = re.compile(r"\\[Uu]00[0189][0-9A-Fa-f]|\\[Uu]007[Ff]")
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
class Profile:
    """A parsed BagIt profile. ``name`` is how errors refer to it; ``tags`` holds
    the tag rules by tag file, then by label."""

    name: str
    title: str | None = None
    info: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, Mapping[str, TagRule]] = field(default_factory=dict)
    manifests_required: tuple[str, ...] = ()
    manifests_allowed: tuple[str, ...] | None = None
    tag_manifests_required: tuple[str, ...] = ()
    tag_manifests_allowed: tuple[str, ...] | None = None
    tag_files_required: tuple[str, ...] = ()
    tag_files_allowed: tuple[str, ...] | None = None
    payload_files_required: tuple[str, ...] = ()
    payload_files_allowed: tuple[str, ...] | None = None
    allow_fetch: bool = True
    fetch_required: bool = False
    data_empty: bool = False
    serialization: str = "optional"
    accept_serialization: tuple[str, ...] = ()
    accept_bagit_version: tuple[str, ...] | None = None
    tar_dir_must_match_name: bool = False
    plain_names: bool = False

    @property
    def identifier(self) -> str | None:
        return self.info.get("BagIt-Profile-Identifier")

    @property
    def bag_info(self) -> Mapping[str, TagRule]:
        return self.tags.get("bag-info.txt", {})

    @classmethod
    def default(cls) -> Profile:
        """APTrust's profile, version 2.3, as shipped (``--profile aptrust``)."""
        return cls.from_dict(*profile_json("aptrust"))

    @classmethod
    def load(cls, spec: str) -> Profile:
        """A profile file by path, or a shipped one by name (an existing file wins).

        Anything else is InvalidInput; so is ``auto`` or ``none`` (see :func:`choose`).
        """
        return cls.from_dict(*profile_json(spec))

    @classmethod
    def from_file(cls, path: Path) -> Profile:
        """Read a profile file; InvalidInput names the file and the bad key."""
        return cls.from_dict(_read_json(Path(path)), source=Path(path).stem)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> Profile:
        """A profile from parsed JSON in either format; InvalidInput names
        ``source`` and the key that is unknown, of the wrong type, or contradictory."""
        fields = profile_fields(data, source)
        profile = cls(name=source, **fields)
        if profile.identifier in _APTRUST_IDS:
            profile = replace(profile, plain_names=True)
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
        """Add an error to ``report`` for each rule ``bag`` breaks (a warning for
        each recommendation it does not follow)."""
        by = f"(profile {self.name})"
        if bag.name_mismatch:
            if self.tar_dir_must_match_name:
                report.error("", f"{bag.name_mismatch} {by}")
            else:
                report.warn("", bag.name_mismatch)
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
        self._check_files(bag, report, by)
        if "fetch.txt" in bag.tag_files and not self.allow_fetch:
            report.error("fetch.txt", f"fetch.txt is not allowed by the profile {self.name}")
        if self.fetch_required and "fetch.txt" not in bag.tag_files:
            report.error("fetch.txt", f"missing: required {by}")
        if self.data_empty and not (
            len(bag.payload) <= 1 and all(size == 0 for size in bag.payload.values())
        ):
            report.error("data/", f"the payload must be empty (at most one empty file) {by}")
        if self.plain_names:
            self._check_names(bag, report, by)
        for tag_file, rules in self.tags.items():
            self._check_tags(bag, tag_file, rules, report, by)
        declared = [v for label, v in bag.info or () if label == "BagIt-Profile-Identifier"]
        if self.identifier and declared and self.identifier not in declared:
            report.warn(
                "bag-info.txt",
                f"BagIt-Profile-Identifier {', '.join(declared)} is not this profile's "
                f"({self.identifier})",
            )

    def _check_files(self, bag: BagSummary, report: Report, by: str) -> None:
        for path in self.tag_files_required:
            if path not in bag.tag_files:
                report.error(path, f"missing: a tag file required {by}")
        if self.tag_files_allowed is not None:
            for path in sorted(bag.tag_files):
                if _BAGIT_TAG_FILE.fullmatch(path) or path in self.tags:
                    continue
                if not any(fnmatch.fnmatchcase(path, p) for p in self.tag_files_allowed):
                    report.error(path, f"tag file not allowed {by}")
        for pattern in self.payload_files_required:
            if not any(fnmatch.fnmatchcase(path, pattern) for path in bag.payload):
                report.error(pattern, f"missing: a payload file required {by}")
        if self.payload_files_allowed is not None:
            for path in sorted(bag.payload):
                if not any(fnmatch.fnmatchcase(path, p) for p in self.payload_files_allowed):
                    report.error(shown(path), f"payload file not allowed {by}")

    def _check_names(self, bag: BagSummary, report: Report, by: str) -> None:
        for path in sorted({*bag.payload, *bag.tag_files}):
            if _CONTROL.search(path):
                report.error(shown(path), f"the name holds a control character {by}")
            elif _ESCAPED_CONTROL.search(path):
                report.error(shown(path), f"the name holds an escaped control character {by}")

    def _check_tags(
        self,
        bag: BagSummary,
        tag_file: str,
        rules: Mapping[str, TagRule],
        report: Report,
        by: str,
    ) -> None:
        tags = bag.tags(tag_file)
        if tag_file == "bag-info.txt" and bag.info is not None:
            tags = bag.info
        if tags is None:
            needed = [label for label, rule in rules.items() if rule.required]
            if needed and tag_file != "bagit.txt":  # the validator reports a missing bagit.txt
                report.error(tag_file, f"missing: a tag file required {by} for {', '.join(needed)}")
            return
        values: dict[str, list[str]] = {}
        for label, value in tags:
            values.setdefault(label, []).append(value)
        for label, rule in rules.items():
            if tag_file == "bagit.txt" and label == "BagIt-Version" and self.accept_bagit_version:
                continue  # DART states this rule twice; _check_version reports it once
            found = values.get(label, [])
            if not found:
                if rule.required:
                    report.error(tag_file, f"required tag {label} is missing {by}")
                elif rule.recommended:
                    report.warn(tag_file, f"recommended tag {label} is missing {by}")
                continue
            if not rule.repeatable and len(found) > 1:
                report.error(
                    tag_file,
                    f"tag {label} appears {len(found)} times, but is not repeatable {by}",
                )
            for value in found:
                if not value.strip():
                    if rule.required and not rule.empty_ok:
                        report.error(tag_file, f"required tag {label} is empty {by}")
                elif rule.values and value not in rule.values:
                    report.error(
                        tag_file,
                        f"tag {label} has value {value!r}, which is not allowed {by}; "
                        f"allowed: {', '.join(repr(v) for v in rule.values)}",
                    )

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


@dataclass(frozen=True)
class AutoProfile:
    """``--profile auto``: each bag is judged by the shipped profile its
    bag-info.txt ``BagIt-Profile-Identifier`` names; a bag that names none
    stagebox ships is an error, never a bag judged by no profile."""

    name: str = "auto"

    def check(self, bag: BagSummary, report: Report) -> None:
        declared = [v for label, v in bag.info or () if label == "BagIt-Profile-Identifier"]
        if bag.name_mismatch and not declared:
            report.warn("", bag.name_mismatch)
        if not declared:
            report.error(
                "bag-info.txt",
                "--profile auto: the bag declares no BagIt-Profile-Identifier; "
                f"name its profile with --profile ({', '.join(SHIPPED)} or a file)",
            )
            return
        for name, (_file, identifiers) in SHIPPED.items():
            if declared[0] in identifiers:
                Profile.from_dict(*profile_json(name)).check(bag, report)
                return
        if bag.name_mismatch:
            report.warn("", bag.name_mismatch)
        report.error(
            "bag-info.txt",
            f"--profile auto: BagIt-Profile-Identifier {shown(declared[0])} names no profile "
            f"stagebox ships ({', '.join(SHIPPED)}); name its profile with --profile",
        )


AUTO_JSON = {"stagebox-profile": "auto"}


def choose(spec: str) -> Profile | AutoProfile | None:
    """What ``--profile`` names: a file, a shipped name, ``auto``, or ``none`` (None)."""
    data = job_profile(spec)
    return None if data is None else from_job(data, spec)


def job_profile(spec: str) -> dict[str, Any] | None:
    """The JSON an ingest job keeps for ``--profile spec``, so a resumed job judges
    by the same rules: the profile file's JSON and the name errors give it,
    :data:`AUTO_JSON` for ``auto``, None for ``none``. Refuses a bad profile now."""
    if spec == "none" and not Path(spec).is_file():
        return None
    if spec == "auto" and not Path(spec).is_file():
        return dict(AUTO_JSON)
    data, name = profile_json(spec)
    Profile.from_dict(data, name)
    return {"stagebox-profile": name, "json": data}


def from_job(data: Mapping[str, Any], fallback: str) -> Profile | AutoProfile:
    """The profile an ingest job kept (see :func:`job_profile`); a job made before
    names were kept holds the bare BagIt-Profiles JSON and goes by ``fallback``."""
    if data.get("stagebox-profile") == "auto" and "json" not in data:
        return AutoProfile()
    if "stagebox-profile" in data and isinstance(data.get("json"), dict):
        return Profile.from_dict(data["json"], str(data["stagebox-profile"]))
    return Profile.from_dict(data, fallback)


def _parse_version(text: str) -> tuple[int, int]:
    match = _VERSION.fullmatch(text)
    assert match is not None  # from_dict checked every accepted version
    return int(match.group(1)), int(match.group(2))


def profile_json(spec: str) -> tuple[dict[str, Any], str]:
    """A profile's parsed JSON and the name it goes by: a file by path, or a
    shipped one by its name (an existing file wins); anything else is InvalidInput."""
    path = Path(spec)
    if path.is_file():
        return _read_json(path), path.stem
    if spec in SHIPPED:
        name = SHIPPED[spec][0]
        text = resources.files("stagebox.ingest").joinpath(f"profiles/{name}").read_text()
        return _load_json(text, name), spec
    raise InvalidInput(
        "--profile", f"no such profile file {spec!r} (or use one of {', '.join(CHOICES)})"
    )


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
