"""Workloads: generated once under ``benchmarks/work/workloads`` and reused while they fit.

A marker file beside each workload records what was generated; a workload whose marker is
missing or different (an interrupted generation, another size) is generated again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import cache
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
BLOCK = 64 * MiB


def human_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".ok.json")


def is_ready(path: Path, spec: dict[str, object]) -> bool:
    """True when ``path`` exists and its marker says it was generated from ``spec``."""
    marker = _marker(path)
    if not (marker.exists() and path.exists()):
        return False
    try:
        return bool(json.loads(marker.read_text()) == spec)
    except ValueError:
        return False


def mark(path: Path, spec: dict[str, object]) -> None:
    """Record that ``path`` is complete and was generated from ``spec``."""
    _marker(path).write_text(json.dumps(spec))


def big_file(root: Path, size: int, *, repeat_block: bool) -> Path:
    """A folder holding one file of ``size`` bytes; returns the folder.

    ``repeat_block=False``: every byte from ``os.urandom``. ``repeat_block=True``: one 64 MiB
    random block repeated, each copy stamped with its index in the first 8 bytes (non-zero,
    not sparse, and no two blocks alike), which is much faster for multi-GiB files.
    """
    kind = "repeated-64MiB-block" if repeat_block else "urandom"
    folder = root / f"big-{human_size(size)}-{kind}"
    path = folder / "data.bin"
    spec: dict[str, object] = {"size": size, "kind": kind}
    if is_ready(folder, spec) and path.exists() and path.stat().st_size == size:
        return folder
    print(f"  generating {path} ({human_size(size)}, {kind})", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    _marker(folder).unlink(missing_ok=True)
    folder.mkdir(parents=True)
    block = bytearray(os.urandom(BLOCK)) if repeat_block else bytearray()
    tmp = folder.parent / (folder.name + ".tmp")
    with open(tmp, "wb") as f:
        written, index = 0, 0
        while written < size:
            n = min(BLOCK, size - written)
            if repeat_block:
                block[:8] = index.to_bytes(8, "little")
                f.write(memoryview(block)[:n])
            else:
                f.write(os.urandom(n))
            written += n
            index += 1
    os.replace(tmp, path)
    mark(folder, spec)
    return folder


def small_tree(root: Path, files: int, folders: int, size: int) -> Path:
    """``files`` files of ``size`` random bytes spread evenly over ``folders`` folders."""
    tree = root / f"small-{files}x{human_size(size)}-in-{folders}"
    spec: dict[str, object] = {"files": files, "folders": folders, "size": size}
    if is_ready(tree, spec):
        return tree
    print(f"  generating {tree} ({files} files of {human_size(size)})", flush=True)
    shutil.rmtree(tree, ignore_errors=True)
    _marker(tree).unlink(missing_ok=True)
    for i in range(files):
        folder = tree / f"dir{i % folders:02d}"
        if i < folders:
            folder.mkdir(parents=True)
        (folder / f"file{i:06d}.bin").write_bytes(os.urandom(size))
    mark(tree, spec)
    return tree


def count_files(tree: Path) -> tuple[int, int]:
    """Number of regular files under ``tree`` and their total size."""
    count = total = 0
    for dirpath, _, names in os.walk(tree):
        for name in names:
            count += 1
            total += os.path.getsize(os.path.join(dirpath, name))
    return count, total


@cache
def sha256_of(path: Path) -> str:
    """The file's sha256, computed once per harness run (a check, never timed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK // 16):
            digest.update(chunk)
    return digest.hexdigest()


def linked_copies(folder: Path, n: int) -> list[Path]:
    """``n`` folders each holding a hard link to ``folder``'s ``data.bin``: ``n`` datasets
    of one file's bytes, in the disk space (and page cache) of one."""
    src = folder / "data.bin"
    inode = src.stat().st_ino
    root = folder.parent / f"{folder.name}-linked"
    copies = []
    for i in range(n):
        copy = root / f"ds{i}"
        link = copy / src.name
        if not (link.exists() and link.stat().st_ino == inode):
            copy.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            os.link(src, link)
        copies.append(copy)
    return copies
