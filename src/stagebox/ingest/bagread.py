"""Read a bag on disk once, the way the validator needs it.

A directory, a tar (plain, gzip, bzip2 or xz) or a zip: each regular file is
read once and hashed, and the bag's top-level files (where the tag files
bagit.txt, bag-info.txt, the manifests and fetch.txt live) are also kept in
memory, up to :data:`TAG_FILE_LIMIT` each. Entries that could not be unpacked
safely (symlinks, devices, escaping names...) are refused as problems, the same
rules for all three forms.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from stagebox.errors import InvalidInput
from stagebox.ingest.bagtree import BagTree, name_rule, shown
from stagebox.ingest.digests import ALGORITHMS, MANIFEST_ALGORITHMS, ManifestHasher
from stagebox.ingest.problems import Problem
from stagebox.ingest.tarstream import CHUNK, TarBag

TAG_FILE_LIMIT = 64 << 20

_ARCHIVE_SUFFIXES = {
    ".tar": "tar",
    ".tar.gz": "tar",
    ".tgz": "tar",
    ".tar.bz2": "tar",
    ".tbz2": "tar",
    ".tar.xz": "tar",
    ".txz": "tar",
    ".zip": "zip",
}
_MANIFEST_ALGORITHM = re.compile(r"(?:tag)?manifest-(.+)\.txt")


@dataclass(frozen=True)
class BagEntry:
    """One regular file of a bag, as a reader recorded it.

    ``path`` is relative to the bag's top directory; ``digests`` maps an
    algorithm, named as a manifest names it (``sha256``, ``sha3256``: see
    :func:`stagebox.ingest.digests.normalized`), to a lower-case hex digest,
    for those computed (none at all is fine in ``fast`` mode).
    """

    path: str
    size: int
    digests: Mapping[str, str] = field(default_factory=dict)


@dataclass
class BagRead:
    """What reading a bag found: its files, top-level file bytes and problems.

    ``serialization`` is ``"tar"``, ``"tar.gz"``, ``"tar.bz2"``, ``"tar.xz"``,
    ``"zip"`` or None (a directory); ``payload_dir`` whether ``data/`` exists;
    ``name_mismatch`` a warning when an archive's top directory is not named
    like the archive; ``warnings`` what the reader found odd but readable.
    """

    entries: dict[str, BagEntry] = field(default_factory=dict)
    tags: dict[str, bytes] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    serialization: str | None = None
    payload_dir: bool = False
    name_mismatch: str | None = None

    def read_tag(self, path: str) -> bytes:
        """A top-level file's bytes; OSError when it was too large to keep."""
        try:
            return self.tags[path]
        except KeyError:
            raise OSError(f"larger than {TAG_FILE_LIMIT >> 20} MiB, so not read") from None

    def add(self, path: str, stream: IO[bytes], algorithms: tuple[str, ...]) -> None:
        """Read ``stream`` to its end once: hash it, keep it if it is a top-level file."""
        hasher = ManifestHasher(algorithms)
        kept: bytearray | None = bytearray() if "/" not in path else None
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
            if kept is not None:
                kept += chunk
                if len(kept) > TAG_FILE_LIMIT:
                    kept = None
        if kept is not None:
            self.tags[path] = bytes(kept)
        self.entries[path] = BagEntry(path, hasher.length, hasher.hexdigests())


def archive_stem(name: str) -> str:
    """``name`` without its archive suffix: ``"bag1.tar.gz"`` -> ``"bag1"``."""
    for suffix in sorted(_ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_bag(path: Path, *, hash_files: bool = True) -> BagRead:
    """Read the bag at ``path`` once; InvalidInput when it is no directory, tar or zip."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise InvalidInput(str(path), f"cannot read the bag: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        return read_directory(path, hash_files=hash_files)
    if not stat.S_ISREG(mode):
        raise InvalidInput(str(path), "not a directory, tar or zip")
    algorithms = ALGORITHMS if hash_files else ()
    bag = read_zip(path, algorithms) if _archive_kind(path) == "zip" else read_tar(path, algorithms)
    _hash_again(bag, path, algorithms)
    return bag


def _archive_kind(path: Path) -> str:
    suffix = next(
        (
            s
            for s in sorted(_ARCHIVE_SUFFIXES, key=len, reverse=True)
            if path.name.lower().endswith(s)
        ),
        None,
    )
    if suffix is not None:
        return _ARCHIVE_SUFFIXES[suffix]
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar" or head[:2] == b"\x1f\x8b" or head[:3] == b"BZh":
        return "tar"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar"
    raise InvalidInput(str(path), "not a directory, tar or zip")


def read_directory(root: Path, *, hash_files: bool = True) -> BagRead:
    """A bag directory: every regular file under ``root``; symlinks and special files refused."""
    bag = BagRead(payload_dir=(root / "data").is_dir() and not (root / "data").is_symlink())
    algorithms = manifest_algorithms(os.listdir(root)) if hash_files else ()
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as scan:
            items = sorted(scan, key=lambda e: e.name)
        for item in items:
            rel = prefix + item.name
            rule = name_rule(item.name)
            if rule is not None:
                bag.problems.append(Problem(shown(rel), rule))
            elif item.is_symlink():
                target = shown(os.readlink(item.path))
                bag.problems.append(Problem(shown(rel), f"symlink to {target}: {_ONLY}"))
            elif item.is_dir(follow_symlinks=False):
                pending.append((Path(item.path), rel + "/"))
            elif item.is_file(follow_symlinks=False):
                try:
                    with open(item.path, "rb") as f:
                        bag.add(rel, f, algorithms)
                except OSError as exc:
                    bag.problems.append(Problem(shown(rel), f"could not be read: {exc.strerror}"))
            else:
                bag.problems.append(Problem(shown(rel), f"special file: {_ONLY}"))
    return bag


_ONLY = "a bag holds only regular files and directories"


def manifest_algorithms(names: Iterable[str]) -> tuple[str, ...]:
    """The algorithms (that stagebox can check) the (tag) manifests among ``names`` use."""
    found = {m.group(1) for n in names if (m := _MANIFEST_ALGORITHM.fullmatch(n))}
    return tuple(sorted(found & MANIFEST_ALGORITHMS))


def _hash_again(bag: BagRead, path: Path, algorithms: tuple[str, ...]) -> None:
    """When the manifests name algorithms that were not computed while the archive
    streamed (its manifests may come after the payload), read it once more for those
    only: rare (sha224, sha384, sha3256, blake2b...) and costing a second read."""
    if not algorithms:
        return
    missing = tuple(a for a in manifest_algorithms(list(bag.entries)) if a not in algorithms)
    if not missing:
        return
    again = read_zip(path, missing) if bag.serialization == "zip" else read_tar(path, missing)
    for name, entry in again.entries.items():
        if name in bag.entries:
            old = bag.entries[name]
            bag.entries[name] = BagEntry(name, old.size, {**old.digests, **entry.digests})


def read_tar(path: Path, algorithms: tuple[str, ...] = ALGORITHMS) -> BagRead:
    """A tarred bag, streamed once through :class:`TarBag`.

    A tar's manifests may come after its payload, so every file is hashed with
    all the ``algorithms`` the manifests are likely to use (:data:`ALGORITHMS`).
    When a manifest turns out to use another one (rare), :func:`read_bag` reads
    the tar a second time, hashing only the algorithms still missing.
    """
    bag = BagRead()
    with path.open("rb") as f:
        tar = TarBag(f, name=path.name)
        for member, reader in tar:
            bag.add(member.path, reader, algorithms)
    bag.problems = list(tar.problems)
    bag.warnings = list(tar.warnings)
    bag.serialization = tar.serialization
    bag.payload_dir = "data" in tar.dirs
    bag.name_mismatch = _name_mismatch(path, tar.top)
    return bag


def read_zip(path: Path, algorithms: tuple[str, ...] = ALGORITHMS) -> BagRead:
    """A zipped bag: one top-level directory, entries admitted by the tar rules."""
    bag = BagRead(serialization="zip")
    tree = BagTree()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        bag.problems.append(Problem(path.name, f"corrupt zip: {exc}"))
        return bag
    with archive:
        for info in archive.infolist():
            kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
            if info.is_dir():
                tree.admit_dir(info.filename)
                continue
            if kind not in (0, stat.S_IFREG):
                what = "symlink" if kind == stat.S_IFLNK else "special file"
                tree.refuse(info.filename, f"{what}: {_ONLY}")
                continue
            rel = tree.admit_file(info.filename)
            if rel is None:
                continue
            try:
                with archive.open(info) as f:
                    bag.add(rel, f, algorithms)
            except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
                tree.refuse(info.filename, f"corrupt zip entry: {exc}")
                bag.entries.pop(rel, None)
    if not archive.infolist():
        tree.problems.append(Problem(path.name, "empty zip: it has no entries"))
    bag.problems = tree.problems
    bag.payload_dir = "data" in tree.dirs
    bag.name_mismatch = _name_mismatch(path, tree.top)
    return bag


def _name_mismatch(path: Path, top: str | None) -> str | None:
    stem = archive_stem(path.name)
    if top is None or top == stem:
        return None
    return f"the top-level directory {shown(top)} is not named like the archive ({shown(stem)})"
