"""A pipeline's data package declaration: which files make each action's package.

The shape is the one pipeline authors already write in ``pipeline.yml``::

    pipeline: svWGS
    package:
      find:
        uploadType: svWGS
        extends: align            # optional: inherit file types from align's package
        extraPushFiles:           # optional: pushed beside the package
          - $DATA_FILE_PREFIX.find.log
        files:
          calls:
            type: tab-delimited
            file: $DATA_FILE_PREFIX.calls.txt.gz
            maxSize: 100M         # optional
            description: kept     # any other key is kept in package.yml

The whole file is checked for its shape when it is read, so a typo in any action
is reported; variables are expanded only for the action being packed (and the
actions it extends), so another action's variables need not be set.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagebox.errors import InvalidName
from stagebox.names import clean_component
from stagebox.packages.yamlfile import LinedDict, Variables, YamlError, load

ACTION_KEYS = ("uploadType", "extends", "extraPushFiles", "files")
FILE_KEYS_REQUIRED = ("type", "file")
SCALARS = (str, int, float, bool)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(value: object) -> int:
    """Bytes from ``1048576``, ``512K``, ``10M``, ``1.5G``, ``10MiB`` (binary) or ``10MB``
    (decimal). A bare letter is binary, as in job resources (``2G``)."""
    if isinstance(value, bool):
        raise ValueError("a size, not true/false")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a number of bytes or a size like 10M")
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size like 1048576, 512K, 10M, 1.5G or 10MB")
    number, unit, binary, byte = match.groups()
    base = 1000 if (byte and not binary and unit) else 1024
    return int(float(number) * base ** _POWERS[unit.lower()])


@dataclass(frozen=True)
class FileSpec:
    """One file type of an action, as declared (strings not yet expanded)."""

    file_type: str
    type: str
    file: str
    max_size: object | None
    extra: dict[str, Any]
    line: int
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


@dataclass(frozen=True)
class Action:
    name: str
    upload_type: str
    extends: str | None
    extra_push_files: tuple[tuple[str, int], ...]  # (path, line)
    files: dict[str, FileSpec]
    line: int
    upload_type_line: int


@dataclass(frozen=True)
class ResolvedFile:
    """A file type of the action being packed, with variables expanded."""

    file_type: str
    path: Path
    fields: dict[str, Any]  # type and the kept extra keys, for package.yml
    max_size: int | None


@dataclass(frozen=True)
class ResolvedAction:
    pipeline: str
    action: str
    upload_type: str
    extends: str | None
    files: dict[str, ResolvedFile]
    extra_push_files: tuple[Path, ...]


@dataclass
class Declaration:
    source: Path
    pipeline: str
    actions: dict[str, Action] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Declaration:
        return _Reader(path).declaration(load(path))

    def action(self, name: str) -> Action:
        if name not in self.actions:
            known = ", ".join(sorted(self.actions)) or "none"
            raise YamlError(
                self.source, 0, f"package.{name}", f"no such action (declared: {known})"
            )
        return self.actions[name]

    def resolve(self, name: str, variables: Variables) -> ResolvedAction:
        """The action's package with ``$VAR`` expanded; an undefined one is an error."""
        action = self.action(name)
        where = f"package.{name}"

        def expand(value: str, line: int, key: str) -> str:
            return variables.expand(value, self.source, line, key)

        files = {}
        for spec in action.files.values():
            key = f"{where}.files.{spec.file_type}"
            fields: dict[str, Any] = {
                "type": expand(spec.type, spec.line_of("type"), f"{key}.type")
            }
            for extra_key, value in spec.extra.items():
                fields[extra_key] = (
                    expand(value, spec.line_of(extra_key), f"{key}.{extra_key}")
                    if isinstance(value, str)
                    else value
                )
            max_size = None
            if spec.max_size is not None:
                raw = spec.max_size
                if isinstance(raw, str):
                    raw = expand(raw, spec.line_of("maxSize"), f"{key}.maxSize")
                try:
                    max_size = parse_size(raw)
                except ValueError as exc:
                    line = spec.line_of("maxSize")
                    raise YamlError(self.source, line, f"{key}.maxSize", str(exc)) from None
            path = expand(spec.file, spec.line_of("file"), f"{key}.file")
            _check_path(path, self.source, spec.line_of("file"), f"{key}.file")
            files[spec.file_type] = ResolvedFile(spec.file_type, Path(path), fields, max_size)
        extras = []
        for i, (raw_path, line) in enumerate(action.extra_push_files):
            key = f"{where}.extraPushFiles[{i}]"
            path = expand(raw_path, line, key)
            _check_path(path, self.source, line, key)
            extras.append(Path(path))
        line = action.upload_type_line
        upload_type = expand(action.upload_type, line, f"{where}.uploadType")
        _check_name(upload_type, self.source, line, f"{where}.uploadType")
        return ResolvedAction(
            pipeline=self.pipeline,
            action=name,
            upload_type=upload_type,
            extends=action.extends,
            files=files,
            extra_push_files=tuple(extras),
        )


def _check_name(value: str, source: Path, line: int, key: str) -> None:
    try:
        clean_component(value, key)
    except InvalidName as exc:
        raise YamlError(source, line, key, exc.rule) from None


def _check_path(value: str, source: Path, line: int, key: str) -> None:
    """A local path: any directory, but a file name that is safe where it lands."""
    if not value:
        raise YamlError(source, line, key, "must not be empty")
    if value.endswith("/"):
        raise YamlError(source, line, key, f"names a directory, not a file: {value!r}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise YamlError(source, line, key, f"must not contain control characters: {value!r}")
    _check_name(Path(value).name, source, line, key)


class _Reader:
    """Checks the shape of a declaration, naming the key and line of each problem."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, parent: LinedDict | None, key: str, path: str, rule: str) -> YamlError:
        line = parent.line_of(key) if parent is not None else 0
        return YamlError(self.source, line, path, rule)

    def mapping(self, parent: LinedDict, key: str, path: str) -> LinedDict:
        value = parent[key]
        if not isinstance(value, LinedDict):
            raise self.fail(parent, key, path, f"must be a mapping, not {_kind(value)}")
        return value

    def string(self, parent: LinedDict, key: str, path: str) -> str:
        value = parent[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(parent, key, path, f"must be a string, not {_kind(value)}")
        text = str(value)
        if not text.strip():
            raise self.fail(parent, key, path, "must not be empty")
        return text

    def declaration(self, doc: object) -> Declaration:
        if not isinstance(doc, LinedDict):
            raise YamlError(self.source, 0, "", f"must be a mapping, not {_kind(doc)}")
        for key in ("pipeline", "package"):
            if key not in doc:
                raise YamlError(self.source, doc.line, key, "is required")
        pipeline = self.string(doc, "pipeline", "pipeline")
        _check_name(pipeline, self.source, doc.line_of("pipeline"), "pipeline")
        package = self.mapping(doc, "package", "package")
        if not package:
            raise self.fail(doc, "package", "package", "declares no action")
        declaration = Declaration(self.source, pipeline)
        for name in package:
            if not isinstance(name, str):
                raise self.fail(package, name, f"package.{name}", "an action name must be a string")
            _check_name(name, self.source, package.line_of(name), f"package.{name}")
            declaration.actions[name] = self.action(package, name)
        for action in declaration.actions.values():
            self.check_extends(declaration, package, action)
        return declaration

    def action(self, package: LinedDict, name: str) -> Action:
        where = f"package.{name}"
        body = self.mapping(package, name, where)
        for key in body:
            if key not in ACTION_KEYS:
                near = difflib.get_close_matches(str(key), ACTION_KEYS, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise self.fail(
                    body,
                    key,
                    f"{where}.{key}",
                    f"unknown key{hint}; allowed: {', '.join(ACTION_KEYS)}",
                )
        if "uploadType" not in body:
            raise YamlError(self.source, body.line, f"{where}.uploadType", "is required")
        upload_type = self.string(body, "uploadType", f"{where}.uploadType")
        extends = None
        if body.get("extends") is not None:
            extends = self.string(body, "extends", f"{where}.extends")
        extras: list[tuple[str, int]] = []
        if body.get("extraPushFiles") is not None:
            raw = body["extraPushFiles"]
            if not isinstance(raw, list):
                raise self.fail(
                    body, "extraPushFiles", f"{where}.extraPushFiles",
                    f"must be a list of paths, not {_kind(raw)}",
                )  # fmt: skip
            line = body.line_of("extraPushFiles")
            for i, item in enumerate(raw):
                if not isinstance(item, str) or not item:
                    raise YamlError(
                        self.source, line, f"{where}.extraPushFiles[{i}]", "must be a path"
                    )
                extras.append((item, line))
        files: dict[str, FileSpec] = {}
        if body.get("files") is not None:
            declared = self.mapping(body, "files", f"{where}.files")
            for file_type in declared:
                files[str(file_type)] = self.file(declared, file_type, f"{where}.files.{file_type}")
        if not files and extends is None:
            raise YamlError(
                self.source, body.line, f"{where}.files", "declares no file and extends no action"
            )
        return Action(
            name, upload_type, extends, tuple(extras), files, body.line, body.line_of("uploadType")
        )

    def file(self, declared: LinedDict, file_type: Any, where: str) -> FileSpec:
        if not isinstance(file_type, str):
            raise self.fail(declared, file_type, where, "a file type must be a string")
        _check_name(file_type, self.source, declared.line_of(file_type), where)
        body = self.mapping(declared, file_type, where)
        for key in FILE_KEYS_REQUIRED:
            if key not in body:
                raise YamlError(self.source, body.line, f"{where}.{key}", "is required")
        type_ = self.string(body, "type", f"{where}.type")
        file = self.string(body, "file", f"{where}.file")
        extra: dict[str, Any] = {}
        for key, value in body.items():
            if key in ("type", "file", "maxSize", "name", "size", "sha256"):
                if key in ("name", "size", "sha256"):
                    raise self.fail(
                        body, key, f"{where}.{key}", "is written by stagebox pack, not declared"
                    )
                continue
            if not isinstance(key, str):
                raise self.fail(body, key, f"{where}.{key}", "a key must be a string")
            extra[key] = _plain(value)
        lines = {str(k): body.line_of(k) for k in body}
        return FileSpec(file_type, type_, file, body.get("maxSize"), extra, body.line, lines)

    def check_extends(self, declaration: Declaration, package: LinedDict, action: Action) -> None:
        seen = [action.name]
        current = action
        while current.extends is not None:
            where = f"package.{current.name}.extends"
            body = package[current.name]
            line = body.line_of("extends") if isinstance(body, LinedDict) else 0
            if current.extends not in declaration.actions:
                known = ", ".join(sorted(declaration.actions))
                raise YamlError(
                    self.source, line, where, f"names no action: {current.extends!r} ({known})"
                )
            if current.extends in seen:
                chain = " -> ".join([*seen, current.extends])
                raise YamlError(self.source, line, where, f"extends in a circle: {chain}")
            seen.append(current.extends)
            current = declaration.actions[current.extends]


def _plain(value: Any) -> Any:
    """A kept value as plain dicts and lists (package.yml is written from it)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _kind(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
