"""``pack``: build an action's data package from its declaration.

The package is ``PREFIX.<pipeline>.<action>.mdi.package.zip``: a flat zip of
``package.yml`` and the files, or (``fmt="bag"``) a BagIt bag zipped under one
top directory with package.yml as a tag file. Each file is hashed first (so
package.yml, which lists the sha256 of every file, can be the first thing a
reader meets in sorted order) and hashed again while it is copied: a file that
changes in between fails the pack instead of producing a package that lies.

The package is written to a temporary name beside it and renamed into place.
When the new bytes equal the package already there, the old file is left
untouched (same inode, same mtime), so a re-run changes nothing on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from stagebox.errors import InvalidInput
from stagebox.packages.archive import (
    CHUNK,
    EarlierPackage,
    ZipWriter,
    check_copied,
    open_member,
    read_package,
)
from stagebox.packages.declaration import Declaration, ResolvedAction
from stagebox.packages.yamlfile import Variables

FORMATS = ("zip", "bag")
SUFFIX = ".mdi.package.zip"
MANIFEST = "package.yml"


def package_path(prefix: str, pipeline: str, action: str) -> Path:
    return Path(f"{prefix}.{pipeline}.{action}{SUFFIX}")


@dataclass
class Entry:
    """One file going into the package: from disk or from an earlier package."""

    file_type: str
    name: str
    size: int
    sha256: str
    fields: dict[str, Any]
    source: Path | None = None
    earlier: EarlierPackage | None = None
    member: str = ""


@dataclass
class PackResult:
    path: Path
    sha256: str
    size: int
    changed: bool  # False: the same bytes were there already
    files: dict[str, Entry | None]
    problems: list[str] = field(default_factory=list)


Report = Callable[[str], None]


def _ignore(_: str) -> None:
    pass


def pack(
    declaration: Declaration,
    action: str,
    prefix: str,
    *,
    variables: Variables,
    options: dict[str, str] | None = None,
    fmt: str = "zip",
    report: Report = _ignore,
) -> PackResult:
    """Build the package of ``action``; ``report`` gets one line per missing or dropped file."""
    if fmt not in FORMATS:
        raise InvalidInput("--format", f"must be one of {', '.join(FORMATS)}", fmt)
    if not prefix:
        raise InvalidInput("--prefix", "is required (or set DATA_FILE_PREFIX)")
    variables.given.setdefault("DATA_FILE_PREFIX", prefix)
    resolved = declaration.resolve(action, variables)
    out = package_path(prefix, declaration.pipeline, action)
    problems: list[str] = []

    def problem(text: str) -> None:
        problems.append(text)
        report(text)

    files: dict[str, Entry | None] = {}
    if resolved.extends is not None:
        earlier_path = package_path(prefix, declaration.pipeline, resolved.extends)
        if not earlier_path.exists():
            raise InvalidInput(
                f"package.{action}.extends",
                f"the package of {resolved.extends!r} is not at {earlier_path}; "
                f"pack it first (stagebox pack ... --action {resolved.extends})",
            )
        earlier = read_package(earlier_path)
        for packed in earlier.files.values():
            files[packed.file_type] = Entry(
                packed.file_type,
                packed.name,
                packed.size,
                packed.sha256,
                dict(packed.fields),
                earlier=earlier,
                member=packed.member,
            )
    for spec in resolved.files.values():  # the action's own declaration wins
        files[spec.file_type] = _hash_local(spec.file_type, spec.path, spec.max_size, problem)
        if files[spec.file_type] is not None:
            files[spec.file_type].fields = dict(spec.fields)  # type: ignore[union-attr]
    _check_flat(files)
    extras = _extras(resolved, problem)
    manifest = _manifest(resolved, options or {}, files, extras)
    sha256, size, changed = _write(out, fmt, manifest, files, declaration, resolved)
    return PackResult(out, sha256, size, changed, files, problems)


def _hash_local(file_type: str, path: Path, max_size: int | None, problem: Report) -> Entry | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        problem(f"missing: {file_type}: {path} (recorded as null)")
        return None
    except OSError as exc:
        problem(f"unreadable: {file_type}: {path}: {exc.strerror} (recorded as null)")
        return None
    if not stat.S_ISREG(st.st_mode):
        problem(f"not a regular file: {file_type}: {path} (recorded as null)")
        return None
    if max_size is not None and st.st_size > max_size:
        problem(
            f"too large: {file_type}: {path} is {st.st_size} bytes, over maxSize "
            f"{max_size} (recorded as null)"
        )
        return None
    return Entry(file_type, path.name, st.st_size, file_sha256(path), {}, source=path)


def _check_flat(files: dict[str, Entry | None]) -> None:
    """Files lie flat in the package: two types may share a file, not a name."""
    by_name: dict[str, Entry] = {}
    for entry in files.values():
        if entry is None:
            continue
        if entry.name == MANIFEST:
            raise InvalidInput(f"files.{entry.file_type}", f"must not be named {MANIFEST}")
        other = by_name.get(entry.name)
        if other is not None and (other.sha256, other.size) != (entry.sha256, entry.size):
            raise InvalidInput(
                f"files.{entry.file_type}",
                f"is named {entry.name!r} like files.{other.file_type}, but differs; "
                "the files of a package lie flat, so their names must differ",
            )
        by_name[entry.name] = entry


def _extras(resolved: ResolvedAction, problem: Report) -> list[dict[str, Any] | None]:
    extras: list[dict[str, Any] | None] = []
    for path in resolved.extra_push_files:
        entry = _hash_local("extraPushFiles", path, None, problem)
        if entry is None:
            extras.append(None)
            continue
        extras.append(
            {
                "name": entry.name,
                "size": entry.size,
                "sha256": entry.sha256,
                "path": str(path.resolve()),
            }
        )
    return extras


def _manifest(
    resolved: ResolvedAction,
    options: dict[str, str],
    files: dict[str, Entry | None],
    extras: list[dict[str, Any] | None],
) -> bytes:
    doc: dict[str, Any] = {
        "uploadType": resolved.upload_type,
        "pipeline": resolved.pipeline,
        "action": resolved.action,
    }
    if resolved.extends:
        doc["extends"] = resolved.extends
    doc["options"] = dict(sorted(options.items()))
    listed: dict[str, Any] = {}
    for file_type in sorted(files):
        entry = files[file_type]
        if entry is None:
            listed[file_type] = None
            continue
        listed[file_type] = {
            "type": entry.fields.get("type"),
            # ``file`` is the name inside the package, as MDI apps read it.
            "file": entry.name,
            "name": entry.name,
            "size": entry.size,
            "sha256": entry.sha256,
            **{k: entry.fields[k] for k in sorted(entry.fields) if k != "type"},
        }
    doc["files"] = listed
    if extras:
        doc["extraPushFiles"] = extras
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text.encode()


def _write(
    out: Path,
    fmt: str,
    manifest: bytes,
    files: dict[str, Entry | None],
    declaration: Declaration,
    resolved: ResolvedAction,
) -> tuple[str, int, bool]:
    """Write to a temporary file beside ``out``; keep the old file if the bytes are equal."""
    out.parent.mkdir(parents=True, exist_ok=True)
    unique = {e.name: e for e in files.values() if e is not None}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as f:
            writer = ZipWriter(f)
            try:
                if fmt == "bag":
                    _write_bag(writer, out, manifest, unique, resolved)
                else:
                    _write_flat(writer, manifest, unique)
            finally:
                writer.close()  # also on failure: the temporary file is removed below
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        sha256 = file_sha256(tmp)
        if out.exists() and out.stat().st_size == size and file_sha256(out) == sha256:
            tmp.unlink()
            return sha256, size, False
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, out)
        return sha256, size, True
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _write_flat(writer: ZipWriter, manifest: bytes, unique: dict[str, Entry]) -> None:
    names = sorted([*unique, "package.yml"])
    for name in names:
        if name == "package.yml":
            writer.add_bytes(name, manifest)
        else:
            _copy(writer, name, unique[name])


def _write_bag(
    writer: ZipWriter,
    out: Path,
    manifest: bytes,
    unique: dict[str, Entry],
    resolved: ResolvedAction,
) -> None:
    top = out.name.removesuffix(".zip")
    payload = sum(e.size for e in unique.values())
    tags: dict[str, bytes] = {
        "bagit.txt": b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
        "bag-info.txt": (
            f"Bag-Software-Agent: stagebox\n"
            f"External-Identifier: {resolved.pipeline}.{resolved.action}\n"
            f"Payload-Oxum: {payload}.{len(unique)}\n"
        ).encode(),
        "manifest-sha256.txt": "".join(
            f"{unique[name].sha256}  data/{_bag_path(name)}\n" for name in sorted(unique)
        ).encode(),
        MANIFEST: manifest,
    }
    tags["tagmanifest-sha256.txt"] = "".join(
        f"{hashlib.sha256(tags[name]).hexdigest()}  {name}\n" for name in sorted(tags)
    ).encode()
    entries: dict[str, Entry | bytes] = {f"{top}/{name}": data for name, data in tags.items()}
    entries.update({f"{top}/data/{name}": entry for name, entry in unique.items()})
    for name in sorted(entries):
        item = entries[name]
        if isinstance(item, bytes):
            writer.add_bytes(name, item)
        else:
            _copy(writer, name, item)


def _bag_path(name: str) -> str:
    """BagIt percent-encodes CR, LF and % in manifest paths."""
    return name.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _copy(writer: ZipWriter, name: str, entry: Entry) -> None:
    def ignore(_: int) -> None:
        pass

    with contextlib.ExitStack() as stack:
        stream: IO[bytes]
        if entry.earlier is not None:
            stream = stack.enter_context(open_member(entry.earlier, entry.member))
        else:
            assert entry.source is not None
            stream = stack.enter_context(open(entry.source, "rb"))
        sha256 = writer.add_stream(name, entry.size, stream, ignore)
    if entry.earlier is not None:
        packed = entry.earlier.files[entry.file_type]
        check_copied(packed, entry.earlier.path, sha256)
    elif sha256 != entry.sha256:
        raise InvalidInput(
            str(entry.source), "changed while it was packed (sha256 differs); run pack again"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
