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
import shutil
import socket
import stat
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import asyncssh
from asyncssh.sftp import start_sftp_client

from stagebox.errors import AuthError, ConfigError, ConnectionFailed, HostKeyError, TransportError
from stagebox.sshpipes import PipeChannel, PipeReader, PipeWriter, widen

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
    # Who carries SFTP's SSH: "openssh" (its ssh, found on PATH), "asyncssh", or
    # "auto" (ssh when there is one).
    client: str = "auto"


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
        raise await _changed(target, options, trusted) from None
    except asyncssh.PermissionDenied as exc:
        raise _refused(target, options, exc.reason) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise ConnectionFailed(f"cannot connect to {target}: {describe(exc)}") from None
    coalesce_writes(conn)
    return conn


async def _changed(
    target: SshTarget, options: SshOptions, trusted: list[asyncssh.SSHKey]
) -> HostKeyError:
    offered = await _offered_key(target, options)
    known = ", ".join(fingerprint(k) for k in trusted)
    return HostKeyError(
        f"the host key of {host_pattern(target.host, target.port)} changed: "
        f"{options.known_hosts} has {known}, the server offers {fingerprint(offered)}; "
        "if the change is expected, remove the old line with "
        f"ssh-keygen -R '{host_pattern(target.host, target.port)}' -f {options.known_hosts}"
    )


def _refused(target: SshTarget, options: SshOptions, reason: str) -> AuthError:
    return AuthError(
        f"{target} refused key {options.key} ({reason}); is the registration "
        "approved (stagebox register --status)?"
    )


class Closable(Protocol):
    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


def openssh_client(choice: str) -> str | None:
    """OpenSSH's ``ssh`` to carry SFTP, if ``choice`` (``auto``, ``openssh``,
    ``asyncssh``) asks for it and there is one; None for asyncssh's own SSH."""
    if choice == "asyncssh":
        return None
    found = shutil.which("ssh")
    if found is None and choice == "openssh":
        raise ConfigError("ssh = openssh, but there is no ssh on PATH")
    return found


async def start_sftp(
    target: SshTarget, options: SshOptions
) -> tuple[asyncssh.SFTPClient, Closable]:
    """An SFTP client of ``target``, and what to close when done with it.

    Through OpenSSH's ``ssh`` where there is one (its SSH is C: about a third of
    the CPU a gigabyte costs asyncssh, whose per-packet Python work is the
    client's limit against sshd's 32 KiB packets), else asyncssh's. Either way
    the host key is checked against ``options.known_hosts`` first, the same way.
    """
    program = openssh_client(options.client)
    if program is not None:
        return await OpenSsh.start(program, target, options)
    conn = await connect(target, options)
    try:
        sftp = await conn.start_sftp_client()
    except (OSError, asyncssh.Error) as exc:
        conn.close()
        raise ConnectionFailed(f"{target}: no SFTP service: {describe(exc)}") from None
    return sftp, conn


class OpenSsh:
    """``ssh -s sftp``, with asyncssh's SFTP client speaking over its pipes."""

    READ_LIMIT = 1 << 20
    STDERR_KEPT = 8192

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.done = asyncio.Event()
        self.stderr = b""
        self._draining = asyncio.ensure_future(self._drain_stderr())
        self._reaping: asyncio.Future[None] | None = None

    @classmethod
    async def start(
        cls, program: str, target: SshTarget, options: SshOptions
    ) -> tuple[asyncssh.SFTPClient, OpenSsh]:
        check_private_key(options.key)
        trusted = await trusted_keys(target, options)  # a first contact recorded, or refused
        try:
            proc = await asyncio.create_subprocess_exec(
                *cls.argv(program, target, options),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=cls.READ_LIMIT,
            )
        except OSError as exc:
            raise ConnectionFailed(f"cannot run {program}: {describe(exc)}") from None
        self = cls(proc)
        assert proc.stdin is not None and proc.stdout is not None
        widen(proc.stdin.transport.get_extra_info("pipe"))  # the uploads' way out
        channel = PipeChannel(proc.stdin.is_closing, self._closed, self.done)
        reader, writer = PipeReader(proc.stdout, channel), PipeWriter(proc.stdin, channel)
        try:
            sftp = await asyncio.wait_for(
                start_sftp_client(
                    cast(Any, self), asyncio.get_running_loop(), "strict",
                    cast(Any, reader), cast(Any, writer), "utf-8", "strict", 3,
                ),
                options.connect_timeout * 2,
            )  # fmt: skip
        except (EOFError, OSError, asyncssh.Error, TimeoutError) as exc:
            self.close()
            await self.wait_closed()
            raise await self._failure(target, options, trusted, exc) from None
        return sftp, self

    @staticmethod
    def argv(program: str, target: SshTarget, options: SshOptions) -> list[str]:
        def quoted(path: Path) -> str:
            return '"' + str(path) + '"'

        settings = {
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
            "IdentityAgent": "none",
            "IdentityFile": quoted(options.key),
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "UserKnownHostsFile": quoted(options.known_hosts),
            "GlobalKnownHostsFile": "none",
            "StrictHostKeyChecking": "yes",  # trusted_keys put the one it trusts there
            "UpdateHostKeys": "no",
            "CheckHostIP": "no",
            "Ciphers": ",".join(CIPHERS),
            "Compression": "no",
            "ConnectTimeout": str(int(options.connect_timeout)),
            "ServerAliveInterval": "15",
            "ServerAliveCountMax": "4",
            "ClearAllForwardings": "yes",
            "ForwardAgent": "no",
            "ForwardX11": "no",
            "LogLevel": "ERROR",
        }
        argv = [program, "-F", "none", "-T", "-e", "none"]
        for name, value in settings.items():
            argv += ["-o", f"{name}={value}"]
        return [*argv, "-p", str(target.port), "-l", target.user, "-s", target.host, "sftp"]

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self.stderr = (self.stderr + chunk)[-self.STDERR_KEPT :]

    def _closed(self, status: int) -> None:
        """asyncssh's client is done with the streams: end ssh's input, so it ends."""
        self.close()

    # for asyncssh's start_sftp_client, which runs the client's reading on "its connection"
    def create_task(self, coro: Coroutine[Any, Any, T], logger: object = None) -> asyncio.Task[T]:
        return asyncio.ensure_future(coro)

    def close(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        if self._reaping is None:
            self._reaping = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        """ssh exits at the end of its input; one that does not within 10 s is killed."""
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        await self._draining
        self.done.set()

    async def wait_closed(self) -> None:
        self.close()
        assert self._reaping is not None
        await asyncio.shield(self._reaping)

    async def _failure(
        self,
        target: SshTarget,
        options: SshOptions,
        trusted: list[asyncssh.SSHKey],
        exc: BaseException,
    ) -> Exception:
        """What ssh said when the session did not start, in stagebox's terms."""
        said = self.stderr.decode("utf-8", "replace")
        lines = [line.strip() for line in said.splitlines() if line.strip()]
        last = lines[-1] if lines else describe(exc) or f"ssh exited {self.proc.returncode}"
        if "Host key verification failed" in said or "IDENTIFICATION HAS CHANGED" in said:
            return await _changed(target, options, trusted)
        if "Permission denied" in said:
            return _refused(target, options, last.rsplit("(", 1)[-1].rstrip(").") or last)
        for text, why in (
            ("Connection refused", "connection refused"),
            ("Could not resolve hostname", "name not resolved"),
            ("timed out", "timed out"),
        ):
            if text in said:
                return ConnectionFailed(f"cannot connect to {target}: {why}")
        if "subsystem request failed" in said:
            return ConnectionFailed(f"{target}: no SFTP service")
        return ConnectionFailed(f"{target}: {last.removeprefix('stagebox: ')}")


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
