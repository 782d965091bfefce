"""SFTP to an OpenSSH staging host: pipelined writes to ``NAME.part``, then a rename.

One SSH connection per transport (the uploader keeps one per thread) carries
every file that thread sends. ``open`` stats the partial file and answers its
size, so a resumed upload re-hashes that prefix locally and sends the rest.
``write`` hands each chunk to the SSH loop without waiting: up to
``queue_depth`` chunks (4 MiB) are in flight as parallel write requests.
``finish`` waits for them, sets
the file's mode, renames it into place and answers the size the server holds.
"""

from __future__ import annotations

import collections
import contextlib
import posixpath
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TypeVar

import asyncssh

from stagebox import ssh
from stagebox.errors import ConnectionFailed, StageboxError, TransportError
from stagebox.transports.base import Transport

DIR_MODE = 0o2770
FILE_MODE = 0o660
BUNDLE_DIR = ".bundles"
T = TypeVar("T")


REFUSALS = (
    asyncssh.SFTPPermissionDenied,
    asyncssh.SFTPNoSpaceOnFilesystem,
    asyncssh.SFTPQuotaExceeded,
    asyncssh.SFTPWriteProtect,
)


def _error(what: str, exc: BaseException) -> StageboxError:
    """Map an SFTP failure: a lost connection is retried, a refusal is not."""
    if isinstance(exc, StageboxError):
        return exc
    if isinstance(exc, REFUSALS):
        return TransportError(f"{what}: {ssh.describe(exc)}")
    return ConnectionFailed(f"{what}: {ssh.describe(exc)}")


class SftpTransport(Transport):
    # At most the server's largest write request (OpenSSH's: 255 KiB, which it says in
    # limits@openssh.com), so asyncssh sends each chunk as one request instead of
    # splitting it in two; smaller buffers keep the client's memory low.
    chunk_size = 256 << 10

    def __init__(
        self,
        target: ssh.SshTarget,
        options: ssh.SshOptions,
        root: str,
        queue_depth: int = 16,
        set_modes: bool = True,
    ) -> None:
        self.target = target
        self.set_modes = set_modes  # OpenSSH staging: group-writable for the server
        self.options = options
        self.root = root.rstrip("/")  # this uploader's own staging directory
        self._depth = queue_depth
        self._conn: ssh.Closable | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._connecting: Future[asyncssh.SFTPClient] | None = None
        self._dirs: set[str] = set()
        self._path = ""
        self._length = 0
        self._file: asyncssh.SFTPClientFile | None = None
        self._pending: collections.deque[Future[int]] = collections.deque()

    # -- connection --------------------------------------------------------

    def connect_soon(self) -> None:
        """Start connecting now, in the background; the first file waits for it."""
        if self._sftp is None and self._connecting is None:
            self._connecting = ssh.submit(self._connect())

    def _client(self) -> asyncssh.SFTPClient:
        if self._sftp is None:
            pending, self._connecting = self._connecting, None
            self._sftp = pending.result() if pending is not None else ssh.run(self._connect())
        return self._sftp

    async def _connect(self) -> asyncssh.SFTPClient:
        sftp, self._conn = await ssh.start_sftp(self.target, self.options)
        largest = sftp.limits.max_write_len
        if 0 < largest < self.chunk_size:
            self.chunk_size = largest
        return sftp

    def _settle(self, future: Future[T], what: str) -> T:
        """Wait for work on the SSH loop. A failure is mapped into the error tree, and
        a connection it broke is dropped, so the next ``open`` reconnects."""
        try:
            return future.result()
        except BaseException as exc:
            error = _error(what, exc)
            if isinstance(error, ConnectionFailed):
                self._drop()
            raise error from None

    def _drop(self) -> None:
        """Forget a connection that failed; the next ``open`` reconnects."""
        conn, self._conn, self._sftp, self._file = self._conn, None, None, None
        self._dirs.clear()
        if conn is not None:
            conn.close()

    # -- one file ------------------------------------------------------------

    def open(self, target: str, length: int) -> int:
        self._abort_pending()
        self._path, self._length = target, length
        sftp = self._client()
        offset, self._file = self._settle(
            ssh.submit(self._open(sftp, target, length)), f"open {target}"
        )
        return offset

    async def _open(
        self, sftp: asyncssh.SFTPClient, path: str, length: int
    ) -> tuple[int, asyncssh.SFTPClientFile | None]:
        await self._makedirs(sftp, posixpath.dirname(path))
        final = await remote_size(sftp, path)
        if final == length:
            return length, None  # renamed into place by an earlier attempt
        if final is not None:
            await sftp.remove(path)
        part = path + ".part"
        size = await remote_size(sftp, part)
        if size is not None and size > length:
            await sftp.remove(part)
            size = None
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT
        handle = await sftp.open(part, flags, attrs=self._attrs(FILE_MODE), encoding=None)
        if size is None and self.set_modes:
            await handle.chmod(FILE_MODE)  # the server's umask must not narrow it
        return size or 0, handle

    async def _makedirs(self, sftp: asyncssh.SFTPClient, path: str) -> None:
        """Create missing directories (mode 2770) up to ``path``; remembered per connection."""
        missing = []
        while path and path != "/" and path not in self._dirs:
            if await remote_size(sftp, path, directory=True) is not None:
                break
            missing.append(path)
            path = posixpath.dirname(path)
        for directory in reversed(missing):
            try:
                await sftp.mkdir(directory, self._attrs(DIR_MODE))
            except asyncssh.SFTPFailure:
                if await remote_size(sftp, directory, directory=True) is None:
                    raise
            else:
                if self.set_modes:
                    await sftp.chmod(directory, DIR_MODE)
            self._dirs.add(directory)
        self._dirs.add(path)

    def _attrs(self, mode: int) -> asyncssh.SFTPAttrs:
        return asyncssh.SFTPAttrs(permissions=mode) if self.set_modes else asyncssh.SFTPAttrs()

    def write(self, offset: int, chunk: bytes) -> None:
        if self._file is None:
            raise TransportError(f"{self._path}: write without open")
        self._pending.append(ssh.submit(self._file.write(chunk, offset)))
        while len(self._pending) > self._depth:
            self._wait(self._pending.popleft())

    def _wait(self, future: Future[int]) -> None:
        try:
            self._settle(future, f"write {self._path}")
        except StageboxError:
            self._abort_pending()
            raise

    def finish(self) -> int:
        while self._pending:
            self._wait(self._pending.popleft())
        handle, self._file = self._file, None
        return self._settle(ssh.submit(self._finish(handle)), f"finish {self._path}")

    async def _finish(self, handle: asyncssh.SFTPClientFile | None) -> int:
        assert self._sftp is not None
        if handle is not None:
            await handle.close()
            await self._sftp.posix_rename(self._path + ".part", self._path)
        return await remote_size(self._sftp, self._path) or 0

    def _abort_pending(self) -> None:
        pending, self._pending = self._pending, collections.deque()
        for future in pending:
            future.cancel()
        for future in pending:
            with contextlib.suppress(Exception):  # the write is being abandoned
                future.result(timeout=30)

    def abandon(self) -> None:
        self._abort_pending()
        handle, self._file = self._file, None
        if handle is not None and self._sftp is not None:
            try:
                ssh.run(handle.close(), timeout=30)
            except Exception:
                self._drop()

    def discard(self, target: str) -> None:
        self.abandon()
        sftp = self._client()
        for path in (target + ".part", target):
            self._settle(ssh.submit(_remove(sftp, path)), f"remove {path}")

    # -- many small files ----------------------------------------------------

    def put_bundle(self, parts: list[bytes]) -> str:
        """Write a bundle file into this uploader's staging directory; returns its
        path relative to that directory (what ``/bundle/staged`` takes)."""
        relative = f"{BUNDLE_DIR}/{uuid.uuid4().hex}.bundle"
        path = f"{self.root}/{relative}"
        sftp = self._client()
        self._settle(ssh.submit(self._put(sftp, path, parts)), f"write {path}")
        return relative

    async def _put(self, sftp: asyncssh.SFTPClient, path: str, parts: list[bytes]) -> None:
        await self._makedirs(sftp, posixpath.dirname(path))
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
        async with sftp.open(path, flags, attrs=self._attrs(FILE_MODE), encoding=None) as handle:
            offset = 0
            writes = []
            for chunk in gather(parts, self.chunk_size):
                writes.append(handle.write(chunk, offset))
                offset += len(chunk)
            for write in writes:
                await write

    def close(self) -> None:
        self.abandon()
        pending, self._connecting = self._connecting, None
        if pending is not None:
            with contextlib.suppress(Exception):  # a connection nobody used
                pending.result(timeout=30)
        if self._conn is not None:
            conn = self._conn
            self._drop()
            with contextlib.suppress(Exception):  # closing anyway
                ssh.run(conn.wait_closed(), timeout=10)


def gather(parts: list[bytes], size: int) -> Iterator[bytes]:
    """The bytes of ``parts`` in order, as pieces of ``size`` (the last may be shorter):
    a bundle of small files goes out as a few full write requests, not one per file."""
    pending: list[memoryview] = []
    held = 0
    for part in parts:
        view = memoryview(part)
        while view:
            take, view = view[: size - held], view[size - held :]
            pending.append(take)
            held += len(take)
            if held == size:
                yield b"".join(pending)
                pending.clear()
                held = 0
    if pending:
        yield b"".join(pending)


async def _remove(sftp: asyncssh.SFTPClient, path: str) -> None:
    with contextlib.suppress(asyncssh.SFTPNoSuchFile):
        await sftp.remove(path)


async def remote_size(sftp: asyncssh.SFTPClient, path: str, directory: bool = False) -> int | None:
    """Size of a regular file (or 0 for a directory when ``directory``); None if absent."""
    try:
        attrs = await sftp.lstat(path)
    except asyncssh.SFTPNoSuchFile:
        return None
    kind = attrs.type
    if directory:
        if kind != asyncssh.FILEXFER_TYPE_DIRECTORY:
            raise TransportError(f"{path} exists and is not a directory")
        return 0
    if kind != asyncssh.FILEXFER_TYPE_REGULAR:
        raise TransportError(f"{path} exists and is not a regular file")
    return attrs.size or 0
