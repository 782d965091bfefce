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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import asyncssh
from asyncssh.scp import run_scp_server
from asyncssh.sftp import run_sftp_server

from stagebox.sftpd import catalog
from stagebox.sftpd.catalog import Login

if TYPE_CHECKING:
    from stagebox.sftpd.endpoint import Endpoint

log = logging.getLogger(__name__)

HEADER_LIMIT = 8192
READ_LIMIT = 1 << 20
SFTP_COMMANDS = ("internal-sftp", "sftp-server")


def sftp_command(command: str | None) -> str | None:
    """``"sftp"`` or ``"scp"`` for what the client asked sshd for, else None.

    A subsystem request reaches the forced command as the subsystem's configured
    program (``internal-sftp``, ``/usr/lib/openssh/sftp-server``); SCP (legacy) as
    ``scp -t ...``; a shell as nothing.
    """
    if not command:
        return None
    if command.startswith("scp "):
        return "scp"
    program = command.split()[0]
    if program.rsplit("/", 1)[-1] in SFTP_COMMANDS:
        return "sftp"
    return None


class _Channel:
    """What asyncssh's SFTP and SCP servers ask of their channel."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.logger = asyncssh.logging.logger.get_child("sftpd")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_connection(self) -> None:
        return None

    def get_environment(self) -> dict[str, str]:
        return {}

    def is_closing(self) -> bool:
        return self._session.out.is_closing()

    def exit(self, status: int) -> None:
        self._session.finish(status)

    def abort(self) -> None:
        self._session.finish(255)

    def close(self) -> None:
        self._session.finish(0)


class _Reader:
    def __init__(self, stream: asyncio.StreamReader, channel: _Channel) -> None:
        self._stream = stream
        self.channel = channel
        self.logger = channel.logger
        self.readexactly = stream.readexactly
        self.readline = stream.readline

    async def read(self, n: int = -1) -> bytes:
        return await self._stream.read(n)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Writer:
    def __init__(self, stream: asyncio.StreamWriter, channel: _Channel) -> None:
        self._stream = stream
        self.channel = channel
        self.logger = channel.logger
        self.write = stream.write
        self.drain = stream.drain

    def close(self) -> None:
        self.channel.close()

    def write_eof(self) -> None:
        self.channel.close()

    async def wait_closed(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Session:
    """One session sshd handed over: its streams, its uploader, its exit status."""

    def __init__(self, conn: socket.socket, who: Login, peer: str) -> None:
        self.conn = conn
        self.who = who
        self.peer = peer
        self.last = time.monotonic()
        self.status: int | None = None
        self.done = asyncio.Event()
        self.out: asyncio.WriteTransport
        self._transports: list[asyncio.BaseTransport] = []

    def touch(self) -> None:
        self.last = time.monotonic()

    async def open(self, fds: list[int]) -> tuple[_Reader, _Writer, _Writer]:
        loop = asyncio.get_running_loop()
        stdin = os.fdopen(fds[0], "rb", 0)
        stdout, stderr = (os.fdopen(fd, "wb", 0) for fd in fds[1:])
        reader = asyncio.StreamReader(limit=READ_LIMIT)
        rt, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
        self._transports.append(rt)
        channel = _Channel(self)
        writers = []
        for f in (stdout, stderr):
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, f)
            self._transports.append(transport)
            writers.append(_Writer(asyncio.StreamWriter(transport, protocol, None, loop), channel))
        self.out = writers[0]._stream.transport
        return _Reader(reader, channel), writers[0], writers[1]

    def finish(self, status: int) -> None:
        """Close the streams (the client sees the end) and remember the status."""
        if self.status is None:
            self.status = status
        for transport in self._transports:
            transport.close()
        self.done.set()

    def close_idle(self, why: str) -> None:
        log.info("sftp %s: closing a session (%s)", self.who.name, why)
        self.finish(255)


def _peer_uid(conn: socket.socket) -> tuple[int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _receive(conn: socket.socket, timeout: float) -> tuple[dict[str, Any], list[int]]:
    """The relay's header and the three streams (blocking, on a worker thread)."""
    conn.settimeout(timeout)
    data, fds, _flags, _addr = socket.recv_fds(conn, HEADER_LIMIT, 3)
    try:
        if len(fds) != 3 or not data.endswith(b"\n"):
            raise ValueError("expected one header line and three streams")
        header = json.loads(data)
        if not isinstance(header, dict) or not isinstance(header.get("request"), int):
            raise ValueError("the header names no request")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return header, fds


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

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
            except ConnectionRefusedError:
                self.path.unlink()  # left by a service that stopped
            else:
                raise OSError(f"{self.path} is served by another process already")
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
        if self._accepting is not None:
            self._accepting.cancel()
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for task in list(self._tasks):
            task.cancel()

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
            header, fds = await asyncio.to_thread(
                _receive, conn, endpoint.ctx.settings.sftp_login_timeout
            )
        except (OSError, ValueError) as exc:
            log.warning("sftp sessions: refused %s: %s", peer, exc)
            return
        conn.setblocking(False)
        err = os.fdopen(os.dup(fds[2]), "wb", 0)
        try:
            who = await asyncio.to_thread(
                catalog.login_by_request, endpoint.ctx, endpoint.box_id, header["request"]
            )
            kind = sftp_command(header.get("command"))
            refusal = self._refusal(who, kind, header)
            if refusal is not None:
                log.warning("sftp sessions: refused %s: %s", peer, refusal)
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    err.write(f"stagebox: {refusal}\n".encode())
                await self._answer(conn, 1)
                return
        finally:
            err.close()
        assert who is not None
        session = Session(conn, who, peer)
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
            return "this account serves SFTP and SCP only"
        if sessions.by_uploader[who.uploader_id] >= sessions.max_per_uploader:
            return f"at most {sessions.max_per_uploader} sessions per uploader"
        return None

    async def _run(self, session: Session, fds: list[int], kind: str | None, command: str) -> None:
        reader, writer, err = await session.open(fds)
        sftp = self.endpoint.sftp_server(reader.channel, session.who, session.touch)
        log.info("sftp %s: %s session from %s", session.who.name, kind, session.peer)
        # asyncssh's servers take its channel streams; these have what they use of them.
        stdin, stdout, stderr = cast(Any, reader), cast(Any, writer), cast(Any, err)
        handler: Any
        if kind == "sftp":
            handler = run_sftp_server(sftp, stdin, stdout, 3)
        else:
            handler = run_scp_server(sftp, command, stdin, stdout, stderr)
        if handler is not None:
            work = asyncio.ensure_future(handler)
            ended = asyncio.ensure_future(session.done.wait())
            await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                with contextlib.suppress(Exception):
                    sftp.exit()
            ended.cancel()
        session.finish(0)

    @staticmethod
    async def _answer(conn: socket.socket, status: int) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            await loop.sock_sendall(conn, f"exit {status}\n".encode())
