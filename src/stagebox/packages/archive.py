"""Deterministic zips, and a safe reader of an earlier package.

The same entries always give the same bytes: every entry has the same fixed
timestamp (1980-01-01, the zip epoch), mode 0644, the Unix "made by" system, no
extra fields and no comment; entries are written in sorted order; compression is
deflate at a fixed level (or stored for formats that are compressed already).
So a re-run of ``pack`` on unchanged inputs reproduces the package exactly, and
its sha256 says that nothing changed.
"""

from __future__ import annotations

import hashlib
import stat
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import yaml

from stagebox.errors import InvalidInput, InvalidName
from stagebox.names import clean_component

EPOCH = (1980, 1, 1, 0, 0, 0)
CHUNK = 1 << 20
LEVEL = 6
# Already compressed: deflating them again costs time and saves nothing.
STORED_SUFFIXES = frozenset(
    {".gz", ".bgz", ".bz2", ".xz", ".zst", ".zip", ".7z", ".png", ".jpg", ".jpeg", ".gif",
     ".webp", ".bam", ".cram", ".rds", ".parquet", ".h5", ".hdf5", ".npz"}
)  # fmt: skip


def entry_info(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=EPOCH)
    info.create_system = 3  # Unix, whatever the platform that packs
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    stored = PurePosixPath(name).suffix.lower() in STORED_SUFFIXES
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    info.file_size = size  # decides zip64 up front, the same way every time
    return info


class ZipWriter:
    """Writes entries in the order given (the caller sorts), each from a stream."""

    def __init__(self, out: IO[bytes]) -> None:
        self._zip = zipfile.ZipFile(out, "w", compresslevel=LEVEL, allowZip64=True)

    def add_bytes(self, name: str, data: bytes) -> None:
        info = entry_info(name, len(data))
        with self._zip.open(info, "w") as dest:
            dest.write(data)

    def add_stream(
        self, name: str, size: int, source: IO[bytes], progress: Callable[[int], None]
    ) -> str:
        """Copy exactly ``size`` bytes; returns their sha256."""
        info = entry_info(name, size)
        digest = hashlib.sha256()
        copied = 0
        with self._zip.open(info, "w", force_zip64=info.file_size > zipfile.ZIP64_LIMIT) as dest:
            while chunk := source.read(CHUNK):
                copied += len(chunk)
                if copied > size:
                    break
                digest.update(chunk)
                dest.write(chunk)
                progress(len(chunk))
        if copied != size:
            raise ChangedWhilePacked(name, f"{size} bytes when hashed, {copied} when packed")
        return digest.hexdigest()

    def close(self) -> None:
        self._zip.close()


class ChangedWhilePacked(InvalidInput):
    def __init__(self, name: str, how: str) -> None:
        super().__init__(name, f"changed while it was packed ({how}); run pack again")


def check_entry_name(name: str, archive: Path) -> PurePosixPath:
    """An entry name that stays inside the directory the zip would be read into."""
    field = f"{archive}: entry {name!r}"
    if not name or name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise InvalidName(field, "escapes its directory (absolute or a Windows path)")
    parts = name.rstrip("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidName(field, "escapes its directory ('..', '.' or an empty part)")
        clean_component(part, field)
    return PurePosixPath(*parts)


@dataclass(frozen=True)
class PackedFile:
    """One file of an earlier package, as its package.yml describes it."""

    file_type: str
    name: str
    size: int
    sha256: str
    fields: dict[str, Any]
    member: str  # the zip entry holding its bytes


@dataclass(frozen=True)
class EarlierPackage:
    path: Path
    manifest: dict[str, Any]
    files: dict[str, PackedFile]


def read_package(path: Path) -> EarlierPackage:
    """Read an earlier package (flat zip or bag zip): its package.yml and its files.

    Every entry name is checked before anything is used: a zip whose entries
    would escape the directory it is read into is refused as a whole.
    """
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InvalidInput(str(path), "no such package") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(str(path), f"is not a readable zip: {exc}") from None
    with archive:
        names = {}
        for info in archive.infolist():
            entry = check_entry_name(info.filename, path)
            mode = info.external_attr >> 16
            if info.create_system == 3 and mode and stat.S_ISLNK(mode):
                raise InvalidName(f"{path}: entry {info.filename!r}", "is a symbolic link")
            names[str(entry)] = info
        if "package.yml" in names:
            top, payload = "", ""
        else:
            tops = {name.split("/", 1)[0] for name in names}
            if len(tops) != 1:
                raise InvalidInput(str(path), "holds no package.yml at its top")
            top = tops.pop() + "/"
            payload = top + "data/"
            if top + "package.yml" not in names:
                raise InvalidInput(str(path), "holds no package.yml (neither flat nor a bag)")
        try:
            manifest = yaml.safe_load(archive.read(names[top + "package.yml"]))
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{path}: package.yml", f"not valid YAML: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise InvalidInput(f"{path}: package.yml", "has no 'files' mapping")
    files = {}
    for file_type, entry in manifest["files"].items():
        if entry is None:
            continue
        where = f"{path}: package.yml: files.{file_type}"
        if not isinstance(entry, dict):
            raise InvalidInput(where, "must be a mapping or null")
        try:
            name, size, sha256 = str(entry["name"]), int(entry["size"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(where, "needs name, size and sha256") from None
        clean_component(name, f"{where}.name")
        member = payload + name
        if member not in names:
            raise InvalidInput(where, f"names {name!r}, which the zip does not hold")
        fields = {k: v for k, v in entry.items() if k not in ("name", "size", "sha256", "file")}
        files[str(file_type)] = PackedFile(str(file_type), name, size, sha256, fields, member)
    return EarlierPackage(path, manifest, files)


@contextmanager
def open_member(package: EarlierPackage, member: str) -> Iterator[IO[bytes]]:
    with zipfile.ZipFile(package.path) as archive, archive.open(member) as stream:
        yield stream


def check_copied(packed: PackedFile, package: Path, sha256: str) -> None:
    if sha256 != packed.sha256:
        raise InvalidInput(
            f"{package}: entry {packed.member!r}",
            f"its sha256 is {sha256}, but its package.yml says {packed.sha256}; "
            "pack that action again",
        )
