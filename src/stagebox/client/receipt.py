"""A receipt: is every local file stored, byte for byte? Nothing is uploaded.

Each selected file is hashed here (sha256, the way the server recorded it),
and the server is asked in batches whether the newest stored version of its
path has that size and sha256. The server answers from its catalog's recorded
digests (and its fixity audits), never from this machine's journal.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

from stagebox.client.api import StageboxClient
from stagebox.client.scan import SOURCE_OPEN_FLAGS, LocalFile

BATCH = 1000
READ_SIZE = 1 << 20
# Smaller files are hashed on the scanning thread: a hand-off costs more.
POOL_FROM = 1 << 20
STATES = ("stored", "differs", "missing", "corrupt", "in progress", "unreadable")


@dataclass(frozen=True)
class Receipt:
    """One file's answer: ``state`` is one of :data:`STATES`."""

    file: LocalFile
    state: str
    size: int
    sha256: str | None = None
    version: int | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, object]:
        f = self.file
        return {
            "path": str(f.path),
            "owner": f.owner or "",
            "experiment": f.experiment or "",
            "dataset": f.dataset,
            "directory": f.directory,
            "filename": f.filename,
            "size": self.size,
            "sha256": self.sha256,
            "state": self.state,
            "version": self.version,
            "detail": self.detail,
        }


def file_sha256(file: LocalFile) -> tuple[int, str]:
    """(size, sha256) of the file as it is now; OSError when it cannot be read.

    Read into one reused buffer: on a warm page cache this is as fast as hashing
    a mapping of the file, and memory stays at the buffer.
    """
    with os.fdopen(os.open(file.path, SOURCE_OPEN_FLAGS), "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{file.path} is no longer a regular file")
        h = hashlib.sha256()
        buffer = bytearray(min(READ_SIZE, st.st_size + 1))
        view = memoryview(buffer)
        size = 0
        while n := f.readinto(buffer):
            h.update(view[:n])
            size += n
        return size, h.hexdigest()


def _hashed(file: LocalFile) -> tuple[LocalFile, int, str | None, str | None]:
    if file.error:
        return file, file.size, None, file.error
    try:
        size, digest = file_sha256(file)
    except OSError as exc:
        return file, file.size, None, exc.strerror or str(exc)
    return file, size, digest, None


class Verifier:
    """Hashes (large files on ``threads`` threads, small ones on the caller's) while
    the previous batch is being checked."""

    def __init__(self, client: StageboxClient, threads: int = 2, batch: int = BATCH) -> None:
        self.client = client
        self.threads = threads
        self.batch = batch

    def run(self, files: Iterable[LocalFile]) -> Iterator[Receipt]:
        with (
            ThreadPoolExecutor(self.threads, thread_name_prefix="stagebox-hash") as hashers,
            ThreadPoolExecutor(1, thread_name_prefix="stagebox-check") as checker,
        ):
            pending: Future[list[Receipt]] | None = None
            it = iter(files)
            while chunk := list(islice(it, self.batch)):
                large = {
                    i: hashers.submit(_hashed, f)
                    for i, f in enumerate(chunk)
                    if f.size >= POOL_FROM and not f.error
                }
                hashed = [
                    large[i].result() if i in large else _hashed(f) for i, f in enumerate(chunk)
                ]
                if pending is not None:
                    yield from pending.result()
                pending = checker.submit(self._check, hashed)
            if pending is not None:
                yield from pending.result()

    def _check(self, hashed: list[tuple[LocalFile, int, str | None, str | None]]) -> list[Receipt]:
        entries = []
        for f, size, digest, _ in hashed:
            if digest is not None:
                entry = {k: v for k, v in f.registration().items() if k != "mtime"}
                entries.append({**entry, "size": size, "sha256": digest})
        answers = iter(self.client.check(entries) if entries else [])
        receipts = []
        for f, size, digest, error in hashed:
            if f.error:  # a name the server refuses: it can never be stored
                receipts.append(Receipt(f, "missing", size, detail=f.error))
                continue
            if digest is None:
                receipts.append(Receipt(f, "unreadable", size, detail=error))
                continue
            answer = next(answers)
            receipts.append(
                Receipt(
                    f,
                    answer["state"],
                    size,
                    digest,
                    answer.get("version"),
                    answer.get("detail"),
                )
            )
        return receipts
