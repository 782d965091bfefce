"""``push`` over SSH: each file to ``DIR/.NAME.part``, checked, then renamed to ``DIR/NAME``.

Only SFTP is used (no remote shell), so a push works against an account
limited to ``internal-sftp``. For each file:

1. ``DIR/NAME`` already there with the same size and sha256 (read back): nothing
   to send.
2. ``DIR/.NAME.part`` left by an interrupted push: the rest is appended from its
   size (a part longer than the file is dropped).
3. The whole part is read back over SFTP and its size and sha256 compared with
   the local file. A resumed part that does not match is sent again from zero,
   once; then the push fails.
4. An atomic rename (``posix-rename``) puts it at ``DIR/NAME``.

Extra push files go first and the package last, so its arrival means the whole
push arrived. Failures to reach the host raise :class:`PushUnreachable` with
the exact command to re-run from a host that can reach it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from stagebox import ssh
from stagebox.errors import AuthError, ChecksumMismatch, ConnectionFailed, TransportError
from stagebox.packages.record import Package, PushFile
from stagebox.transports.sftp import remote_size

CHUNK = 256 << 10
IN_FLIGHT = 16
READ_CHUNK = 4 << 20
FILE_MODE = 0o644

Progress = Callable[[PushFile, int], None]


def _ignore(_: PushFile, __: int) -> None:
    pass


class PushUnreachable(ConnectionFailed):
    """The target could not be reached from here; ``rerun`` is the command to run elsewhere."""

    def __init__(self, reason: str, rerun: str) -> None:
        self.reason = reason
        self.rerun = rerun
        super().__init__(reason)


@dataclass(frozen=True)
class SshDestination:
    host: str
    directory: str
    user: str = "ubuntu"
    port: int = 22
    key: Path = Path("~/.ssh/mdi-push-key.pem")
    known_hosts: Path = Path("~/.ssh/known_hosts")
    accept_new_host_key: bool = False
    connect_timeout: float = 15.0

    @property
    def target(self) -> str:
        """The name a push record keys on."""
        directory = "/" + self.directory.strip("/")
        return f"sftp://{self.user}@{self.host}:{self.port}{directory}"

    def ssh(self) -> tuple[ssh.SshTarget, ssh.SshOptions]:
        return ssh.SshTarget(self.host, self.port, self.user), ssh.SshOptions(
            key=self.key.expanduser(),
            known_hosts=self.known_hosts.expanduser(),
            accept_new_host_key=self.accept_new_host_key,
            connect_timeout=self.connect_timeout,
        )

    def rerun(self, package: Path) -> str:
        argv = [
            "stagebox", "push", str(package),
            "--push-server", self.host,
            "--push-port", str(self.port),
            "--push-dir", self.directory,
            "--push-user", self.user,
            "--push-key", str(self.key.expanduser().absolute()),
        ]  # fmt: skip
        return shlex.join(argv)


@dataclass
class FileOutcome:
    name: str
    state: str  # sent | resumed | present
    bytes_sent: int = 0


@dataclass
class PushOutcome:
    target: str
    files: list[FileOutcome] = field(default_factory=list)

    @property
    def bytes_sent(self) -> int:
        return sum(f.bytes_sent for f in self.files)


def push_ssh(
    package: Package, destination: SshDestination, progress: Progress = _ignore
) -> PushOutcome:
    """Push the package and its extra files; raises on any failure, never half-reports."""
    target, options = destination.ssh()
    ssh.check_private_key(options.key)
    try:
        return ssh.run(_push(package, destination, target, options, progress))
    except ConnectionFailed as exc:
        raise PushUnreachable(str(exc), destination.rerun(package.path)) from None
    except AuthError:
        raise AuthError(
            f"{target} refused key {options.key}: is its public key "
            f"({options.key}.pub) in {target.user}'s authorized_keys on {target.host}?"
        ) from None


async def _push(
    package: Package,
    destination: SshDestination,
    target: ssh.SshTarget,
    options: ssh.SshOptions,
    progress: Progress,
) -> PushOutcome:
    conn = await ssh.connect(target, options)
    try:
        try:
            sftp = await conn.start_sftp_client()
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionFailed(f"{target}: no SFTP service: {ssh.describe(exc)}") from None
        directory = destination.directory.rstrip("/") or "/"
        what = f"{directory} on {target}"
        try:
            await _check_directory(sftp, directory, target)
            outcome = PushOutcome(destination.target)
            for file in package.files:
                what = f"push {file.name} to {target}"
                outcome.files.append(await _put(sftp, file, directory, progress))
        except (asyncssh.SFTPError, OSError) as exc:
            raise TransportError(f"{what}: {ssh.describe(exc)}") from None
        return outcome
    except (asyncssh.DisconnectError, asyncssh.ConnectionLost, ConnectionError) as exc:
        raise ConnectionFailed(f"lost the connection to {target}: {ssh.describe(exc)}") from None
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), 10)


async def _check_directory(sftp: asyncssh.SFTPClient, directory: str, target: object) -> None:
    if await remote_size(sftp, directory, directory=True) is None:
        raise TransportError(
            f"--push-dir {directory} does not exist on {target}; ask its admin to create it"
        )


async def remote_sha256(sftp: asyncssh.SFTPClient, path: str) -> tuple[int, str]:
    """Size and sha256 of a remote file, read back over SFTP."""
    digest = hashlib.sha256()
    size = 0
    async with sftp.open(path, "rb", encoding=None) as f:
        while chunk := await f.read(READ_CHUNK):
            assert isinstance(chunk, bytes)  # no encoding: the file is read as bytes
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


async def _put(
    sftp: asyncssh.SFTPClient, file: PushFile, directory: str, progress: Progress
) -> FileOutcome:
    final = posixpath.join(directory, file.name)
    part = posixpath.join(directory, f".{file.name}.part")
    if await remote_size(sftp, final) == file.size and await remote_sha256(sftp, final) == (
        file.size,
        file.sha256,
    ):
        progress(file, file.size)
        return FileOutcome(file.name, "present")
    offset = await remote_size(sftp, part) or 0
    if offset > file.size:
        await sftp.remove(part)
        offset = 0
    resumed = offset > 0
    sent = await _send(sftp, file, part, offset, progress)
    size, sha256 = await remote_sha256(sftp, part)
    if (size, sha256) != (file.size, file.sha256) and resumed:
        # The part left behind was not a prefix of this file: start over, once.
        await sftp.remove(part)
        sent += await _send(sftp, file, part, 0, progress)
        resumed = False
        size, sha256 = await remote_sha256(sftp, part)
    if size != file.size:
        raise TransportError(f"{part}: the target holds {size} bytes, expected {file.size}")
    if sha256 != file.sha256:
        raise ChecksumMismatch("sha256", file.sha256, f"{sha256} (read back from {part})")
    try:
        await sftp.posix_rename(part, final)
    except asyncssh.SFTPOpUnsupported:
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await sftp.remove(final)
        await sftp.rename(part, final)
    return FileOutcome(file.name, "resumed" if resumed else "sent", sent)


async def _send(
    sftp: asyncssh.SFTPClient, file: PushFile, part: str, offset: int, progress: Progress
) -> int:
    """Write the file from ``offset`` with up to IN_FLIGHT writes outstanding."""
    progress(file, offset)
    flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT
    attrs = asyncssh.SFTPAttrs(permissions=FILE_MODE)
    async with sftp.open(part, flags, attrs=attrs, encoding=None) as handle:
        pending: collections.deque[tuple[asyncio.Future[int], int]] = collections.deque()
        try:
            with open(file.path, "rb") as local:
                local.seek(offset)
                position = offset
                while chunk := local.read(CHUNK):
                    if position + len(chunk) > file.size:
                        raise TransportError(f"{file.path} grew while it was pushed")
                    write: asyncio.Future[int] = asyncio.ensure_future(
                        handle.write(chunk, position)
                    )
                    pending.append((write, len(chunk)))
                    position += len(chunk)
                    while len(pending) >= IN_FLIGHT:
                        await _settle(pending, file, progress)
                    await asyncio.sleep(0)  # the writes go out while the loop turns
                while pending:
                    await _settle(pending, file, progress)
        finally:
            for write, _ in pending:
                write.cancel()
            if pending:
                await asyncio.gather(*(w for w, _ in pending), return_exceptions=True)
    return position - offset


async def _settle(
    pending: collections.deque[tuple[asyncio.Future[int], int]], file: PushFile, progress: Progress
) -> None:
    write, length = pending.popleft()
    await write
    progress(file, length)
