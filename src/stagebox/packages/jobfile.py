"""Push settings from a pipeline job file (``--job FILE``).

A job file may carry the push keys as MDI job files do, under the action::

    variables:
        SERVER: apps.example.org
    find:
        push:
            push-server: $SERVER
            push-dir:    /srv/data
            push-user:   ubuntu
            push-key:    ~/.ssh/mdi-push-key.pem

or under ``shared: push:`` or a top-level ``push:``; the action's own block wins
over ``shared``, which wins over the top level. ``$VAR`` comes from the file's
``variables``, then ``--var``, then the environment.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from stagebox.packages.yamlfile import LinedDict, Variables, YamlError, load

PUSH_KEYS = ("push-server", "push-port", "push-dir", "push-user", "push-key")
DEFAULTS = {
    "push-dir": "/srv/data",
    "push-user": "ubuntu",
    "push-key": "~/.ssh/mdi-push-key.pem",
    "push-port": "22",
}


def push_settings(path: Path, action: str, variables: Variables) -> dict[str, str]:
    """The push keys the job file sets for ``action`` (absent keys are not returned)."""
    doc = load(path)
    if doc is None:
        return {}
    if not isinstance(doc, LinedDict):
        raise YamlError(path, 0, "", "a job file must be a mapping")
    own = _variables(path, doc, variables)
    found: dict[str, str] = {}
    for where in ("push", "shared", action):
        block: Any = doc.get(where)
        key_path = where
        if where != "push":
            if not isinstance(block, LinedDict):
                continue
            block, key_path = block.get("push"), f"{where}.push"
            parent = doc[where]
        else:
            parent = doc
        if block is None:
            continue
        if not isinstance(block, LinedDict):
            line = parent.line_of("push") if isinstance(parent, LinedDict) else 0
            raise YamlError(path, line, key_path, "must be a mapping of push keys")
        for key, value in block.items():
            line = block.line_of(key)
            if key not in PUSH_KEYS:
                near = difflib.get_close_matches(str(key), PUSH_KEYS, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise YamlError(
                    path,
                    line,
                    f"{key_path}.{key}",
                    f"unknown key{hint}; allowed: {', '.join(PUSH_KEYS)}",
                )
            if value is None:
                continue  # "push-server: null" as in MDI templates: not set
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise YamlError(path, line, f"{key_path}.{key}", "must be a string")
            found[key] = own.expand(str(value), path, line, f"{key_path}.{key}")
    return found


def _variables(path: Path, doc: LinedDict, given: Variables) -> Variables:
    """The job file's ``variables`` under ``--var`` (which wins), over the environment."""
    block = doc.get("variables")
    if block is None:
        return given
    if not isinstance(block, LinedDict):
        raise YamlError(path, doc.line_of("variables"), "variables", "must be a mapping")
    merged: dict[str, str] = {}
    for key, value in block.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise YamlError(path, block.line_of(key), f"variables.{key}", "must be a string")
        merged[str(key)] = given.expand(str(value), path, block.line_of(key), f"variables.{key}")
    merged.update(given.given)
    return Variables(merged, given.env)
