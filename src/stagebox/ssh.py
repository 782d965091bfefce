"""SSH plumbing shared by the sftp transport and ``push``: keys, host keys, connections.

asyncssh is asynchronous and the uploader is threaded, so one event loop runs
in a daemon thread for the whole process and callers hand it coroutines with
:func:`run`. Host keys are always checked: against a known_hosts file, with
a first contact recorded only when the caller asks (``accept_new``), and a
changed key is a hard error that names both fingerprints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from stagebox.errors import AuthError, ConfigError, ConnectionFailed, HostKeyError, TransportError

T = TypeVar("T")

# Fastest first where the CPU has AES instructions; the server picks from this list.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)

_loop: asyncio.AbstractEventLoop | None = None
_loop_guard = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    """The process's SSH event loop, started on first use in a daemon thread."""
    global _loop
    with _loop_guard:
        if _loop is None or _loop.is_closed():
            new = asyncio.new_event_loop()
            threading.Thread(target=new.run_forever, name="stagebox-ssh", daemon=True).start()
            _loop = new
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> Future[T]:
    """Schedule ``coro`` on the SSH loop; the future can be waited on from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    return submit(coro).result(timeout)


def check_private_key(path: Path) -> None:
    """Refuse a private key others can read, with the ``chmod`` that fixes it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"no private key at {path}") from None
    if st.st_mode & 0o077:
        raise ConfigError(
            f"private key {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must be "
            f"readable by you alone; run: chmod 600 {path}"
        )


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def host_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SshOptions:
    """How to authenticate and which host keys to trust."""

    key: Path
    known_hosts: Path
    accept_new_host_key: bool = False
    connect_timeout: float = 15.0
    # The fingerprint the stagebox server says its sftp endpoint has: a first
    # contact that offers exactly it is checked, not merely trusted.
    host_key: str | None = None


class HostKeys:
    """A known_hosts file: look a host up, record a first contact."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def trusted(self, host: str, port: int) -> list[asyncssh.SSHKey]:
        if not self.path.exists():
            return []
        try:
            found = asyncssh.read_known_hosts(str(self.path)).match(host, host, port)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read known_hosts {self.path}: {exc}") from None
        return list(found[0])

    def record(self, host: str, port: int, key: asyncssh.SSHKey) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{host_pattern(host, port)} {key.export_public_key().decode().strip()}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(line)


async def trusted_keys(target: SshTarget, options: SshOptions) -> list[asyncssh.SSHKey]:
    """The host keys known for ``target``; a first contact is recorded only with
    ``accept_new_host_key``, else refused with the fingerprint and the flag."""
    hosts = HostKeys(options.known_hosts)
    trusted = hosts.trusted(target.host, target.port)
    if trusted:
        return trusted
    offered = await _offered_key(target, options)
    if options.host_key is not None and fingerprint(offered) != options.host_key:
        raise HostKeyError(
            f"the host key of {host_pattern(target.host, target.port)} is "
            f"{fingerprint(offered)}, but the stagebox server says its endpoint has "
            f"{options.host_key}: refusing to connect"
        )
    if options.host_key is None and not options.accept_new_host_key:
        raise HostKeyError(
            f"unknown host key for {host_pattern(target.host, target.port)} "
            f"({fingerprint(offered)}); check it with the staging host's admin, then rerun "
            f"with --accept-new-host-key to record it in {options.known_hosts}"
        )
    hosts.record(target.host, target.port, offered)
    return [offered]


async def connect(target: SshTarget, options: SshOptions) -> asyncssh.SSHClientConnection:
    """Connect with the key in ``options``, checking the host key first."""
    check_private_key(options.key)
    trusted = await trusted_keys(target, options)
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                target.host,
                target.port,
                username=target.user,
                client_keys=[str(options.key)],
                known_hosts=(trusted, [], []),
                agent_path=None,
                encryption_algs=CIPHERS,
                compression_algs=None,
                keepalive_interval=15,
                keepalive_count_max=4,
                connect_timeout=options.connect_timeout,
            ),
            options.connect_timeout * 2,
        )
    except asyncssh.HostKeyNotVerifiable:
        offered = await _offered_key(target, options)
        known = ", ".join(fingerprint(k) for k in trusted)
        raise HostKeyError(
            f"the host key of {host_pattern(target.host, target.port)} changed: "
            f"{options.known_hosts} has {known}, the server offers {fingerprint(offered)}; "
            "if the change is expected, remove the old line with "
            f"ssh-keygen -R '{host_pattern(target.host, target.port)}' -f {options.known_hosts}"
        ) from None
    except asyncssh.PermissionDenied as exc:
        raise AuthError(
            f"{target} refused key {options.key} ({exc.reason}); is the registration "
            "approved (stagebox register --status)?"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise ConnectionFailed(f"cannot connect to {target}: {describe(exc)}") from None
    coalesce_writes(conn)
    return conn


def coalesce_writes(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Send the SSH packets of one event-loop turn in one socket write.

    asyncssh writes every packet on its own, which costs one system call per
    packet: about a third of the client's CPU in a bulk transfer, and on the
    endpoint (one status reply per write request) about a fifth of its loop.
    Gathering them keeps their order and adds no wait beyond the current loop
    turn. It hooks asyncssh's internal ``_send``; if a release renames it,
    packets simply go out one by one again.
    """
    transport = getattr(conn, "_transport", None)
    if transport is None or not callable(getattr(conn, "_send", None)):
        return
    loop = asyncio.get_running_loop()
    queued: list[bytes] = []

    def flush(transport: asyncio.WriteTransport) -> None:
        data = b"".join(queued)
        queued.clear()
        # The transport the packets were sent on: a disconnect forgets it at once and
        # aborts it a turn later, so its last packet still goes out first.
        with contextlib.suppress(ConnectionError, RuntimeError):
            transport.write(data)

    def send(data: bytes) -> None:
        transport = getattr(conn, "_transport", None)
        if transport is None:
            return  # closed: asyncssh drops the packet the same way
        if not queued:
            loop.call_soon(flush, transport)
        queued.append(data)

    conn._send = send  # type: ignore[method-assign]


async def _offered_key(target: SshTarget, options: SshOptions) -> asyncssh.SSHKey:
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(target.host, target.port), options.connect_timeout
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise ConnectionFailed(f"cannot connect to {target}: {describe(exc)}") from None
    if key is None:
        raise TransportError(f"{target} offered no host key")
    return key


def describe(exc: BaseException) -> str:
    """A one-line reason for a network failure (never the key or a secret)."""
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
