"""Who carries sftp's SSH, and what OpenSSH's ssh failing to start becomes."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import sys
from pathlib import Path

import asyncssh
import pytest

from stagebox import ssh
from stagebox.client.sftp_plan import ssh_client
from stagebox.errors import AuthError, ConfigError, ConnectionFailed, InvalidInput
from stagebox.sshpipes import PIPE_SIZE, widen


def test_the_ssh_setting_is_checked(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STAGEBOX_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("STAGEBOX_SSH", "putty")
    with pytest.raises(InvalidInput, match="ssh: must be auto, openssh, asyncssh"):
        ssh_client()
    monkeypatch.setenv("STAGEBOX_SSH", "asyncssh")
    assert ssh_client() == "asyncssh"


def test_openssh_asked_for_but_absent_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="no ssh on PATH"):
        ssh.openssh_client("openssh")
    assert ssh.openssh_client("auto") is None
    assert ssh.openssh_client("asyncssh") is None


def _options(tmp_path: Path) -> ssh.SshOptions:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "id ed25519"  # a space: ssh's option values are quoted
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    known = tmp_path / "known hosts"
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    ssh.HostKeys(known).record("127.0.0.1", 2222, host_key)
    return ssh.SshOptions(key=path, known_hosts=known, connect_timeout=5)


def test_ssh_reads_only_what_stagebox_gives_it(tmp_path: Path) -> None:
    options = _options(tmp_path)
    argv = ssh.OpenSsh.argv("/usr/bin/ssh", ssh.SshTarget("127.0.0.1", 2222, "u"), options)
    assert argv[:3] == ["/usr/bin/ssh", "-F", "none"]
    assert argv[-7:] == ["-p", "2222", "-l", "u", "-s", "127.0.0.1", "sftp"]
    given = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-o")
    assert given["IdentityFile"] == f'"{options.key}"'
    assert given["UserKnownHostsFile"] == f'"{options.known_hosts}"'
    assert given["StrictHostKeyChecking"] == "yes" and given["BatchMode"] == "yes"
    assert given["IdentityAgent"] == "none" and given["IdentitiesOnly"] == "yes"


@pytest.mark.parametrize(
    ("said", "error", "message"),
    [
        ("u@127.0.0.1: Permission denied (publickey).", AuthError, "(publickey); is the regis"),
        ("ssh: connect to host 127.0.0.1 port 2222: Connection refused", ConnectionFailed,
         "cannot connect to u@127.0.0.1:2222: connection refused"),
        ("subsystem request failed on channel 0", ConnectionFailed, "no SFTP service"),
        ("stagebox: request 7 is not an approved key on this box", ConnectionFailed,
         "u@127.0.0.1:2222: request 7 is not an approved key on this box"),
    ],
)  # fmt: skip
def test_what_ssh_said_becomes_one_error(
    tmp_path: Path, said: str, error: type, message: str
) -> None:
    fake = tmp_path / "ssh"
    fake.write_text(f"#!/bin/sh\necho '{said}' >&2\nexit 255\n")
    fake.chmod(0o755)
    target = ssh.SshTarget("127.0.0.1", 2222, "u")

    async def start() -> None:
        await ssh.OpenSsh.start(str(fake), target, _options(tmp_path))

    with pytest.raises(error) as caught:
        asyncio.run(start())
    assert message in str(caught.value), caught.value


def test_the_pipe_into_ssh_holds_a_megabyte(tmp_path: Path) -> None:
    """A 256 KiB write request through Linux's default 64 KiB pipe takes four writes
    and four wake-ups of ssh; the pipe stagebox writes the uploads into is widened."""
    seen = tmp_path / "pipe size"
    fake = tmp_path / "ssh"
    fake.write_text(
        "#!/bin/sh\n"
        f"{sys.executable} -c 'import fcntl; print(fcntl.fcntl(0, fcntl.F_GETPIPE_SZ))'"
        f" > '{seen}'\nexit 255\n"
    )
    fake.chmod(0o755)
    target = ssh.SshTarget("127.0.0.1", 2222, "u")

    async def start() -> None:
        await ssh.OpenSsh.start(str(fake), target, _options(tmp_path))

    with pytest.raises(ConnectionFailed):
        asyncio.run(start())
    assert int(seen.read_text()) == PIPE_SIZE


def test_widen_leaves_what_is_not_a_pipe_alone() -> None:
    read, write = os.pipe()
    left, right = socket.socketpair()
    try:
        widen(write)
        assert fcntl.fcntl(read, fcntl.F_GETPIPE_SZ) == PIPE_SIZE
        widen(left.fileno())  # a socket: no error, nothing changed
    finally:
        for fd in (read, write):
            os.close(fd)
        left.close()
        right.close()
