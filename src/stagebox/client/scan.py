"""Walk a source tree by a declared folder structure into datafiles to send.

Nothing is left out silently: every entry under SRC that the scan does not
yield is reported as an :class:`Omission` with one of :data:`REASONS`, streamed
to a callback as it is met, and counted per reason on the :class:`Scan`. The
scan holds one directory listing per level of the tree, never the tree.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from stagebox.errors import InvalidInput, InvalidName
from stagebox.names import clean_component, clean_directory

# Each structure names the folder levels above the dataset's own files.
STRUCTURES: dict[str, tuple[str, ...]] = {
    "dataset": ("dataset",),
    "experiment/dataset": ("experiment", "dataset"),
    "username/dataset": ("owner", "dataset"),
    "username/experiment/dataset": ("owner", "experiment", "dataset"),
}
SYMLINKS = ("skip", "follow")

# How a source file is opened for reading: never through a symlink swapped in
# after the scan (where the platform can say so: Windows has no O_NOFOLLOW, and
# the scan already refused links there), never inherited, always binary.
SOURCE_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)

UNREADABLE = "unreadable"
# Why an entry was not uploaded. Only "unreadable" is a failure of the run: the
# others are what the user's rules and options asked for, or cannot be sent.
REASONS: tuple[str, ...] = (
    UNREADABLE,  # a directory or file that cannot be listed, stat'ed or read
    "symlink",  # --symlinks skip
    "symlink leaves SRC",  # --symlinks follow, but the target is outside SRC
    "directory loop",  # a directory that contains itself (through a link)
    "special file",  # fifo, socket, device
    "above the dataset level",  # a file where the structure expects folders
    "excluded",  # by --include / --exclude
    "newer than --min-age",
)
FIRST_LEVEL_NAMES_KEPT = 5


@dataclass(frozen=True)
class LocalFile:
    """One file found by the scan, with the catalog names it will have.

    ``path`` is where the bytes are read from. For a file reached through a
    followed symlink it is the target's resolved path (the uploader refuses to
    open a symlink); the catalog names are those of the link's place in the tree.
    """

    path: Path
    dataset: str
    directory: str
    filename: str
    size: int
    mtime_ns: int
    experiment: str | None = None
    owner: str | None = None
    error: str | None = None

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def display(self) -> str:
        parts = (self.owner, self.experiment, self.dataset, self.directory, self.filename)
        return "/".join(p for p in parts if p)

    def registration(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "dataset": self.dataset,
            "directory": self.directory,
            "filename": self.filename,
            "size": self.size,
            "mtime": self.mtime,
        }
        if self.experiment:
            entry["experiment"] = self.experiment
        if self.owner:
            entry["owner"] = self.owner
        return entry


@dataclass(frozen=True)
class Omission:
    """One entry under SRC that the scan does not upload, and why.

    ``path`` is the entry's place in the tree (SRC joined with its path under
    SRC, never resolved); ``reason`` is one of :data:`REASONS`; ``detail`` says
    more where there is more to say (the OS error, a link's target).
    """

    path: Path
    reason: str
    detail: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "reason": self.reason, "detail": self.detail}


OmissionCallback = Callable[[Omission], None]


@dataclass(frozen=True)
class ScanRules:
    structure: str = "dataset"
    dataset: str | None = None
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    min_age_minutes: float = 0.0
    symlinks: str = "skip"

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise InvalidInput("structure", f"must be one of {', '.join(STRUCTURES)}")
        if self.symlinks not in SYMLINKS:
            raise InvalidInput("symlinks", f"must be one of {', '.join(SYMLINKS)}", self.symlinks)


def _exclusion(paths: tuple[str, ...], rules: ScanRules) -> str | None:
    """Why the globs leave a file out, or None when they select it.

    Globs match the file name, its path in the dataset, or its path under SRC.
    """

    def first_match(patterns: Sequence[str]) -> str | None:
        return next((p for p in patterns for path in paths if fnmatch.fnmatch(path, p)), None)

    if rules.include and first_match(rules.include) is None:
        return "matches no --include"
    if (pattern := first_match(rules.exclude)) is not None:
        return f"matches --exclude {pattern}"
    return None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "not a regular file"


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        return f"? ({exc.strerror})"


class Scan:
    """An iterator of the files under ``source`` that ``rules`` select.

    Each entry not yielded goes to ``omitted`` as an :class:`Omission` while the
    scan runs, and is counted in ``omitted_by_reason``. Files at folder levels
    above the dataset are not part of any dataset. A file whose names break the
    server's rules is yielded with ``error`` set, so it is reported as failed
    instead of sent. A scan runs once; its counts are final when it is exhausted.
    """

    def __init__(
        self,
        source: Path,
        rules: ScanRules,
        now: float | None = None,
        *,
        omitted: OmissionCallback | None = None,
    ) -> None:
        self.source = Path(source)
        if not self.source.is_dir():
            raise InvalidInput("SRC", f"{self.source} is not a directory")
        self.rules = rules
        self.selected = 0
        self.omitted_by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._on_omission = omitted
        self._now = now if now is not None else time.time()
        self._levels = ("dataset",) if rules.dataset else STRUCTURES[rules.structure]
        self._root = Path(os.path.realpath(self.source))
        # What the tree holds above the dataset level, to say why no dataset was found.
        self._deepest: tuple[str, ...] = ()
        self._first_level: list[str] = []
        self._first_level_count = 0
        self._files = self._select()

    def __iter__(self) -> Scan:
        return self

    def __next__(self) -> LocalFile:
        return next(self._files)

    @property
    def omitted(self) -> int:
        return sum(self.omitted_by_reason.values())

    @property
    def unreadable(self) -> int:
        return self.omitted_by_reason[UNREADABLE]

    def check_structure(self) -> None:
        """After the scan, raise InvalidInput if the tree held files but no dataset.

        That is: nothing was selected and every omission was a file above the
        dataset level, so the structure asks for deeper folders than the tree has.
        """
        above = self.omitted_by_reason["above the dataset level"]
        if self.selected or not above or above != self.omitted:
            return
        expected = self.rules.structure
        if len(self._deepest) <= 1:
            names = ", ".join(self._first_level)
            more = self._first_level_count - len(self._first_level)
            if more:
                names += f" and {more} more"
            found = (
                f"found only files at the first level: {names}"
                " (--dataset NAME uploads SRC as one dataset)"
            )
        else:
            found = f"the deepest path is {len(self._deepest)} levels: {'/'.join(self._deepest)}"
        raise InvalidInput(
            "structure", f"{expected} expects files inside {expected}/ folders, but {found}"
        )

    # -- the walk -------------------------------------------------------------

    def _omit(self, parts: tuple[str, ...], reason: str, detail: str | None = None) -> None:
        self.omitted_by_reason[reason] += 1
        if self._on_omission is not None:
            self._on_omission(Omission(self.source.joinpath(*parts), reason, detail))

    def _select(self) -> Iterator[LocalFile]:
        rules, levels = self.rules, self._levels
        cutoff = self._now - rules.min_age_minutes * 60
        try:
            top = os.stat(self.source)
        except OSError as exc:  # gone since __init__ looked
            self._omit((), UNREADABLE, exc.strerror)
            return
        for path, parts, st in self._walk(self.source, (), {(top.st_dev, top.st_ino)}):
            if rules.dataset:
                names = {"dataset": rules.dataset}
                below = parts
            else:
                if len(parts) <= len(levels):
                    self._note_shallow(parts)
                    self._omit(parts, "above the dataset level")
                    continue
                names = dict(zip(levels, parts[: len(levels)], strict=True))
                below = parts[len(levels) :]
            why = _exclusion((parts[-1], "/".join(below), "/".join(parts)), rules)
            if why is not None:
                self._omit(parts, "excluded", why)
                continue
            if rules.min_age_minutes and st.st_mtime > cutoff:
                minutes = max(self._now - st.st_mtime, 0) / 60
                self._omit(parts, "newer than --min-age", f"modified {minutes:.1f} minutes ago")
                continue
            # access(2), not open(2): opening may recall a file from tape or cloud tier.
            if not os.access(path, os.R_OK):
                self._omit(parts, UNREADABLE, os.strerror(errno.EACCES))
                continue
            self.selected += 1
            yield _local_file(path, st, names, "/".join(below[:-1]), below[-1])

    def _walk(
        self, top: Path, rel: tuple[str, ...], ancestors: set[tuple[int, int]]
    ) -> Iterator[tuple[Path, tuple[str, ...], os.stat_result]]:
        """Regular files under ``top`` in sorted order, with their parts under SRC.

        ``top`` is the directory read; ``rel`` is its place in the tree, which
        differs once a symlink was followed. ``ancestors`` holds the (device,
        inode) of every directory above, so a link back up is not walked forever.
        """
        try:
            with os.scandir(top) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            self._omit(rel, UNREADABLE, exc.strerror)
            return
        for entry in entries:
            parts = (*rel, entry.name)
            path = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                self._omit(parts, UNREADABLE, exc.strerror)
                continue
            if stat.S_ISLNK(st.st_mode):
                if self.rules.symlinks == "skip":
                    self._omit(parts, "symlink", f"-> {_link_target(path)}")
                    continue
                target = self._follow(path, parts)
                if target is None:
                    continue
                path, st = target
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    self._omit(parts, "directory loop", f"-> {path}, a folder above it")
                    continue
                ancestors.add(key)
                yield from self._walk(path, parts, ancestors)
                ancestors.discard(key)
            elif stat.S_ISREG(st.st_mode):
                yield path, parts, st
            else:
                self._omit(parts, "special file", _kind(st.st_mode))

    def _follow(self, link: Path, parts: tuple[str, ...]) -> tuple[Path, os.stat_result] | None:
        """The resolved target of a link and its stat, if it exists inside SRC."""
        try:
            real = Path(os.path.realpath(link, strict=True))
            st = os.stat(real)
        except OSError as exc:
            self._omit(parts, UNREADABLE, f"-> {_link_target(link)}: {exc.strerror}")
            return None
        if not real.is_relative_to(self._root):
            self._omit(parts, "symlink leaves SRC", f"-> {real}")
            return None
        return real, st

    def _note_shallow(self, parts: tuple[str, ...]) -> None:
        if len(parts) > len(self._deepest):
            self._deepest = parts
        if len(parts) == 1:
            self._first_level_count += 1
            if len(self._first_level) < FIRST_LEVEL_NAMES_KEPT:
                self._first_level.append(parts[0])


def scan(
    source: Path,
    rules: ScanRules,
    now: float | None = None,
    *,
    omitted: OmissionCallback | None = None,
) -> Scan:
    """Scan ``source`` by ``rules`` (see :class:`Scan`); InvalidInput if it is no directory."""
    return Scan(source, rules, now, omitted=omitted)


def _local_file(
    path: Path, st: os.stat_result, names: dict[str, str], directory: str, filename: str
) -> LocalFile:
    error = None
    try:
        dataset = clean_component(names["dataset"], "dataset")
        experiment = (
            clean_component(names["experiment"], "experiment") if "experiment" in names else None
        )
        owner = clean_component(names["owner"], "owner") if "owner" in names else None
        directory = clean_directory(directory)
        filename = clean_component(filename, "filename")
    except InvalidName as exc:
        error = str(exc)
        dataset = names.get("dataset", "")
        experiment, owner = names.get("experiment"), names.get("owner")
    return LocalFile(
        path=path,
        dataset=dataset,
        directory=directory,
        filename=filename,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        experiment=experiment,
        owner=owner,
        error=error,
    )
