"""stagebox's SFTP/SCP staging, as an attacker tries it, both ways it is reached.

``stagebox``: the built-in endpoint (``stagebox serve --sftp-port``) speaks SSH
itself. ``sshd``: OpenSSH's sshd authenticates (keys from stagebox's
AuthorizedKeysCommand) and each key's forced command hands the session to the
server (``serve --sftp-sessions``) over the box's socket.

One server per way; two approved uploaders, A (the attacker) and B (the
victim), each its own installation. Every attempt A makes on B's paths is its
own test, and each checks the refusal and that B's upload still ends stored
with B's bytes. OpenSSH's own ``sftp`` and ``scp`` (legacy and SFTP-based,
with MyData's ``-c aes128-ctr``) are clients too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import httpx
import pytest

from tests.servers import StageboxServer, free_port, stagebox_cmd
from tests.sftp_helpers import (
    BOX,
    Machine,
    Uploaders,
    asyncssh_run,
    complete,
    kill_mid_file_then_resume,
    make_legacy_openssh,
    register_sftp,
    settled,
    tree,
    wait_for,
)
from tests.sshd import RELAY_USER, StagingHost, keys_command, remove, traversable_dir

USER = "stagebox"


@dataclass
class Endpoint(Uploaders):
    port: int
    staging: Path
    kind: str = "stagebox"
    user: str = USER

    def catalog(self, sql: str, *args: object) -> list[tuple]:
        conn = sqlite3.connect(self.server.data_dir / "catalog.db", timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    async def login(self, machine: Machine, **options) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            "127.0.0.1",
            self.port,
            username=self.user,
            client_keys=[str(machine.key)],
            known_hosts=None,
            agent_path=None,
            **options,
        )

    def openssh(self, machine: Machine) -> list[str]:
        return [
            "-i",
            str(machine.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={self.base / 'openssh_known_hosts'}",
            "-o",
            "BatchMode=yes",
        ]


SETTINGS = {
    "STAGEBOX_SWEEP_INTERVAL": "1",
    "STAGEBOX_STALE_AFTER": "2",
    "STAGEBOX_SFTP_LOGIN_TIMEOUT": "2",
    "STAGEBOX_SFTP_MAX_CONNECTIONS": "4",
}


@pytest.fixture(scope="module", params=["stagebox", "sshd"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Endpoint]:
    base = tmp_path_factory.mktemp(f"sftpd-{request.param}")
    if request.param == "stagebox":
        yield from builtin(base)
    else:
        yield from behind_sshd(base)


def builtin(base: Path, settings: dict[str, str] = SETTINGS) -> Iterator[Endpoint]:
    port = free_port()
    server = StageboxServer(base / "data", env=settings, extra_args=["--sftp-port", str(port)])
    staging = base / "staging"
    server.admin(
        "box", "add", BOX, "--role", "staging", "--path", str(staging),
        "--sftp-host", "127.0.0.1", "--sftp-port", str(port), "--sftp-user", USER,
        "--sftp-endpoint", "stagebox",
    )  # fmt: skip
    server.start()
    try:
        yield Endpoint(base, server, port, staging)
    finally:
        server.stop()


def behind_sshd(base: Path, settings: dict[str, str] = SETTINGS) -> Iterator[Endpoint]:
    """sshd as the README's sshd-box recipe sets it up, the server serving its sessions."""
    server = StageboxServer(base / "data", env=settings, extra_args=["--sftp-sessions"])
    run = traversable_dir("stagebox-sessions-")  # the relay's account must reach the socket
    host = StagingHost(
        traversable_dir("stagebox-sshd-"),
        command=keys_command(server.data_dir, Path("/run/stagebox-tests") / run.name),
        user=RELAY_USER,
        force_command=None,
        login_grace=2,
    )
    staging = base / "staging"
    server.admin(
        "box", "add", BOX, "--role", "staging", "--path", str(staging),
        "--sftp-host", "127.0.0.1", "--sftp-port", str(host.port), "--sftp-user", RELAY_USER,
        "--sftp-endpoint", "sshd", "--sftp-socket", str(run / "sftp.sock"),
    )  # fmt: skip
    server.start()
    try:
        host.start()
        yield Endpoint(base, server, host.port, staging, kind="sshd", user=RELAY_USER)
    finally:
        host.stop()
        server.stop()
        remove(host.root)
        remove(run)
        remove(Path("/run/stagebox-tests") / run.name)


@dataclass
class Pair:
    """A and B, with a registered (not yet uploaded) file of B's."""

    a: Machine
    b: Machine
    b_file: dict
    b_bytes: bytes

    @property
    def b_path(self) -> str:
        return self.b_file["sftp_path"]


@pytest.fixture(scope="module")
def machines(env: Endpoint) -> tuple[Machine, Machine]:
    return env.approved("attacker"), env.approved("victim")


@pytest.fixture
def pair(env: Endpoint, machines: tuple[Machine, Machine]) -> Pair:
    a, b = machines
    data = os.urandom(300_000)
    with env.api(b) as api:
        answer = register_sftp(api, "d", f"victim-{os.urandom(4).hex()}.bin", len(data))
    return Pair(a, b, answer, data)


def uuid_of(env: Endpoint, machine: Machine) -> str:
    return env.catalog("SELECT uuid FROM uploaders WHERE name = ?", machine.name)[0][0]


def home_of(env: Endpoint, machine: Machine) -> str:
    return f"{env.staging}/{uuid_of(env, machine)}"


async def put(sftp: asyncssh.SFTPClient, path: str, data: bytes, rename: bool = True) -> None:
    """What stagebox's client does: mkdir -p, write NAME.part, rename to NAME."""
    parts = path.split("/")
    for i in range(len(parts) - 3, len(parts)):
        directory = "/".join(parts[:i])
        if directory and not await sftp.exists(directory):
            await sftp.mkdir(directory)
    target = path + ".part" if rename else path
    async with sftp.open(target, "wb") as f:
        await f.write(data, 0)
    if rename:
        await sftp.posix_rename(target, path)


def b_finishes(env: Endpoint, pair: Pair) -> None:
    """B uploads its own file and it ends stored with B's bytes."""

    async def upload() -> None:
        async with await env.login(pair.b) as conn, conn.start_sftp_client() as sftp:
            await put(sftp, pair.b_path, pair.b_bytes)

    asyncssh_run(upload())
    with env.api(pair.b) as api:
        assert complete(api, pair.b_file["id"], pair.b_bytes).status_code == 200
        row = settled(api, pair.b_file["id"])
        assert row["state"] == "stored", row
        stored = api.get(f"/api/v1/datafiles/{pair.b_file['id']}/content").content
    assert stored == pair.b_bytes


def refused(coro) -> asyncssh.SFTPError:
    with pytest.raises(asyncssh.SFTPError) as caught:
        asyncssh_run(coro)
    assert isinstance(caught.value, asyncssh.SFTPPermissionDenied | asyncssh.SFTPNoSuchFile), (
        caught.value
    )
    return caught.value


def as_a(env: Endpoint, pair: Pair, action) -> asyncssh.SFTPError:
    async def attempt() -> None:
        async with await env.login(pair.a) as conn, conn.start_sftp_client() as sftp:
            await action(sftp)

    return refused(attempt())


# -- the attack matrix ----------------------------------------------------------


def b_paths(env: Endpoint, pair: Pair) -> dict[str, str]:
    """Ways A might name B's staged file."""
    a_home = home_of(env, pair.a)
    relative_b = os.path.relpath(pair.b_path, a_home)
    b = uuid_of(env, pair.b)
    return {
        "absolute": pair.b_path,
        "dotdot": f"{a_home}/../{relative_b.split('../', 1)[1]}",
        "relative-dotdot": relative_b,
        # A NUL that would cut the path short in C, and Windows-style separators.
        "nul": f"{a_home}/x\x00/../../{b}/{pair.b_path.split(b + '/', 1)[1]}",
        "backslash": pair.b_path.replace(f"/{b}/", f"/{b}\\..\\{b}/"),
    }


WAYS = ["absolute", "dotdot", "relative-dotdot", "nul", "backslash"]


@pytest.mark.parametrize("way", WAYS)
def test_a_cannot_list_b(env: Endpoint, pair: Pair, way: str) -> None:
    target = str(Path(b_paths(env, pair)[way]).parent.parent.parent)
    as_a(env, pair, lambda sftp: sftp.listdir(target))
    as_a(env, pair, lambda sftp: sftp.listdir(str(env.staging)))
    b_finishes(env, pair)


@pytest.mark.parametrize("way", WAYS)
def test_a_cannot_write_b_staged_path(env: Endpoint, pair: Pair, way: str) -> None:
    target = b_paths(env, pair)[way]

    async def write(sftp: asyncssh.SFTPClient) -> None:
        async with sftp.open(target, "wb") as f:
            await f.write(b"A's bytes", 0)

    async def write_part(sftp: asyncssh.SFTPClient) -> None:
        async with sftp.open(target + ".part", "wb") as f:
            await f.write(b"A's bytes", 0)

    as_a(env, pair, write)
    as_a(env, pair, write_part)
    b_finishes(env, pair)


def test_a_cannot_read_rename_or_remove_b(env: Endpoint, pair: Pair) -> None:
    b_finishes(env, pair)  # B's bytes are stored; its staging copy is gone
    with env.api(pair.b) as api:
        second = register_sftp(api, "d", "second.bin", 5)

    async def b_half() -> None:
        async with await env.login(pair.b) as conn, conn.start_sftp_client() as sftp:
            await put(sftp, second["sftp_path"], b"12", rename=False)

    asyncssh_run(b_half())  # a half-written file of B's sits in staging
    path = second["sftp_path"]
    a_home = home_of(env, pair.a)

    async def read(sftp: asyncssh.SFTPClient) -> None:
        async with sftp.open(path, "rb") as f:
            await f.read()

    as_a(env, pair, read)
    as_a(env, pair, lambda sftp: sftp.stat(path))
    as_a(env, pair, lambda sftp: sftp.remove(path))
    as_a(env, pair, lambda sftp: sftp.posix_rename(path, f"{a_home}/stolen"))
    as_a(env, pair, lambda sftp: sftp.rename(path, f"{a_home}/stolen"))
    assert Path(path).read_bytes() == b"12"


def half_written(env: Endpoint, machine: Machine) -> str:
    """A registered 4-byte file of ``machine``'s, 2 bytes of it written; its path."""
    with env.api(machine) as api:
        path = register_sftp(api, "d", "mine.bin", 4)["sftp_path"]

    async def write(sftp: asyncssh.SFTPClient) -> None:
        await put(sftp, path, b"ab", rename=False)

    asyncssh_run(_as(env, machine, write))
    return path


def test_a_cannot_link_or_symlink(env: Endpoint, pair: Pair) -> None:
    a_path = half_written(env, pair.a)
    as_a(env, pair, lambda sftp: sftp.link(a_path, pair.b_path))
    as_a(env, pair, lambda sftp: sftp.link(pair.b_path, a_path + ".link"))
    as_a(env, pair, lambda sftp: sftp.symlink(pair.b_path, a_path + ".sym"))
    as_a(env, pair, lambda sftp: sftp.symlink(str(Path(pair.b_path).parent), a_path + ".dir"))
    as_a(env, pair, lambda sftp: sftp.symlink("/etc/passwd", a_path))
    assert not Path(a_path + ".sym").exists() and not Path(a_path + ".dir").exists()
    b_finishes(env, pair)


async def _as(env: Endpoint, machine: Machine, action) -> None:
    async with await env.login(machine) as conn, conn.start_sftp_client() as sftp:
        await action(sftp)


def test_a_cannot_set_an_old_mtime_or_a_mode_on_its_own_file(env: Endpoint, pair: Pair) -> None:
    path = half_written(env, pair.a)

    async def attempt(sftp: asyncssh.SFTPClient) -> None:
        before = (await sftp.stat(path)).mtime
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.utime(path, (1_000_000, 1_000_000))
        await sftp.chmod(path, 0o777)  # accepted (OpenSSH's scp sends one), not applied
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.truncate(path, 1)
        async with sftp.open(path, "r+b") as f:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await f.utime((1_000_000, 1_000_000))
        assert (await sftp.stat(path)).mtime == before

    asyncssh_run(_as(env, pair.a, attempt))
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_a_handle_kept_open_across_promotion_cannot_write_again(env: Endpoint, pair: Pair) -> None:
    data = os.urandom(100_000)
    with env.api(pair.a) as api:
        mine = register_sftp(api, "d", "kept.bin", len(data))
    path = mine["sftp_path"]

    async def attempt() -> None:
        async with await env.login(pair.a) as conn, conn.start_sftp_client() as sftp:
            await sftp.makedirs(str(Path(path).parent), exist_ok=True)
            kept = await sftp.open(path + ".part", "wb")
            await kept.write(data, 0)
            other = await sftp.open(path + ".part", "r+b")
            await sftp.posix_rename(path + ".part", path)  # whole: staged now
            with httpx.Client(
                base_url=env.server.url, headers={"Authorization": f"Bearer {pair.a.token}"}
            ) as api:
                assert complete(api, mine["id"], data).status_code == 200
                assert settled(api, mine["id"])["state"] == "stored"
            for handle in (kept, other):
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    await handle.write(b"evil", 0)
            with pytest.raises(asyncssh.SFTPError):
                async with sftp.open(path, "r+b") as f:
                    await f.write(b"evil", 0)

    asyncssh_run(attempt())
    with env.api(pair.a) as api:
        assert api.get(f"/api/v1/datafiles/{mine['id']}/content").content == data
    assert not Path(path).exists()  # nothing in staging refers to the stored bytes
    stored = env.catalog(
        "SELECT r.key FROM replicas r WHERE r.datafile_id = ? AND r.state = 'stored'", mine["id"]
    )
    store_file = env.server.data_dir / "store" / stored[0][0]
    assert store_file.stat().st_nlink == 1
    b_finishes(env, pair)


def test_a_handle_opened_before_a_truncating_open_is_cut_off_too(env: Endpoint, pair: Pair) -> None:
    """Two handles on one file, the second truncating it: staging the file cuts off both."""
    data = os.urandom(50_000)
    with env.api(pair.a) as api:
        mine = register_sftp(api, "d", "truncated.bin", len(data))
    path = mine["sftp_path"]

    async def attempt(sftp: asyncssh.SFTPClient) -> None:
        await sftp.makedirs(str(Path(path).parent), exist_ok=True)
        first = await sftp.open(path, "wb")
        await first.write(b"x" * 1000, 0)
        second = await sftp.open(path, "wb")  # truncates
        await second.write(data, 0)
        await second.close()  # whole: staged
        assert staged_row(env, mine["id"])[1] == hashlib.sha256(data).hexdigest()
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await first.write(b"evil", 0)
        await first.close()

    asyncssh_run(_as(env, pair.a, attempt))
    assert Path(path).read_bytes() == data


def test_an_open_racing_the_seal_never_writes_into_staged_bytes(env: Endpoint, pair: Pair) -> None:
    """One session renames NAME.part into place (the seal) while a second keeps opening
    NAME for writing: every handle it got must be refused once the file is staged."""
    rounds, leaked = 15, []
    data = os.urandom(20_000)

    async def race() -> None:
        one, two = await env.login(pair.a), await env.login(pair.a)
        async with one, two, one.start_sftp_client() as s1, two.start_sftp_client() as s2:
            for n in range(rounds):
                with env.api(pair.a) as api:
                    mine = register_sftp(api, "race", f"r{n}.bin", len(data))
                path = mine["sftp_path"]
                await s1.makedirs(str(Path(path).parent), exist_ok=True)
                async with s1.open(path + ".part", "wb") as f:
                    await f.write(data, 0)
                handles: list[asyncssh.SFTPClientFile] = []
                renamed = asyncio.ensure_future(s1.posix_rename(path + ".part", path))
                await asyncio.gather(renamed, keep_opening(s2, path, renamed, handles))
                for handle in handles:
                    try:
                        await handle.write(b"evil", 0)
                        leaked.append(n)
                    except asyncssh.SFTPPermissionDenied:
                        pass
                    await handle.close()
                with env.api(pair.a) as api:
                    assert complete(api, mine["id"], data).status_code == 200
                    assert settled(api, mine["id"])["state"] == "stored"
                    assert api.get(f"/api/v1/datafiles/{mine['id']}/content").content == data

    asyncssh_run(race())
    assert leaked == []


async def keep_opening(
    sftp: asyncssh.SFTPClient, path: str, until: asyncio.Future, into: list
) -> None:
    """Open ``path`` for writing again and again until ``until`` is done."""
    while not until.done():
        try:
            into.append(await sftp.open(path, "r+b"))
        except asyncssh.SFTPError:
            await asyncio.sleep(0)


def test_a_revoked_key_and_an_unknown_key_are_refused(
    env: Endpoint, pair: Pair, tmp_path: Path
) -> None:
    revoked = env.approved("revoked")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "stranger"
    key_file.write_bytes(stranger.export_private_key())
    key_file.chmod(0o600)

    async def login_with(path: Path) -> None:
        conn = await asyncssh.connect(
            "127.0.0.1", env.port, username=env.user, client_keys=[str(path)],
            known_hosts=None, agent_path=None,
        )  # fmt: skip
        conn.close()

    with pytest.raises(asyncssh.PermissionDenied):
        asyncssh_run(login_with(key_file))
    asyncssh_run(login_with(revoked.key))  # approved: in
    env.admin("uploader", "revoke", revoked.name)
    with pytest.raises(asyncssh.PermissionDenied):
        asyncssh_run(login_with(revoked.key))
    b_finishes(env, pair)


def test_a_login_as_another_user_name_is_refused(env: Endpoint, pair: Pair) -> None:
    async def login() -> None:
        conn = await asyncssh.connect(
            "127.0.0.1", env.port, username="root", client_keys=[str(pair.a.key)],
            known_hosts=None, agent_path=None,
        )  # fmt: skip
        conn.close()

    with pytest.raises(asyncssh.PermissionDenied):
        asyncssh_run(login())


def test_a_client_that_never_authenticates_is_cut_off(env: Endpoint) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", env.port), timeout=30) as sock:
        sock.sendall(b"SSH-2.0-dawdler\r\n")
        sock.settimeout(30)
        while sock.recv(65536):
            pass  # the server's banner and key exchange offer, then the close
    assert time.monotonic() - started < 15  # login timeout 2 s in this module


def session_fds(env: Endpoint) -> int:
    """The server's pipes, sockets and staged files: what a session holds."""
    assert env.server.proc is not None
    fds = Path(f"/proc/{env.server.proc.pid}/fd")
    held = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            held += target.startswith(("pipe:", "socket:", str(env.staging)))
    return held


def server_rss(env: Endpoint) -> int:
    assert env.server.proc is not None
    with open(f"/proc/{env.server.proc.pid}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


def test_no_shell_no_exec_no_forwarding(env: Endpoint, pair: Pair) -> None:
    """Each is told no in one line (sshd runs the forced relay, which the server
    refuses; the built-in endpoint refuses it itself), and a refusal leaves nothing
    of the session open in the server."""

    async def refused(command: str | None) -> None:
        result = await conn.run(command, check=False, encoding=None)
        assert result.exit_status == 1 and not result.stdout, result
        assert result.stderr == b"stagebox: this account serves SFTP and SCP only\n", result

    async def attempt() -> None:
        nonlocal conn
        async with await env.login(pair.a) as conn:
            for command in ("id", None, "/bin/sh -c id", " ", "\t", "scpx -t /"):
                await refused(command)  # None: a shell
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_connection(asyncio.Protocol, "127.0.0.1", env.server.port)

    conn: asyncssh.SSHClientConnection
    before = session_fds(env)
    for _ in range(3):
        asyncssh_run(attempt())
    wait_for(
        lambda: session_fds(env) <= before, timeout=10, what="the sessions' descriptors closed"
    )


def test_connections_per_uploader_are_bounded(env: Endpoint, pair: Pair) -> None:
    """Four at once (this module's limit), each with a session open: a fifth is refused
    (a connection by the endpoint, a session when sshd hands sessions over)."""

    async def attempt() -> None:
        conns = [await env.login(pair.a) for _ in range(4)]
        clients = [await conn.start_sftp_client() for conn in conns]
        try:
            for sftp in clients:
                await sftp.listdir(".")
            with pytest.raises((asyncssh.Error, OSError)):
                extra = await env.login(pair.a)
                async with extra.start_sftp_client() as sftp:
                    await sftp.listdir(".")
        finally:
            for conn in conns:
                conn.close()

    asyncssh_run(attempt())


def sftp_packet(kind: int, request: int | None, *fields: bytes) -> bytes:
    body = bytes([kind]) + (b"" if request is None else struct.pack(">I", request))
    body += b"".join(fields)
    return struct.pack(">I", len(body)) + body


def sftp_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


async def sftp_reply(stdout: asyncssh.SSHReader) -> bytes:
    (length,) = struct.unpack(">I", await stdout.readexactly(4))
    return await stdout.readexactly(length)


def test_a_client_that_never_reads_its_replies_is_not_served_further(
    env: Endpoint, pair: Pair
) -> None:
    """A writes 256 KiB to its bundle file, then asks for 2000 reads of 1 MiB and reads
    none of the replies (500 MiB of them): the server stops reading A instead of
    buffering them. A hangs up: nothing of its session is left in the server."""
    fds_before, rss_before = session_fds(env), server_rss(env)
    peak = 0

    async def flood() -> None:
        nonlocal peak
        async with await env.login(pair.a) as conn:
            proc = await conn.create_process(subsystem="sftp", encoding=None)
            out, into = proc.stdout, proc.stdin
            into.write(sftp_packet(1, None, struct.pack(">I", 3)))  # INIT
            assert (await sftp_reply(out))[0] == 2  # VERSION
            into.write(sftp_packet(14, 1, sftp_string(b".bundles"), struct.pack(">I", 0)))
            await sftp_reply(out)  # made, or there already
            name = b".bundles/%s.bundle" % os.urandom(16).hex().encode()
            flags = struct.pack(">II", 0x1A, 0)  # WRITE | CREAT | TRUNC, no attributes
            into.write(sftp_packet(3, 2, sftp_string(name), flags))
            opened = await sftp_reply(out)
            assert opened[0] == 102, opened  # HANDLE
            handle = sftp_string(opened[9:])
            data = sftp_string(os.urandom(256 << 10))
            into.write(sftp_packet(6, 3, handle, struct.pack(">Q", 0), data))
            assert (await sftp_reply(out))[0] == 101  # STATUS
            for i in range(2000):
                into.write(sftp_packet(5, 100 + i, handle, struct.pack(">QI", 0, 1 << 20)))
            for _ in range(40):
                await asyncio.sleep(0.1)
                peak = max(peak, server_rss(env) - rss_before)

    asyncssh_run(flood())  # and A hangs up, its replies still unread
    assert peak < 64 << 20, f"the server grew by {peak >> 20} MiB"
    wait_for(lambda: session_fds(env) <= fds_before, timeout=15, what="A's session closed")
    b_finishes(env, pair)


@pytest.mark.parametrize("kind", ["stagebox", "sshd"])
def test_a_session_closed_as_idle_closes_its_files_first(kind: str, tmp_path: Path) -> None:
    """A writes the whole of a file under its final name (as scp does), keeps it open
    and goes quiet: the session closed for idleness closes the file as A's close
    would have, so it is staged and ends stored."""
    settings = {**SETTINGS, "STAGEBOX_SFTP_IDLE_TIMEOUT": "2"}
    endpoints = (
        builtin(tmp_path, settings) if kind == "stagebox" else behind_sshd(tmp_path, settings)
    )
    env = next(endpoints)
    try:
        a = env.approved("quiet")
        data = os.urandom(200_000)
        with env.api(a) as api:
            answer = register_sftp(api, "d", "quiet.bin", len(data))

        async def write_and_wait() -> None:
            async with await env.login(a) as conn, conn.start_sftp_client() as sftp:
                parts = answer["sftp_path"].split("/")
                for i in range(len(parts) - 3, len(parts)):
                    directory = "/".join(parts[:i])
                    if directory and not await sftp.exists(directory):
                        await sftp.mkdir(directory)
                f = await sftp.open(answer["sftp_path"], "wb")
                await f.write(data, 0)
                await asyncio.wait_for(sftp.wait_closed(), 20)  # by the server, f still open

        asyncssh_run(write_and_wait())
        wait_for(lambda: staged_row(env, answer["id"])[1], timeout=10, what="the file staged")
        with env.api(a) as api:
            assert complete(api, answer["id"], data).status_code == 200
            assert settled(api, answer["id"])["state"] == "stored"
            assert api.get(f"/api/v1/datafiles/{answer['id']}/content").content == data
    finally:
        endpoints.close()


# -- hashing on write -------------------------------------------------------------


def staged_row(env: Endpoint, datafile_id: int) -> tuple:
    return env.catalog(
        "SELECT state, staged_sha256, staged_identity FROM replicas WHERE datafile_id = ?",
        datafile_id,
    )[0]


@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled-big"])
def test_writes_in_any_order_are_hashed_to_the_right_digest(
    env: Endpoint, pair: Pair, order: str
) -> None:
    piece = 64 << 10
    count = 2000 if order == "shuffled-big" else 40  # 125 MiB: past the 64 MiB buffer
    data = os.urandom(piece) * count if order == "shuffled-big" else os.urandom(piece * count)
    with env.api(pair.a) as api:
        mine = register_sftp(api, "d", f"{order}.bin", len(data))
    path = mine["sftp_path"]
    offsets = list(range(0, len(data), piece))
    if order == "reversed":
        offsets.reverse()
    elif order == "shuffled-big":
        offsets = offsets[1:] + offsets[:1]  # the first piece last: everything waits

    async def upload(sftp: asyncssh.SFTPClient) -> None:
        await sftp.makedirs(str(Path(path).parent), exist_ok=True)
        async with sftp.open(path + ".part", "wb") as f:
            for offset in offsets:
                await f.write(data[offset : offset + piece], offset)
        await sftp.posix_rename(path + ".part", path)

    asyncssh_run(_as(env, pair.a, upload))
    state, sha, identity = staged_row(env, mine["id"])
    assert state == "staged" and identity  # staged by the endpoint, before any complete
    assert sha == hashlib.sha256(data).hexdigest()
    with env.api(pair.a) as api:
        assert complete(api, mine["id"], data).status_code == 200
        assert settled(api, mine["id"])["state"] == "stored"


def test_an_interrupted_file_resumes_and_its_hash_covers_the_whole(
    env: Endpoint, pair: Pair
) -> None:
    data = os.urandom(3 << 20)
    with env.api(pair.a) as api:
        mine = register_sftp(api, "d", "resumed.bin", len(data))
    path = mine["sftp_path"]
    half = len(data) // 2

    async def first(sftp: asyncssh.SFTPClient) -> None:
        await sftp.makedirs(str(Path(path).parent), exist_ok=True)
        async with sftp.open(path + ".part", "wb") as f:
            await f.write(data[:half], 0)

    async def second(sftp: asyncssh.SFTPClient) -> None:
        assert (await sftp.stat(path + ".part")).size == half
        async with sftp.open(path + ".part", "r+b") as f:  # no truncation: resume
            await f.write(data[half:], half)
        await sftp.posix_rename(path + ".part", path)

    asyncssh_run(_as(env, pair.a, first))
    assert staged_row(env, mine["id"])[0] in ("registered", "uploading")
    asyncssh_run(_as(env, pair.a, second))
    assert staged_row(env, mine["id"])[1] == hashlib.sha256(data).hexdigest()


def test_a_write_past_the_registered_size_is_refused(env: Endpoint, pair: Pair) -> None:
    with env.api(pair.a) as api:
        mine = register_sftp(api, "d", "small.bin", 10)

    async def attempt(sftp: asyncssh.SFTPClient) -> None:
        await sftp.makedirs(str(Path(mine["sftp_path"]).parent), exist_ok=True)
        async with sftp.open(mine["sftp_path"], "wb") as f:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await f.write(b"x" * 11, 0)

    asyncssh_run(_as(env, pair.a, attempt))


def logging_ssh(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose ``ssh`` notes each run, then is OpenSSH's ssh."""
    bin_dir, log = tmp_path / "bin", tmp_path / "ssh-runs"
    bin_dir.mkdir()
    real = shutil.which("ssh")
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


@pytest.mark.parametrize("client", ["openssh", "asyncssh"])
def test_stagebox_client_uploads_through_the_endpoint(
    env: Endpoint, machines: tuple[Machine, Machine], tmp_path: Path, client: str
) -> None:
    """Either way SSH is carried (the ``ssh`` setting): OpenSSH's ssh, the default
    where there is one, or asyncssh's."""
    machine = machines[0]
    path, log = logging_ssh(tmp_path)
    machine.extra_env = {**path, "STAGEBOX_SSH": client}
    files = {f"ds/f{i}.txt": os.urandom(100 + i) for i in range(30)}
    files["ds/big.bin"] = os.urandom(20 << 20)
    src = tree(tmp_path / "src", files)
    try:
        rc, report, stderr = env.upload(machine, src, "--method", "sftp", *first_contact(env))
    finally:
        machine.extra_env = {}
    assert rc == 0, stderr
    assert report["totals"]["verified"] == len(files), report["totals"]
    runs = log.read_text().splitlines() if log.exists() else []
    if client == "openssh":
        assert runs and all(run.endswith("-s 127.0.0.1 sftp") for run in runs), runs
    else:
        assert runs == []
    if env.kind == "stagebox":
        # The host key came with the approval: checked, no --accept-new-host-key needed.
        status = env.register(machine, "--status").stdout
        assert "host key SHA256:" in status


def first_contact(env: Endpoint) -> list[str]:
    """sshd's host key is not in the catalog: the first contact records it."""
    return ["--accept-new-host-key"] if env.kind == "sshd" else []


def test_stagebox_client_killed_mid_file_resumes(env: Endpoint, tmp_path: Path) -> None:
    machine = env.approved("killed")
    kill_mid_file_then_resume(env, machine, env.staging, tmp_path, *first_contact(env))


# -- OpenSSH's clients, and MyData's way ------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        ["scp", "-O", "-c", "aes128-ctr"],  # legacy protocol, as MyData runs it
        ["scp", "-s"],  # SFTP-based scp (OpenSSH 9's default)
        ["sftp"],
    ],
    ids=["scp-legacy-aes128-ctr", "scp-sftp", "sftp-put"],
)
def test_openssh_clients_then_complete(
    env: Endpoint, pair: Pair, tmp_path: Path, how: list[str]
) -> None:
    data = os.urandom(2 << 20)
    local = tmp_path / f"mydata{how[-1]}.bin"  # scp names the remote file after it
    local.write_bytes(data)
    with env.api(pair.a) as api:
        mine = register_sftp(api, "d", local.name, len(data))
    remote = mine["sftp_path"]
    directory = str(Path(remote).parent)

    async def mkdirs(sftp: asyncssh.SFTPClient) -> None:
        await sftp.makedirs(directory, exist_ok=True)

    asyncssh_run(_as(env, pair.a, mkdirs))
    options = env.openssh(pair.a)
    if how[0] == "sftp":
        argv = ["sftp", "-P", str(env.port), *options, "-b", "-", f"{env.user}@127.0.0.1"]
        proc = subprocess.run(
            argv, input=f'put "{local}" "{remote}"\n', capture_output=True, text=True, timeout=60
        )
    else:
        argv = [
            *how,
            "-P",
            str(env.port),
            *options,
            str(local),
            f"{env.user}@127.0.0.1:{directory}/",
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert staged_row(env, mine["id"])[1] == hashlib.sha256(data).hexdigest()
    with env.api(pair.a) as api:
        assert complete(api, mine["id"], data).status_code == 200
        assert settled(api, mine["id"])["state"] == "stored"
        assert api.get(f"/api/v1/datafiles/{mine['id']}/content").content == data


def test_scp_of_a_path_nobody_registered_is_refused(
    env: Endpoint, pair: Pair, tmp_path: Path
) -> None:
    local = tmp_path / "stray.bin"
    local.write_bytes(b"stray")
    target = f"{env.user}@127.0.0.1:{home_of(env, pair.a)}/"
    argv = ["scp", "-O", "-P", str(env.port), *env.openssh(pair.a), str(local), target]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert not (Path(home_of(env, pair.a)) / "stray.bin").exists()


# -- after everything -------------------------------------------------------------


def test_zz_every_stored_file_matches_the_catalog(env: Endpoint) -> None:
    """After all the attempts above, an audit of every stored copy finds each intact."""
    proc = subprocess.run(
        [*env_admin(env), "audit", "--all", "--json"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checked = json.loads(proc.stdout)
    assert checked["ok"] > 10 and checked["corrupt"] == checked["missing"] == 0, checked


def env_admin(env: Endpoint) -> list[str]:
    return stagebox_cmd("admin", "--data-dir", str(env.server.data_dir))


@pytest.mark.parametrize("env", ["stagebox"], indirect=True)
def test_sftp_serve_alone_recovers_a_whole_file_and_stops_on_sigterm(
    env: Endpoint, pair: Pair
) -> None:
    """``stagebox sftp-serve`` on its own (as on a staging host): a file left whole under
    its final name by an endpoint that died before recording it is staged at start."""
    data = os.urandom(70_000)
    with env.api(pair.a) as api:
        mine = register_sftp(api, "d", "left-whole.bin", len(data))
    left = Path(mine["sftp_path"])
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(data)
    port = free_port()
    log = env.base / f"sftp-serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            stagebox_cmd("sftp-serve", "--data-dir", str(env.server.data_dir), "--port", str(port)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        assert staged_row(env, mine["id"])[1] == hashlib.sha256(data).hexdigest()

        async def look() -> list[str]:
            conn = await asyncssh.connect(
                "127.0.0.1", port, username=USER, client_keys=[str(pair.a.key)],
                known_hosts=None, agent_path=None,
            )  # fmt: skip
            async with conn, conn.start_sftp_client() as sftp:
                return await sftp.listdir(".")

        dataset_dir = left.parent.parent.name
        assert dataset_dir in asyncssh_run(look())  # its own root, through this endpoint
        started = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=10) == 0, log.read_text()
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    with env.api(pair.a) as api:
        assert complete(api, mine["id"], data).status_code == 200
        assert settled(api, mine["id"])["state"] == "stored"


@pytest.mark.parametrize("command", ["serve", "sftp-serve"])
def test_no_box_for_the_endpoint_is_one_line(tmp_path: Path, command: str) -> None:
    data = tmp_path / "data"
    subprocess.run(stagebox_cmd("admin", "--data-dir", str(data), "init"), check=True)
    subprocess.run(
        stagebox_cmd(
            "admin", "--data-dir", str(data), "box", "add", "old", "--role", "staging",
            "--path", str(tmp_path / "st"), "--sftp-host", "h", "--sftp-user", "u",
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    make_legacy_openssh(data, "old")  # served by sshd's internal-sftp, not by stagebox
    port_flag = "--sftp-port" if command == "serve" else "--port"
    proc = subprocess.run(
        stagebox_cmd(command, "--data-dir", str(data), port_flag, str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("stagebox:")]
    assert len(lines) == 1 and "--sftp-endpoint stagebox" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
