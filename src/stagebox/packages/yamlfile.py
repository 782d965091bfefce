"""YAML read safely, with the line of every mapping key, and ``$VAR`` expansion.

Declarations and job files are read with a subclass of ``yaml.SafeLoader`` (no
tags beyond plain YAML, so no object is ever constructed from the file) whose
mappings remember the line of each key. Errors can then name the file, the line
and the key path, which is what a pipeline author needs to fix a typo. A key
given twice is an error rather than PyYAML's silent last-one-wins.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from stagebox.errors import InvalidInput


class LinedDict(dict[Any, Any]):
    """A mapping read from YAML: ``line`` is where it starts, ``lines[key]`` where each key is."""

    line: int = 0
    lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.lines.get(key, self.line)


class _LineLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LinedDict:
        self.flatten_mapping(node)
        mapping = LinedDict()
        mapping.line = node.start_mark.line + 1
        mapping.lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if key in mapping:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first on line {mapping.lines[key]})",
                    key_node.start_mark,
                )
            mapping[key] = self.construct_object(value_node, deep=deep)
            mapping.lines[key] = key_node.start_mark.line + 1
        return mapping


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _LineLoader.construct_mapping,
)


class YamlError(InvalidInput):
    """A YAML file broke a rule: ``where`` is ``file:line: key.path``."""

    def __init__(self, source: Path | str, line: int, key: str, rule: str) -> None:
        where = f"{source}:{line}" if line else str(source)
        super().__init__(f"{where}: {key}" if key else where, rule)


def load(path: Path) -> Any:
    """Read ``path``: plain YAML only, mappings as :class:`LinedDict`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(str(path), "no such file") from None
    except UnicodeDecodeError:
        raise InvalidInput(str(path), "is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput(str(path), f"cannot be read: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise YamlError(path, line, "", f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(path, 0, "", f"not valid YAML: {exc}") from None


_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|\{)")


class Variables:
    """``$VAR`` and ``${VAR}`` from ``given`` (e.g. ``--var``) first, then the environment.

    ``$$`` is a literal ``$``. An undefined name is an error that names it.
    """

    def __init__(
        self, given: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
    ):
        self.given = dict(given or {})
        self.env = os.environ if env is None else env

    def get(self, name: str) -> str | None:
        if name in self.given:
            return self.given[name]
        return self.env.get(name)

    def expand(self, value: str, source: Path | str, line: int, key: str) -> str:
        def replace(match: re.Match[str]) -> str:
            text = match.group(0)
            if text == "$$":
                return "$"
            name = match.group(1) or match.group(2)
            if name is None:
                raise YamlError(source, line, key, f"unclosed '${{' in {value!r}")
            found = self.get(name)
            if found is None:
                raise YamlError(
                    source,
                    line,
                    key,
                    f"undefined variable ${name}: set it in the environment "
                    f"or pass --var {name}=VALUE",
                )
            return found

        return _VARIABLE.sub(replace, value) if "$" in value else value


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, str]:
    """``KEY=VALUE`` pairs from a repeated option, in order; a bad one names the flag."""
    found: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(flag, f"must be KEY=VALUE, not {item!r}")
        found[key] = value
    return found
