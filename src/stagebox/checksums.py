"""Streaming hashers: one object that feeds every requested algorithm at once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import BinaryIO

SUPPORTED = ("md5", "sha1", "sha256", "sha512")
# Every fixed-length digest hashlib guarantees: what a BagIt manifest may name
# (bagit-python takes the same set); SHAKE's length is not fixed, so not these.
HASHLIB_ALGORITHMS = frozenset(
    name for name in hashlib.algorithms_guaranteed if not name.startswith("shake_")
)
BUFFER_SIZE = 1 << 20


class MultiHasher:
    """Feed bytes once, get a hex digest per algorithm.

    ``copy()`` snapshots the state, so a caller can roll back a rejected chunk.
    """

    def __init__(self, algorithms: Iterable[str] = ("sha256",)) -> None:
        algos = tuple(dict.fromkeys(algorithms))
        for name in algos:
            if name not in HASHLIB_ALGORITHMS:
                raise ValueError(f"unsupported checksum algorithm {name!r}")
        self._hashes = {name: hashlib.new(name) for name in algos}
        self.length = 0

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._hashes)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        for h in self._hashes.values():
            h.update(data)
        self.length += len(data)

    def hexdigests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self._hashes.items()}

    def hexdigest(self, name: str) -> str:
        return self._hashes[name].hexdigest()

    def copy(self) -> MultiHasher:
        clone = MultiHasher(())
        clone._hashes = {name: h.copy() for name, h in self._hashes.items()}
        clone.length = self.length
        return clone

    def update_from(self, stream: BinaryIO, limit: int | None = None) -> int:
        """Hash up to ``limit`` bytes (all when None) read from ``stream``."""
        read = 0
        while limit is None or read < limit:
            want = BUFFER_SIZE if limit is None else min(BUFFER_SIZE, limit - read)
            chunk = stream.read(want)
            if not chunk:
                break
            self.update(chunk)
            read += len(chunk)
        return read
