"""Walk a source tree by a declared folder structure into datafiles to send."""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections.abc import Iterator, Sequence
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


@dataclass(frozen=True)
class LocalFile:
    """One file found by the scan, with the catalog names it will have."""

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
class ScanRules:
    structure: str = "dataset"
    dataset: str | None = None
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    min_age_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise InvalidInput("structure", f"must be one of {', '.join(STRUCTURES)}")


def _wanted(paths: tuple[str, ...], rules: ScanRules) -> bool:
    """Globs match the file name, its path in the dataset, or its path under SRC."""

    def matches(patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatch(path, p) for p in patterns for path in paths)

    if rules.include and not matches(rules.include):
        return False
    return not matches(rules.exclude)


def _walk(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Regular files under ``top`` in sorted order; symlinks are not followed."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(Path(entry.path))
        elif stat.S_ISREG(st.st_mode):
            yield Path(entry.path), st


def scan(source: Path, rules: ScanRules, now: float | None = None) -> Iterator[LocalFile]:
    """Yield every file under ``source`` that the rules select.

    Files at folder levels above the dataset are not part of any dataset and are
    skipped. A file whose names break the server's rules is yielded with
    ``error`` set, so it is reported as failed instead of sent.
    """
    source = Path(source)
    if not source.is_dir():
        raise InvalidInput("SRC", f"{source} is not a directory")
    cutoff = (now if now is not None else time.time()) - rules.min_age_minutes * 60
    levels = ("dataset",) if rules.dataset else STRUCTURES[rules.structure]
    for path, st in _walk(source):
        rel_parts = path.relative_to(source).parts
        if rules.dataset:
            names = {"dataset": rules.dataset}
            below = rel_parts
        else:
            if len(rel_parts) <= len(levels):
                continue  # above the dataset level
            names = dict(zip(levels, rel_parts[: len(levels)], strict=True))
            below = rel_parts[len(levels) :]
        if not _wanted((path.name, "/".join(below), "/".join(rel_parts)), rules):
            continue
        if rules.min_age_minutes and st.st_mtime > cutoff:
            continue
        yield _local_file(path, st, names, "/".join(below[:-1]), below[-1])


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
