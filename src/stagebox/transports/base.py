"""The transport contract (client side).

A transport moves bytes of one file to one staging target and knows nothing of
catalogs. The uploader orchestrates: it asks ``open`` where to resume, feeds
``write`` in order, hashing as it goes, and calls ``finish``. Resume, retry,
hashing and progress are written once, above this contract.
"""

from __future__ import annotations

import abc


class Transport(abc.ABC):
    """Sends one file at a time; ``close`` releases the connection for good."""

    #: Bytes the uploader reads, hashes and hands to ``write`` at a time.
    chunk_size: int = 1 << 20

    @abc.abstractmethod
    def open(self, target: str, length: int) -> int:
        """Start (or resume) sending to ``target``; returns bytes already staged."""

    @abc.abstractmethod
    def write(self, offset: int, chunk: bytes) -> None:
        """Send ``chunk`` at ``offset``; offsets arrive in order without gaps."""

    @abc.abstractmethod
    def finish(self) -> int:
        """Flush what was written; returns the bytes now staged."""

    @abc.abstractmethod
    def abandon(self) -> None:
        """Stop the current file without finishing it (bytes sent so far may stay)."""

    def put_bundle(self, parts: list[bytes]) -> str:
        """Write a bundle of small files where the server can take it; returns its
        name for the server. Only transports that stage behind the server's back
        (sftp) can; http posts bundles to the API instead."""
        raise NotImplementedError(f"{type(self).__name__} cannot stage bundles")

    def discard(self, target: str) -> None:  # noqa: B027 - optional capability
        """Delete what was sent to ``target`` (a file that changed must not be mixed)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""
