"""BagIt's digests: which algorithm a manifest names, and the common four on two cores.

A manifest's algorithm is named as RFC 8493 section 2.4 normalises it (lower
case, letters and digits only: ``sha384``, ``sha3256``, ``blake2b512``);
:data:`MANIFEST_ALGORITHMS` holds every such name Python's hashlib can compute
here, and :class:`ManifestHasher` computes any of them.

:data:`ALGORITHMS` are the four the ingest worker records while it stages a
tar. hashlib releases the GIL while it hashes a large buffer: the calling
thread hashes each chunk with sha256 and sha1 (and reads and writes it); a
helper thread, the :class:`HashLane`, hashes the same chunk with md5 and
sha512, taking chunks from a bounded queue so the caller never waits for it
mid-file and memory stays at a few chunks. The two sides cost about the same
per byte.
"""

from __future__ import annotations

import functools
import hashlib
import queue
import re
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from stagebox.checksums import MultiHasher

# What staging records for every file (the catalog has a column for each).
ALGORITHMS = ("md5", "sha1", "sha256", "sha512")

# Below this a hand-off to the lane costs more than it saves.
SPLIT_AT = 64 << 10


def normalized(name: str) -> str:
    """An algorithm's name as a manifest must spell it: RFC 8493 section 2.4, "The
    name of the checksum algorithm MUST be normalized for use in the manifest's
    filename by lowercasing the common name of the algorithm and removing all
    non-alphanumeric characters" (``SHA3-256`` and hashlib's ``sha3_256`` are
    ``sha3256``)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _constructors() -> dict[str, Callable[[], Any]]:
    found: dict[str, Callable[[], Any]] = {}
    for name in sorted(hashlib.algorithms_available):
        if name.startswith("shake"):
            continue  # its length is the caller's choice: a manifest name cannot say it
        try:
            hashlib.new(name)
        except ValueError:
            continue  # listed, but this OpenSSL will not compute it (md4 without "legacy")
        found.setdefault(normalized(name), functools.partial(hashlib.new, name))
    # The common names with their size: hashlib's blake2b and blake2s are the full
    # 512 and 256 bits; BLAKE2b-256 and -384 are the same function made shorter.
    found["blake2b512"] = hashlib.blake2b
    found["blake2s256"] = hashlib.blake2s
    found["blake2b256"] = functools.partial(hashlib.blake2b, digest_size=32)
    found["blake2b384"] = functools.partial(hashlib.blake2b, digest_size=48)
    return found


_CONSTRUCTORS = _constructors()

MANIFEST_ALGORITHMS = frozenset(_CONSTRUCTORS)
"""Every algorithm name (RFC 8493 form) a manifest may use that stagebox can check."""

# RFC 8493 section 2.4: "the checksum algorithm SHOULD be registered in IANA's
# "Named Information Hash Algorithm Registry" [...] but MAY for backwards
# compatibility also be MD5 [RFC1321] or SHA-1 [RFC3174]". The registry's
# algorithms, in manifest names (blake2b and blake2s are its blake2b-512 and
# blake2s-256); sha224, sha512224, ripemd160 or sm3 are not in it.
REGISTERED = frozenset(
    {"sha256", "sha384", "sha512", "sha3224", "sha3256", "sha3384", "sha3512"}
    | {"blake2b256", "blake2b512", "blake2b", "blake2s256", "blake2s"}
    | {"md5", "sha1"}
)


class ManifestHasher(MultiHasher):
    """Digests of one stream for any of :data:`MANIFEST_ALGORITHMS` (RFC 8493 names);
    feed with :meth:`update`. An unknown name raises KeyError."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        super().__init__(())
        self._hashes = {name: _CONSTRUCTORS[name]() for name in dict.fromkeys(algorithms)}


class HashLane:
    """A helper thread that hashes chunks in the order they were handed over."""

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[tuple[Any, Any]] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stagebox-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            hashes, data = self._queue.get()
            if hashes is None:
                if data is None:
                    return
                data.set()  # a drain: everything before it is hashed
                continue
            try:
                for h in hashes:
                    h.update(data)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller at drain
                self._error = exc

    def feed(self, hashes: tuple[Any, ...], data: bytes) -> None:
        self._queue.put((hashes, data))

    def drain(self) -> None:
        """Wait until every chunk handed over so far is hashed."""
        done = threading.Event()
        self._queue.put((None, done))
        done.wait()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._queue.put((None, None))
        self._thread.join()

    def __enter__(self) -> HashLane:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class BagHasher:
    """md5, sha1, sha256 and sha512 of one stream; feed with :meth:`update`.

    Every hash sees the stream's chunks in order. Once a chunk has gone to the
    lane, md5 and sha512 of every later chunk, small ones too, go the same way
    until :meth:`hexdigests` drains the lane: hashed here at once, a small chunk
    would overtake the big ones still queued.
    """

    def __init__(self, lane: HashLane | None) -> None:
        self._lane = lane
        # With SHA extensions sha256 and sha1 cost about 0.6 ns a byte each, md5
        # 1.4 and sha512 1.2; the caller's side also reads and writes.
        self._near = (hashlib.sha256(), hashlib.sha1())
        self._far = (hashlib.md5(), hashlib.sha512())
        self._handed = False
        self.length = 0

    def update(self, data: bytes) -> None:
        """Hash ``data``; it must not change afterwards (bytes are safe)."""
        self.length += len(data)
        if self._lane is not None and (self._handed or len(data) >= SPLIT_AT):
            self._lane.feed(self._far, data)
            self._handed = True
        else:
            for h in self._far:
                h.update(data)
        for h in self._near:
            h.update(data)

    def hexdigests(self) -> dict[str, str]:
        if self._handed and self._lane is not None:
            self._lane.drain()
            self._handed = False
        digests = {h.name: h.hexdigest() for h in (*self._far, *self._near)}
        return {name: digests[name] for name in ALGORITHMS}
