"""The storage backend contract (server side).

A backend is a box: keys are '/'-separated paths relative to the box root. A key
that would resolve outside the root is :class:`~stagebox.errors.KeyEscapesRoot`,
never a path. Backends implement a handful of primitives; resume, hashing and
verification are written once above them, in the services.

Objects carry **metadata**: a few names (see :func:`check_metadata`) with text
values, written with the bytes and read back with :meth:`StorageBackend.metadata`.
A writer's ``metadata`` may change until it closes, so digests known only after
the last byte go with the object.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from stagebox.checksums import BUFFER_SIZE, MultiHasher
from stagebox.errors import InvalidInput

_METADATA_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``metadata`` once every name and value keeps the rules, or
    :class:`~stagebox.errors.InvalidInput` naming the first that breaks one.

    Names are 1-64 lowercase ASCII letters, digits, ``-`` and ``_`` (they must
    survive as HTTP header names and extended attribute names); values are any
    text, stored as UTF-8.
    """
    for name, value in metadata.items():
        if not isinstance(name, str) or not _METADATA_NAME.match(name):
            raise InvalidInput(
                "metadata",
                "names are 1-64 lowercase letters, digits, '-' or '_', starting with a "
                "letter or digit",
                name,
            )
        if not isinstance(value, str):
            raise InvalidInput("metadata", f"the value of {name!r} must be text", value)
    return dict(metadata)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@dataclass(frozen=True)
class PromoteResult:
    """How a promotion happened.

    ``renamed`` means the bytes were moved without being read (same filesystem),
    so the source key no longer exists. Otherwise the bytes were copied and
    ``digests`` holds what the copy hashed to; the caller compares them and
    deletes the source only once the promotion is recorded.
    """

    renamed: bool
    digests: dict[str, str] = field(default_factory=dict)


class StagedWriter(abc.ABC):
    """Appends to one key from a starting offset.

    ``metadata`` is what the object holds once this writer closes; a caller may
    change it until then (see :meth:`StorageBackend.open_write`).
    """

    metadata: dict[str, str]

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abc.abstractmethod
    def tell(self) -> int:
        """Absolute offset of the next byte."""

    @abc.abstractmethod
    def discard_to(self, offset: int) -> None:
        """Drop bytes written by this writer past ``offset`` (a rejected chunk)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Make what was written durable (when the box is configured so) and close."""

    def __enter__(self) -> StagedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StorageBackend(abc.ABC):
    """A named storage box. See the module docstring for the key rules."""

    name: str

    #: Whether :meth:`open_read` can read back an object whose write is unfinished
    #: (closed short of its ``size_hint``). Where it cannot (S3: the parts of an
    #: open multipart upload cannot be read), a running hash lost with its process
    #: cannot be rebuilt from the staged prefix.
    can_read_partial: bool = True

    @abc.abstractmethod
    def open_write(
        self,
        key: str,
        offset: int = 0,
        size_hint: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StagedWriter:
        """Write ``key`` from ``offset``; bytes at and past ``offset`` are replaced.

        ``offset`` must not exceed the current size. ``size_hint`` is the final
        size when known, so a backend can pick its strategy (direct I/O,
        multipart part size); a writer closed short of it leaves the object
        *unfinished*, to be continued by the next ``open_write`` at its size.
        A backend may take only some offsets below the current size (S3: a part
        boundary or inside the tail not yet sent as a part) and refuses others with
        :class:`~stagebox.errors.StorageError`.

        ``metadata`` (checked by :func:`check_metadata`) becomes the object's
        metadata when the writer closes; the writer's ``metadata`` dict may be
        changed until then. A write from byte 0 replaces the object's metadata
        (with none when none is given); a write continuing from an offset keeps
        what earlier writers gave unless it gives or changes it.
        """

    @abc.abstractmethod
    def metadata(self, key: str) -> dict[str, str]:
        """The metadata of ``key`` (empty when it has none);
        :class:`~stagebox.errors.NotFound` when there is no such object."""

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """Bytes stored under ``key``, or None when there is no such key."""

    @abc.abstractmethod
    def open_read(self, key: str, offset: int = 0) -> BinaryIO: ...

    @abc.abstractmethod
    def promote(
        self,
        src_key: str,
        dest: StorageBackend,
        dest_key: str,
        algorithms: tuple[str, ...],
        sync: bool = True,
    ) -> PromoteResult:
        """Make ``src_key``'s bytes available as ``dest_key`` in ``dest``.

        With ``sync`` the bytes are durable in ``dest`` on return; without it the
        caller promises ``dest.flush()`` before recording the promotion (batches).
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every key under ``prefix`` (a folder-like prefix), in no fixed order."""

    @contextmanager
    def batch(self) -> Iterator[None]:
        """A block of many small operations; backends may reuse handles inside it."""
        yield

    def stream_copy(
        self,
        src_key: str,
        dest: StorageBackend,
        dest_key: str,
        algorithms: tuple[str, ...],
        sync: bool = True,
        size: int | None = None,
    ) -> PromoteResult:
        """Copy ``src_key`` (bytes and metadata) into ``dest`` through this process,
        hashing what is copied: how :meth:`promote` moves bytes that no rename or
        server-side copy can."""
        hasher = MultiHasher(algorithms)
        if size is None:
            size = self.size(src_key)
        metadata = self.metadata(src_key)
        with (
            self.open_read(src_key) as reader,
            dest.open_write(dest_key, 0, size, metadata=metadata) as writer,
        ):
            while chunk := reader.read(BUFFER_SIZE):
                hasher.update(chunk)
                writer.write(chunk)
        if sync:
            dest.sync(dest_key)
        return PromoteResult(renamed=False, digests=hasher.hexdigests())

    def start_writeback(self, key: str) -> None:  # noqa: B027 - optional capability
        """Start writing ``key``'s dirty pages to disk without waiting, so that a
        later ``promote`` with ``sync`` has less to wait for."""

    def can_rename_to(self, dest: StorageBackend) -> bool:
        """Whether :meth:`promote` into ``dest`` moves bytes without reading them."""
        return False

    def identity(self, key: str, strict: bool = False) -> str | None:
        """A token that changes when the object at ``key`` is replaced or rewritten
        (None when the backend cannot tell, or nothing is there). ``strict`` also
        changes with anything else done to it (times set back, a link made)."""
        return None

    def links(self, key: str) -> int:
        """How many names the object at ``key`` has (1 where there are no hard links)."""
        return 1

    def sync(self, key: str) -> None:  # noqa: B027 - optional capability
        """Make ``key``'s bytes durable (no-op where writes are durable already)."""

    def flush(self) -> None:  # noqa: B027 - optional capability
        """Make every completed write durable at once (batched small files)."""
