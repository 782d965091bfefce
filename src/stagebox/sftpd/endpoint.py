"""The built-in SFTP/SCP staging endpoint: asyncssh's server, keys from the catalog.

No Unix account per uploader and no authorized_keys file: a login offers a
public key, and the catalog says at that moment whether an approved
registration on this box has it. The session then sees only that uploader's
root (:mod:`stagebox.sftpd.fs`). SFTP and SCP (legacy and SFTP-based) are
served; shells, commands, forwarding and agents are not.

Bounds: a login must authenticate within ``sftp_login_timeout``; a session
that sends nothing for ``sftp_idle_timeout`` is closed; one uploader may hold
``sftp_max_connections`` connections, a session ``sftp_max_open_files`` files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncssh
from asyncssh.channel import SSHChannel
from asyncssh.stream import SSHServerStreamSession
from sqlalchemy import select

from stagebox import ssh
from stagebox.checksums import MultiHasher
from stagebox.config import Settings
from stagebox.errors import ConfigError, StageboxError
from stagebox.server.db.models import StorageBox
from stagebox.server.db.session import Catalog
from stagebox.server.services.boxes import SERVED
from stagebox.server.services.context import ServerContext
from stagebox.sftpd import catalog
from stagebox.sftpd.catalog import Login
from stagebox.sftpd.fs import Files, Limits, UploaderSFTP, hash_rest
from stagebox.sftpd.sessions import ONLY, SFTP_VERSION, Session, SessionSocket
from stagebox.storage import LocalBackend

log = logging.getLogger(__name__)

HOST_KEY_NAME = "sftp_host_ed25519_key"
# Flow control per session: room for many write requests in flight, and packets as
# large as a client will send (OpenSSH's clients stop at 32 KiB), so fewer packets are
# decrypted and parsed per byte. Against asyncssh's defaults (2 MiB, 32 KiB), 1 GiB
# from stagebox's client: 229-257 MB/s and 7.2-8.0 CPU-s instead of 144-161 MB/s and
# 11.5-12.6 CPU-s (benchmarks sftpd-big, 3 runs each). A packet holds one whole write
# request of the client's 256 KiB chunks with its header (exactly 256 KiB split each
# request into a full packet and a 30-byte one); 1 MiB chunks and packets were slower.
WINDOW = 16 << 20
MAX_PKTSIZE = (256 + 1) << 10


def host_key_path(settings: Settings) -> Path:
    return settings.data_dir / HOST_KEY_NAME


def load_host_key(settings: Settings, *, create: bool) -> asyncssh.SSHKey:
    """The endpoint's persistent host key; made once (mode 0600) when ``create``."""
    path = host_key_path(settings)
    if not path.exists():
        if not create:
            raise ConfigError(
                f"no sftp host key at {path}: run stagebox admin sftp-hostkey to make one"
            )
        return write_host_key(path)
    try:
        return asyncssh.read_private_key(str(path))
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise ConfigError(f"sftp host key {path}: cannot be read ({exc})") from None


def write_host_key(path: Path) -> asyncssh.SSHKey:
    """A new ed25519 host key at ``path``, replacing any (written whole, then renamed)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="stagebox sftp endpoint")
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    os.replace(tmp, path)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    return key


class _Streams(SSHServerStreamSession[bytes]):
    """asyncssh's session for SFTP and SCP, reading the client's next request only
    once the replies before it have gone out (its servers write a reply without
    waiting; see :class:`~stagebox.sftpd.sessions.Gated`, the same for sshd's)."""

    async def read(self, datatype: int | None, n: int, exact: bool) -> bytes:
        await self.drain(None)
        return await super().read(datatype, n, exact)

    async def readuntil(
        self, separator: object, datatype: int | None, max_separator_len: int = 0
    ) -> bytes:
        await self.drain(None)
        return await super().readuntil(separator, datatype, max_separator_len)


def _refuse(
    stdin: asyncssh.SSHReader[bytes],
    stdout: asyncssh.SSHWriter[bytes],
    stderr: asyncssh.SSHWriter[bytes],
) -> None:
    """A shell, a command or a subsystem other than SFTP and SCP: one line, exit 1."""
    stderr.write(f"stagebox: {ONLY}\n".encode())
    cast(asyncssh.SSHServerChannel[bytes], stdout.channel).exit(1)


@dataclass
class Sessions:
    """Live connections, for the per-uploader limit and the idle timeout."""

    max_per_uploader: int
    idle_timeout: float
    by_uploader: Counter[int] = field(default_factory=Counter)
    live: set[Auth | Session] = field(default_factory=set)


class Auth(asyncssh.SSHServer):
    """One connection: public-key login against the catalog, then its limits."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.conn: asyncssh.SSHServerConnection | None = None
        self.who: Login | None = None
        self.last = time.monotonic()
        self.peer = "?"

    def touch(self) -> None:
        self.last = time.monotonic()

    def close_idle(self, why: str) -> None:
        if self.conn is not None:
            log.info("sftp %s: closing a connection (%s)", self.who.name if self.who else "?", why)
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, why)

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        ssh.coalesce_writes(conn)
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def connection_lost(self, exc: Exception | None) -> None:
        sessions = self.endpoint.sessions
        if self in sessions.live:
            sessions.live.discard(self)
            if self.who is not None:
                sessions.by_uploader[self.who.uploader_id] -= 1

    def session_requested(self) -> _Streams:
        return _Streams(_refuse, self.endpoint._sftp, SFTP_VERSION, allow_scp=True)

    def begin_auth(self, username: str) -> bool:
        return True  # every login must authenticate

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        endpoint = self.endpoint
        if username != endpoint.username:
            log.warning(
                "sftp login from %s refused: user %r is not %r",
                self.peer,
                username,
                endpoint.username,
            )
            return False
        fingerprint = key.get_fingerprint("sha256")
        who = await asyncio.to_thread(catalog.login, endpoint.ctx, endpoint.box_id, fingerprint)
        if who is None:
            log.warning(
                "sftp login from %s refused: key %s is not approved on box %s",
                self.peer,
                fingerprint,
                endpoint.box_name,
            )
            return False
        self.who = who
        return True

    def auth_completed(self) -> None:
        assert self.who is not None and self.conn is not None
        sessions = self.endpoint.sessions
        if sessions.by_uploader[self.who.uploader_id] >= sessions.max_per_uploader:
            log.warning(
                "sftp %s: refused a connection from %s: %d already open",
                self.who.name,
                self.peer,
                sessions.max_per_uploader,
            )
            self.conn.disconnect(
                asyncssh.DISC_TOO_MANY_CONNECTIONS,
                f"at most {sessions.max_per_uploader} connections per uploader",
            )
            return
        sessions.by_uploader[self.who.uploader_id] += 1
        sessions.live.add(self)
        self.touch()
        log.info(
            "sftp %s: logged in from %s (request %d)", self.who.name, self.peer, self.who.request_id
        )


class Endpoint:
    """Serves one sftp staging box of the catalog: over SSH itself (a ``stagebox``
    box) or for the sessions sshd hands over on the box's socket (an ``sshd`` box)."""

    def __init__(
        self, ctx: ServerContext, box_name: str | None = None, kinds: tuple[str, ...] = SERVED
    ) -> None:
        settings = ctx.settings
        self.ctx = ctx
        box = catalog.sftp_box(ctx.catalog, box_name or settings.sftp_box, kinds)
        self.box_id = box.id
        self.box_name = box.name
        self.kind = box.attributes["sftp_endpoint"]
        self.username = box.attributes["sftp_user"]
        self.sftp_root = box.attributes["sftp_root"]
        self.backend = LocalBackend(box.name, box.attributes["path"], durable=settings.durable)
        self.files = Files(settings.algorithms, Limits(open_files=settings.sftp_max_open_files))
        self.sessions = Sessions(settings.sftp_max_connections, settings.sftp_idle_timeout)
        self.socket: SessionSocket | None = None
        self.host_key: asyncssh.SSHKey | None = None
        if self.kind == "sshd":
            self.socket = SessionSocket(self, Path(box.attributes["sftp_socket"]), self.username)
        else:
            self.host_key = load_host_key(settings, create=True)
        self._server: asyncssh.SSHAcceptor | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def fingerprint(self) -> str:
        assert self.host_key is not None
        return self.host_key.get_fingerprint("sha256")

    def _sftp(self, chan: SSHChannel[bytes]) -> UploaderSFTP:
        owner = chan.get_connection().get_owner()
        assert isinstance(owner, Auth) and owner.who is not None
        return self.sftp_server(chan, owner.who, owner.touch)

    def sftp_server(self, chan: Any, who: Login, touch: Callable[[], None]) -> UploaderSFTP:
        """The confined server of one session of ``who``."""
        # Approval makes the uploader's root; a box added or moved since may lack it.
        (self.backend.root / who.uuid).mkdir(mode=0o750, exist_ok=True)
        return UploaderSFTP(
            chan,
            who=who,
            sftp_root=self.sftp_root,
            box=self.backend,
            box_id=self.box_id,
            files=self.files,
            ctx=self.ctx,
            touch=touch,
        )

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with 0), or 0 on an ``sshd`` box's socket."""
        settings = self.ctx.settings
        await asyncio.to_thread(self.recover)
        self._watch = asyncio.create_task(self._close_idle())
        if self.socket is not None:
            await self.socket.start()
            log.info(
                "sftp sessions for box %s on %s (from sshd's forced command)",
                self.box_name,
                self.socket.path,
            )
            return 0
        await asyncio.to_thread(record_host_key, self.ctx.catalog, self.fingerprint)
        assert self.host_key is not None
        self._server = await asyncssh.listen(
            host,
            port,
            server_host_keys=[self.host_key],
            server_factory=lambda: Auth(self),
            encoding=None,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=settings.sftp_login_timeout,
            keepalive_interval=30,
            keepalive_count_max=4,
            window=WINDOW,
            max_pktsize=MAX_PKTSIZE,
            reuse_address=True,
        )
        bound = self._server.sockets[0].getsockname()[1]
        log.info(
            "sftp endpoint for box %s on %s:%d (host key %s)",
            self.box_name,
            host,
            bound,
            self.fingerprint,
        )
        return int(bound)

    def recover(self) -> int:
        """Stage what an endpoint that stopped (or died) left whole but unrecorded: a
        file renamed into place, or closed by scp, just before the stop. It is read
        once to hash it; nothing else can have an open handle on it now."""
        staged = 0
        for upload in catalog.unfinished(self.ctx, self.box_id):
            try:
                size = self.backend.size(upload.key)
                if size != upload.size:
                    continue
                digests = hash_rest(self.backend, upload.key, MultiHasher(self.files.algorithms))
            except StageboxError as exc:
                log.warning("sftp recovery: %s left alone: %s", upload.key, exc)
                continue
            identity = self.backend.identity(upload.key)
            if catalog.record_staged(self.ctx, upload.replica_id, digests, identity):
                log.info("sftp recovery: %s was whole; staged", upload.key)
                staged += 1
        return staged

    async def _close_idle(self) -> None:
        sessions = self.sessions
        while True:
            await asyncio.sleep(min(5.0, sessions.idle_timeout / 2))
            now = time.monotonic()
            for live in list(sessions.live):
                if now - live.last > sessions.idle_timeout:
                    live.close_idle(f"idle for {now - live.last:.0f} s")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self.socket is not None:
            await self.socket.stop()


class InThread:
    """The endpoint on an event loop of its own, beside a server in the same process."""

    def __init__(self, ctx: ServerContext, kinds: tuple[str, ...] = SERVED) -> None:
        self.endpoint = Endpoint(ctx, kinds=kinds)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="stagebox-sftpd", daemon=True
        )

    def start(self, host: str, port: int) -> int:
        self._thread.start()
        running = asyncio.run_coroutine_threadsafe(self.endpoint.start(host, port), self._loop)
        return running.result(timeout=60)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.endpoint.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


async def serve_forever(ctx: ServerContext, host: str, port: int) -> None:
    """``stagebox sftp-serve``: listen until SIGTERM or Ctrl-C."""
    endpoint = Endpoint(ctx)
    await endpoint.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await endpoint.stop()


def record_host_key(catalog: Catalog, fingerprint: str) -> None:
    """Note the host key's fingerprint on every box stagebox's endpoint serves."""
    with catalog.session() as session:
        for box in session.scalars(select(StorageBox)):
            attrs = box.attributes
            ours = attrs.get("sftp_endpoint") == "stagebox"
            if ours and attrs.get("sftp_host_key") != fingerprint:
                box.attributes = {**attrs, "sftp_host_key": fingerprint}
