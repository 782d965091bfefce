"""Sessions OpenSSH's sshd hands over: the endpoint's SFTP and SCP behind sshd.

On a box added with ``--sftp-endpoint sshd``, sshd authenticates the uploader
(its AuthorizedKeysCommand is ``stagebox admin authorized-keys``) and runs the
forced command :mod:`stagebox.sftpd.relay` for every session. The relay passes
the session's three streams over the box's Unix socket, with the request its
key was approved under. Here the streams are served by the same confined
server as the built-in endpoint's (:class:`~stagebox.sftpd.fs.UploaderSFTP`),
sharing its per-file state, so a handle in one session is cut off when another
session seals the file, whichever way either came in.

The relay runs as the staging account; the socket is the only thing of
stagebox's it can reach. A peer that is not that account (or this one, or
root) is refused by its credentials, whatever the socket's mode.

A session holds three descriptors of the server's from the moment they arrive
until it ends, and counts against its uploader's limit for as long: a session
whose client stops reading its replies is not served further (its input waits
on its output, :class:`Gated`) and, once it ends, gets :data:`GRACE` seconds for
what it wrote to go out before its streams are cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import socket
import stat
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import asyncssh
from asyncssh.scp import run_scp_server
from asyncssh.sftp import run_sftp_server

from stagebox.errors import ConfigError
from stagebox.sftpd import catalog
from stagebox.sftpd.catalog import Login
from stagebox.sshpipes import PipeChannel, PipeReader, PipeWriter, widen

if TYPE_CHECKING:
    from stagebox.sftpd.endpoint import Endpoint
    from stagebox.sftpd.fs import UploaderSFTP

log = logging.getLogger(__name__)

HEADER_LIMIT = 8192
HEADER_MAX = 256 << 10  # sshd passes a command of up to 128 KiB (Linux's MAX_ARG_STRLEN)
READ_LIMIT = 1 << 20
GRACE = 5.0
STOP_GRACE = 15.0
SFTP_VERSION = 3
SFTP_COMMANDS = ("internal-sftp", "sftp-server")
ONLY = "this account serves SFTP and SCP only"


def sftp_command(command: str | None) -> str | None:
    """``"sftp"`` or ``"scp"`` for what the client asked sshd for, else None.

    A subsystem request reaches the forced command as the subsystem's configured
    program (``internal-sftp``, ``/usr/lib/openssh/sftp-server``); SCP (legacy) as
    ``scp -t ...``; a shell as nothing.
    """
    parts = (command or "").split()
    if not parts:
        return None
    if parts[0] == "scp":
        return "scp"
    if parts[0].rsplit("/", 1)[-1] in SFTP_COMMANDS:
        return "sftp"
    return None


class Gated:
    """A session's input, read only while its output is not backed up.

    asyncssh's SFTP and SCP servers write each reply without waiting for it to go
    out, so a client that sends requests and never reads the replies would grow
    the server's buffers without end. Waiting for the output before reading the
    next request stops reading the client instead, and flow control (SSH's
    window, a full pipe) stops the client.
    """

    def __init__(self, reader: Any, writer: Any) -> None:
        self._reader = reader
        self._drain = writer.drain

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    async def readexactly(self, n: int) -> bytes:
        await self._drain()
        return cast(bytes, await self._reader.readexactly(n))

    async def readline(self) -> bytes:
        await self._drain()
        return cast(bytes, await self._reader.readline())

    async def read(self, n: int = -1) -> bytes:
        await self._drain()
        return cast(bytes, await self._reader.read(n))


async def serve(
    sftp: UploaderSFTP, kind: str, command: str, stdin: Any, stdout: Any, stderr: Any
) -> None:
    """asyncssh's SFTP (``kind`` ``"sftp"``) or SCP server on one session's streams,
    either way it came in."""
    gated = cast(Any, Gated(stdin, stdout))
    try:
        if kind == "sftp":
            await run_sftp_server(sftp, gated, stdout, SFTP_VERSION)
        else:
            handler = run_scp_server(sftp, command, gated, stdout, stderr)
            if handler is not None:
                await handler
    except (EOFError, OSError, asyncssh.Error) as exc:
        # The client went before the SFTP handshake, or its streams broke mid-SCP.
        log.info("sftp %s: %s session ended: %s", sftp.who.name, kind, exc or type(exc).__name__)
        with contextlib.suppress(Exception):
            sftp.exit()


class _Pipe(asyncio.streams.FlowControlMixin):
    """A write pipe's protocol that says when the pipe is closed for good."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


class Session:
    """One session sshd handed over: its streams, its uploader, its exit status."""

    def __init__(self, who: Login, peer: str) -> None:
        self.who = who
        self.peer = peer
        self.last = time.monotonic()
        self.status: int | None = None
        self.done = asyncio.Event()
        self.out: asyncio.WriteTransport
        self._input: asyncio.ReadTransport | None = None
        self._outputs: list[tuple[asyncio.WriteTransport, _Pipe]] = []

    def touch(self) -> None:
        self.last = time.monotonic()

    async def open(self, fds: list[int]) -> tuple[PipeReader, PipeWriter, PipeWriter]:
        """Take over the session's stdin, stdout and stderr: each descriptor leaves
        ``fds`` as it is taken, so the caller closes only what was not."""
        loop = asyncio.get_running_loop()
        files = []
        try:
            widen(fds[0])  # the way the uploads come in
            for fd, mode in zip(fds, ("rb", "wb", "wb"), strict=True):
                files.append(os.fdopen(fd, mode, 0))
        finally:
            del fds[: len(files)]
        try:
            reader = asyncio.StreamReader(limit=READ_LIMIT)
            protocol = asyncio.StreamReaderProtocol(reader)
            self._input, _ = await loop.connect_read_pipe(lambda: protocol, files[0])
            files.pop(0)
            channel = PipeChannel(lambda: self.out.is_closing(), self.finish, self.done)
            writers = []
            while files:
                transport, pipe = await loop.connect_write_pipe(_Pipe, files[0])
                files.pop(0)
                self._outputs.append((transport, pipe))
                writers.append(
                    PipeWriter(asyncio.StreamWriter(transport, pipe, None, loop), channel)
                )
        except BaseException:
            for f in files:
                f.close()
            await self.close(0)
            raise
        self.out = self._outputs[0][0]
        return PipeReader(reader, channel), writers[0], writers[1]

    def finish(self, status: int) -> None:
        """The session is over: remember the status (the first one given)."""
        if self.status is None:
            self.status = status
        self.done.set()

    def end_input(self) -> None:
        """No more requests: the server closes (and seals) its handles as it would
        at the client's EOF, and nothing waits on a client that does not read."""
        if self._input is not None:
            self._input.close()
        for transport, _ in self._outputs:
            transport.abort()

    async def close(self, grace: float) -> None:
        """Close the streams, giving what was written ``grace`` seconds to go out."""
        if self._input is not None:
            self._input.close()
        for transport, _ in self._outputs:
            transport.close()
        closed = [pipe.closed for _, pipe in self._outputs]
        if closed:
            _, pending = await asyncio.wait(closed, timeout=grace)
            if pending:
                for transport, _ in self._outputs:
                    transport.abort()
                await asyncio.wait(closed)

    def close_idle(self, why: str) -> None:
        log.info("sftp %s: closing a session (%s)", self.who.name, why)
        self.finish(255)


def _peer_uid(conn: socket.socket) -> tuple[int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _receive(conn: socket.socket, timeout: float) -> tuple[bytes, list[int]]:
    """The relay's header line and the streams sent with it (blocking, on a worker
    thread). The caller owns the descriptors from here, whatever the header."""
    conn.settimeout(timeout)
    data, fds, _flags, _addr = socket.recv_fds(conn, HEADER_LIMIT, 3)
    try:
        while data and not data.endswith(b"\n") and len(data) <= HEADER_MAX:
            more = conn.recv(HEADER_LIMIT)
            if not more:
                break
            data += more
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return data, fds


def _header(data: bytes, fds: list[int]) -> dict[str, Any]:
    if len(fds) != 3:
        raise ValueError(f"expected three streams, got {len(fds)}")
    if len(data) > HEADER_MAX:
        raise ValueError(f"the session's header is over {HEADER_MAX} bytes (its command?)")
    if not data.endswith(b"\n"):
        raise ValueError("the session's header ended early")
    header = json.loads(data)
    if not isinstance(header, dict) or not isinstance(header.get("request"), int):
        raise ValueError("the session's header names no request")
    command = header.get("command")
    if command is not None and not isinstance(command, str):
        raise ValueError("the session's command is not text")
    return header


def _tell(fd: int, why: str) -> None:
    """One line for the client on the session's stderr, if it can take it now."""
    with contextlib.suppress(OSError):
        os.set_blocking(fd, False)
        os.write(fd, f"stagebox: {why}\n".encode())


class SessionSocket:
    """The box's Unix socket, where sshd's sessions arrive."""

    def __init__(self, endpoint: Endpoint, path: Path, staging_user: str) -> None:
        self.endpoint = endpoint
        self.path = path
        self.allowed = {0, os.getuid()}
        self.group: int | None = None
        with contextlib.suppress(KeyError):
            account = pwd.getpwnam(staging_user)
            self.allowed.add(account.pw_uid)
            self.group = account.pw_gid
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _check_parent(self) -> None:
        """Only this account (or root) may change what is at the socket's path: no
        one else can swap it for a symlink the chmod below would follow."""
        parent = self.path.parent
        parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        st = parent.stat()
        if st.st_uid not in (0, os.getuid()):
            raise ConfigError(f"sftp_socket: {parent} is owned by uid {st.st_uid}, not this one")
        if st.st_mode & 0o022:
            raise ConfigError(
                f"sftp_socket: {parent} is writable by its group or others (chmod go-w)"
            )

    async def start(self) -> None:
        self._check_parent()
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise ConfigError(f"sftp_socket: {self.path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
            except ConnectionRefusedError:
                self.path.unlink()  # left by a service that stopped
            else:
                raise ConfigError(f"sftp_socket: {self.path} is served by another process")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o660)
        if self.group is not None:
            with contextlib.suppress(PermissionError):
                os.chown(self.path, -1, self.group)
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept())

    async def stop(self) -> None:
        """Stop taking sessions; end those open as their clients' EOF would (their
        files closed and sealed), and cut off what is still running after a while."""
        if self._accepting is not None:
            self._accepting.cancel()
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    self.path.unlink()
        for live in list(self.endpoint.sessions.live):
            if isinstance(live, Session):
                live.close_idle("the server stops")
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=GRACE)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._session(conn)
        except Exception:
            log.exception("sftp session failed")
        finally:
            conn.close()

    async def _session(self, conn: socket.socket) -> None:
        endpoint = self.endpoint
        pid, uid = _peer_uid(conn)
        peer = f"sshd session pid {pid}"
        if uid not in self.allowed:
            log.warning("sftp sessions: refused a peer running as uid %d (%s)", uid, peer)
            return
        try:
            data, fds = await asyncio.to_thread(
                _receive, conn, endpoint.ctx.settings.sftp_login_timeout
            )
        except OSError as exc:
            log.warning("sftp sessions: refused %s: %s", peer, exc)
            return
        conn.setblocking(False)
        try:
            await self._with_streams(conn, peer, data, fds)
        finally:
            for fd in fds:  # those no session took
                os.close(fd)

    async def _with_streams(
        self, conn: socket.socket, peer: str, data: bytes, fds: list[int]
    ) -> None:
        endpoint = self.endpoint
        who: Login | None = None
        kind: str | None = None
        try:
            header = _header(data, fds)
        except ValueError as exc:
            refusal: str | None = str(exc)
        else:
            who = await asyncio.to_thread(
                catalog.login_by_request, endpoint.ctx, endpoint.box_id, header["request"]
            )
            kind = sftp_command(header.get("command"))
            refusal = self._refusal(who, kind, header)
        if refusal is not None:
            log.warning("sftp sessions: refused %s: %s", peer, refusal)
            if len(fds) == 3:
                _tell(fds[2], refusal)
            await self._answer(conn, 1)
            return
        assert who is not None and kind is not None
        session = Session(who, peer)
        sessions = endpoint.sessions
        sessions.by_uploader[who.uploader_id] += 1
        sessions.live.add(session)
        try:
            await self._run(session, fds, kind, header.get("command") or "")
        finally:
            sessions.live.discard(session)
            sessions.by_uploader[who.uploader_id] -= 1
        await self._answer(conn, session.status or 0)

    def _refusal(self, who: Login | None, kind: str | None, header: dict[str, Any]) -> str | None:
        sessions = self.endpoint.sessions
        if who is None:
            return f"request {header['request']} is not an approved key on this box"
        if kind is None:
            return ONLY
        if sessions.by_uploader[who.uploader_id] >= sessions.max_per_uploader:
            return f"at most {sessions.max_per_uploader} sessions per uploader"
        return None

    async def _run(self, session: Session, fds: list[int], kind: str, command: str) -> None:
        reader, writer, err = await session.open(fds)
        try:
            sftp = self.endpoint.sftp_server(reader.channel, session.who, session.touch)
            log.info("sftp %s: %s session from %s", session.who.name, kind, session.peer)
            work = asyncio.ensure_future(serve(sftp, kind, command, reader, writer, err))
            ended = asyncio.ensure_future(session.done.wait())
            try:
                await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():  # closed as idle, or the server stops
                    session.end_input()
                    await work
            finally:
                ended.cancel()
                work.cancel()
            session.finish(0)
        finally:
            await session.close(GRACE)

    @staticmethod
    async def _answer(conn: socket.socket, status: int) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            await loop.sock_sendall(conn, f"exit {status}\n".encode())
