"""The entry names of a serialized bag (tar or zip), and which may be unpacked.

A serialized bag is one top-level directory holding regular files and
directories. :class:`BagTree` admits entries in archive order and records a
:class:`Problem` for each one it refuses, so a reader can keep going and report
everything wrong with the archive at once.
"""

from __future__ import annotations

from stagebox.ingest.problems import Problem


def shown(name: str) -> str:
    """``name`` safe to print: control characters and undecodable bytes escaped."""
    if name.isprintable():
        return name
    out = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}")
    return "".join(out)


def name_rule(name: str) -> str | None:
    """The rule ``name`` breaks, or None.

    A name must be valid UTF-8 (readers decode with ``surrogateescape``, so
    undecodable bytes arrive as lone surrogates). Control characters are
    allowed, as RFC 8493 allows them (its manifests escape CR and LF): bag
    files are stored under uuid keys and every name is printed through
    :func:`shown`; a profile may refuse them (APTrust's does).
    """
    if name.isascii():
        return None
    for ch in name:
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return "the name is not valid UTF-8"
    return None


class BagTree:
    """Admits the entries of one serialized bag, refusing unsafe ones.

    ``top`` is the bag's single top-level directory once an entry named it.
    ``dirs`` holds every directory seen, relative to ``top`` (``"data"``,
    ``"data/a"``), named by an entry or implied by a file's path. ``problems``
    lists every refused entry, in archive order; a refused entry's path is its
    name in the archive, escaped with :func:`shown`.
    """

    def __init__(self) -> None:
        self.top: str | None = None
        self.dirs: set[str] = set()
        self.problems: list[Problem] = []
        self._files: set[str] = set()
        self._other_tops: set[str] = set()

    def refuse(self, name: str, rule: str) -> None:
        """Record that the entry ``name`` was refused by ``rule``."""
        self.problems.append(Problem(shown(name), rule))

    def admit_dir(self, name: str) -> None:
        """Note a directory entry (refused entries are recorded, nothing more)."""
        parts = self._parts(name)
        if not parts or not self._under_top(name, parts[0]):
            return  # refused, or the archive's own root ("." or "./")
        rel = "/".join(parts[1:])
        if rel in self._files:
            self.refuse(name, "the path is both a file and a directory")
            return
        self._add_dirs(rel)

    def admit_file(self, name: str) -> str | None:
        """The path of a regular file relative to ``top``, or None when refused."""
        parts = self._parts(name)
        if parts is None:
            return None
        if len(parts) < 2:
            self.refuse(name, "entry outside the bag's top-level directory")
            return None
        if not self._under_top(name, parts[0]):
            return None
        rel = "/".join(parts[1:])
        if rel in self._files:
            self.refuse(name, "duplicate entry: the path appeared earlier; this copy is refused")
            return None
        parents = ["/".join(parts[1:i]) for i in range(2, len(parts))]
        if rel in self.dirs or any(p in self._files for p in parents):
            self.refuse(name, "the path is both a file and a directory")
            return None
        self._files.add(rel)
        self.dirs.update(parents)
        return rel

    def _parts(self, name: str) -> list[str] | None:
        rule = name_rule(name)
        if rule is not None:
            self.refuse(name, rule)
            return None
        if name.startswith("/"):
            self.refuse(name, "absolute path: the entry would land outside the bag")
            return None
        # "./bag/data" and "bag//data" are the same place as "bag/data".
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            self.refuse(name, "'..' in the path: the entry would land outside the bag")
            return None
        return parts

    def _under_top(self, name: str, top: str) -> bool:
        if self.top is None:
            self.top = top
        if top == self.top:
            return True
        if top not in self._other_tops:
            self._other_tops.add(top)
            self.refuse(name, f"two top-level directories: {shown(self.top)} and {shown(top)}")
        return False

    def _add_dirs(self, rel: str) -> None:
        parts = rel.split("/") if rel else []
        self.dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
