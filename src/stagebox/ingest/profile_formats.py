"""Reading BagIt profile files: BagIt-Profiles JSON and DART's profile JSON, into one model.

Two formats describe the same rules:

- **BagIt-Profiles** (https://github.com/bagit-profiles/bagit-profiles-specification,
  up to 1.4.0): ``BagIt-Profile-Info``, ``Bag-Info``, ``Manifests-Required`` ...
- **DART** (APTrust's bagging tool; APTrust and BTR publish their profiles in
  it): ``bagItProfileInfo``, ``acceptBagItVersion``, ``manifestsRequired``,
  ``tags: [{tagFile, tagName, required, values, emptyOk}]``,
  ``tarDirMustMatchName`` ...

:func:`profile_fields` tells them apart by their keys and returns the keyword
arguments of :class:`stagebox.ingest.profiles.Profile`. A file that is
neither, or that holds a key the reader does not know, is refused naming the
keys: an unread rule must never pass as no rule. Every refusal is an
:class:`InvalidInput` naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stagebox.errors import InvalidInput

SERIALIZATION_RULES = ("forbidden", "required", "optional")


@dataclass(frozen=True)
class TagRule:
    """What a profile says about one tag of one tag file.

    ``required``: the tag must be there, with a value unless ``empty_ok``.
    ``values``: when given, every value must be one of them (an empty value
    only where ``empty_ok``). ``repeatable`` False: at most once.
    ``recommended``: a warning when it is missing.
    """

    required: bool = False
    values: tuple[str, ...] | None = None
    repeatable: bool = True
    empty_ok: bool = False
    recommended: bool = False


# BagIt-Profiles 1.4.0's top-level keys, and its keys of one Bag-Info entry.
# "recommended" is not in the specification, but the BTR profile uses it.
BAGIT_PROFILES_KEYS = frozenset(
    {
        "BagIt-Profile-Info",
        "Bag-Info",
        "Manifests-Required",
        "Manifests-Allowed",
        "Allow-Fetch.txt",
        "Fetch.txt-Required",
        "Data-Empty",
        "Serialization",
        "Accept-Serialization",
        "Accept-BagIt-Version",
        "Tag-Manifests-Required",
        "Tag-Manifests-Allowed",
        "Tag-Files-Required",
        "Tag-Files-Allowed",
        "Payload-Files-Required",
        "Payload-Files-Allowed",
    }
)
BAG_INFO_RULE_KEYS = frozenset({"required", "values", "repeatable", "description", "recommended"})

# DART's keys. The rules are read; the rest describe the profile or DART's own
# bookkeeping (its editor's state, a tag's default and help text) and decide nothing.
DART_RULE_KEYS = frozenset(
    {
        "acceptBagItVersion",
        "acceptSerialization",
        "allowFetchTxt",
        "manifestsRequired",
        "manifestsAllowed",
        "tagManifestsRequired",
        "tagManifestsAllowed",
        "tagFilesAllowed",
        "tagFilesRequired",
        "serialization",
        "tags",
        "tarDirMustMatchName",
    }
)
DART_INFO_KEYS = frozenset(
    {"id", "name", "description", "bagItProfileInfo", "baseProfileId", "isBuiltIn"}
    | {"userCanDelete", "required", "errors"}
)
DART_TAG_RULE_KEYS = frozenset({"tagFile", "tagName", "required", "values", "emptyOk"})
DART_TAG_INFO_KEYS = frozenset(
    {"id", "defaultValue", "userValue", "help", "errors"}
    | {"isBuiltIn", "isUserAddedFile", "isUserAddedTag", "wasAddedForJob"}
)
# DART's bagItProfileInfo, named as BagIt-Profile-Info names the same facts.
DART_PROFILE_INFO = {
    "bagItProfileIdentifier": "BagIt-Profile-Identifier",
    "bagItProfileVersion": "BagIt-Profile-Version",
    "contactEmail": "Contact-Email",
    "contactName": "Contact-Name",
    "externalDescription": "External-Description",
    "sourceOrganization": "Source-Organization",
    "version": "Version",
}


def profile_format(data: Mapping[str, Any]) -> str:
    """``"bagit-profiles"`` or ``"dart"``, by the keys ``data`` holds; InvalidInput otherwise."""
    keys = set(data)
    if keys & BAGIT_PROFILES_KEYS and not keys & (DART_RULE_KEYS | DART_INFO_KEYS):
        return "bagit-profiles"
    if keys & DART_RULE_KEYS and not keys & BAGIT_PROFILES_KEYS:
        return "dart"
    return ""


def profile_fields(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The :class:`Profile` fields ``data`` describes; InvalidInput names ``source``
    and the key that is unknown, of the wrong type, or contradicts another."""
    if not isinstance(data, Mapping):
        raise InvalidInput(source, "a profile must be a JSON object")
    kind = profile_format(data)
    if kind == "bagit-profiles":
        return _bagit_profiles(_Fields(data, source, BAGIT_PROFILES_KEYS))
    if kind == "dart":
        return _dart(_Fields(data, source, DART_RULE_KEYS | DART_INFO_KEYS))
    known = sorted(set(data) & (BAGIT_PROFILES_KEYS | DART_RULE_KEYS))
    if known:
        raise InvalidInput(
            source,
            "mixes BagIt-Profiles keys and DART profile keys "
            f"({', '.join(known)}); a profile is one or the other",
        )
    keys = ", ".join(sorted(data)[:8])
    shown = f"its keys: {keys}" if keys else "it has no keys at all"
    raise InvalidInput(
        source,
        f"is neither a BagIt-Profiles profile nor a DART profile ({shown}); "
        'an empty profile is written as {"BagIt-Profile-Info": {}}',
    )


def _bagit_profiles(read: _Fields) -> dict[str, Any]:
    return {
        "info": read.strings_map("BagIt-Profile-Info"),
        "tags": {"bag-info.txt": read.bag_info("Bag-Info")},
        "manifests_required": read.strings("Manifests-Required") or (),
        "manifests_allowed": read.strings("Manifests-Allowed"),
        "tag_manifests_required": read.strings("Tag-Manifests-Required") or (),
        "tag_manifests_allowed": read.strings("Tag-Manifests-Allowed"),
        "tag_files_required": read.strings("Tag-Files-Required") or (),
        "tag_files_allowed": read.strings("Tag-Files-Allowed"),
        "payload_files_required": read.strings("Payload-Files-Required") or (),
        "payload_files_allowed": read.strings("Payload-Files-Allowed"),
        "allow_fetch": read.boolean("Allow-Fetch.txt", True),
        "fetch_required": read.boolean("Fetch.txt-Required", False),
        "data_empty": read.boolean("Data-Empty", False),
        "serialization": read.choice("Serialization", SERIALIZATION_RULES, "optional"),
        "accept_serialization": read.strings("Accept-Serialization") or (),
        "accept_bagit_version": read.strings("Accept-BagIt-Version"),
    }


def _dart(read: _Fields) -> dict[str, Any]:
    info_source = read.object("bagItProfileInfo")
    unknown = sorted(set(info_source) - set(DART_PROFILE_INFO))
    if unknown:
        raise read.bad("bagItProfileInfo", f"has keys this reader does not know: {unknown}")
    info = {}
    for key, value in info_source.items():
        if not isinstance(value, str):
            raise read.bad(f"bagItProfileInfo.{key}", "must be a string")
        if value:
            info[DART_PROFILE_INFO[key]] = value
    name = read.optional_string("name")
    allowed_files = read.strings("tagFilesAllowed")
    return {
        "title": name or None,
        "info": info,
        "tags": read.dart_tags("tags"),
        "manifests_required": read.strings("manifestsRequired") or (),
        "manifests_allowed": read.strings("manifestsAllowed"),
        "tag_manifests_required": read.strings("tagManifestsRequired") or (),
        "tag_manifests_allowed": read.strings("tagManifestsAllowed"),
        "tag_files_required": read.strings("tagFilesRequired") or (),
        # DART writes an empty pattern beside "*" ("*", ""): it matches nothing.
        "tag_files_allowed": (
            None if allowed_files is None else tuple(p for p in allowed_files if p)
        ),
        "allow_fetch": read.boolean("allowFetchTxt", True),
        "serialization": read.choice("serialization", SERIALIZATION_RULES, "optional"),
        "accept_serialization": read.strings("acceptSerialization") or (),
        "accept_bagit_version": read.strings("acceptBagItVersion"),
        "tar_dir_must_match_name": read.boolean("tarDirMustMatchName", False),
    }


class _Fields:
    """Typed reads of a profile's keys; an unknown key or a wrong type is InvalidInput."""

    def __init__(self, data: Mapping[str, Any], source: str, known: frozenset[str]) -> None:
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(source, f"has keys this reader does not know: {unknown}")
        self._data = data
        self._source = source

    def bad(self, key: str, rule: str) -> InvalidInput:
        return InvalidInput(f"{self._source}: {key}", rule)

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not _strings(value):
            raise self.bad(key, "must be a list of strings")
        return tuple(value)

    def optional_string(self, key: str) -> str:
        value = self._data.get(key) or ""
        if not isinstance(value, str):
            raise self.bad(key, "must be a string")
        return value

    def object(self, key: str) -> dict[str, Any]:
        value = self._data.get(key, {})
        if not isinstance(value, dict):
            raise self.bad(key, "must be an object")
        return value

    def strings_map(self, key: str) -> dict[str, str]:
        value = self._data.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.bad(key, "must be an object of strings")
        return dict(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._data.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, "must be true or false")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self._data.get(key, default)
        if value not in choices:
            raise self.bad(key, f"must be one of {', '.join(choices)}")
        return str(value)

    def bag_info(self, key: str) -> dict[str, TagRule]:
        value = self._data.get(key, {})
        if not isinstance(value, dict):
            raise self.bad(key, "must be an object of tag rules")
        rules = {}
        for label, spec in value.items():
            where = f"{key}.{label}"
            if not isinstance(spec, dict):
                raise self.bad(where, "must be an object")
            unknown = sorted(set(spec) - BAG_INFO_RULE_KEYS)
            if unknown:
                raise self.bad(where, f"has keys this reader does not know: {unknown}")
            flags = {}
            defaults = (("required", False), ("repeatable", True), ("recommended", False))
            for flag, default in defaults:
                flags[flag] = spec.get(flag, default)
                if not isinstance(flags[flag], bool):
                    raise self.bad(f"{where}.{flag}", "must be true or false")
            values = spec.get("values")
            if values is not None and not _strings(values):
                raise self.bad(f"{where}.values", "must be a list of strings")
            if not isinstance(spec.get("description", ""), str):
                raise self.bad(f"{where}.description", "must be a string")
            rules[label] = TagRule(
                required=flags["required"],
                values=tuple(values) if values else None,
                repeatable=flags["repeatable"],
                recommended=flags["recommended"],
            )
        return rules

    def dart_tags(self, key: str) -> dict[str, dict[str, TagRule]]:
        value = self._data.get(key, [])
        if not isinstance(value, list):
            raise self.bad(key, "must be a list of tag definitions")
        rules: dict[str, dict[str, TagRule]] = {}
        for number, spec in enumerate(value):
            where = f"{key}[{number}]"
            if not isinstance(spec, dict):
                raise self.bad(where, "must be an object")
            unknown = sorted(set(spec) - DART_TAG_RULE_KEYS - DART_TAG_INFO_KEYS)
            if unknown:
                raise self.bad(where, f"has keys this reader does not know: {unknown}")
            tag_file, tag_name = spec.get("tagFile"), spec.get("tagName")
            for field, text in (("tagFile", tag_file), ("tagName", tag_name)):
                if not isinstance(text, str) or not text.strip():
                    raise self.bad(f"{where}.{field}", "must be a non-empty string")
            assert isinstance(tag_file, str) and isinstance(tag_name, str)
            where = f"{key}[{number}] ({tag_file} {tag_name})"
            for flag in ("required", "emptyOk"):
                if not isinstance(spec.get(flag, False), bool):
                    raise self.bad(f"{where}.{flag}", "must be true or false")
            values = spec.get("values") or []
            if not _strings(values):
                raise self.bad(f"{where}.values", "must be a list of strings")
            in_file = rules.setdefault(tag_file, {})
            if tag_name in in_file:
                raise self.bad(where, f"defines {tag_name} in {tag_file} a second time")
            in_file[tag_name] = TagRule(
                required=spec.get("required", False),
                values=tuple(values) or None,
                empty_ok=spec.get("emptyOk", False),
            )
        return rules


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
