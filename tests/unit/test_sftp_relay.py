"""The forced command of an sshd box's keys, and the relay it runs."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from stagebox.authorized_keys import line
from stagebox.errors import ConfigError
from stagebox.sftpd import relay
from stagebox.sftpd.sessions import HEADER_MAX, SessionSocket, _header, _receive, sftp_command

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOu1"


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("internal-sftp", "sftp"),
        ("/usr/lib/openssh/sftp-server", "sftp"),
        ("/usr/lib/openssh/sftp-server -u 0007", "sftp"),
        ("scp -t /srv/staging/u/", "scp"),
        ("scp -f /etc/passwd", "scp"),  # refused inside: outside the root
        (None, None),  # a shell
        ("", None),
        (" ", None),
        ("\t\n", None),
        ("scp", "scp"),  # asyncssh's scp server says what is missing
        ("scpx -t /", None),
        ("id", None),
        ("/bin/sh -c internal-sftp", None),
        ("sftp-serverx", None),
    ],
)
def test_what_a_session_asked_for(command: str | None, kind: str | None) -> None:
    assert sftp_command(command) == kind


def test_an_sshd_box_forces_the_relay_with_the_request(monkeypatch) -> None:
    monkeypatch.setenv("STAGEBOX_RELAY_PYTHON", '/opt/py "3"/bin/python3')
    attrs = {"sftp_endpoint": "sshd", "sftp_socket": "/run/stagebox/s.sock", "sftp_root": "/s"}
    text = line(attrs, "uuid-1", KEY, "alice", 7)
    assert text is not None
    options, rest = text.split('" ', 1)
    assert rest == f"{KEY} stagebox:alice:7"
    command = options.removeprefix('restrict,command="').replace('\\"', '"')
    argv = shlex.split(command)
    assert argv[0] == '/opt/py "3"/bin/python3'
    assert argv[1:3] == ["-I", "-S"] and Path(argv[3]) == Path(relay.__file__)
    assert argv[4:] == ["--socket", "/run/stagebox/s.sock", "7"]


def test_a_box_sshd_does_not_serve_gets_no_line() -> None:
    assert line({"sftp_endpoint": "stagebox", "sftp_root": "/s"}, "u", KEY, "a", 1) is None


def _service(path: Path, seen: dict) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data, fds, _, _ = socket.recv_fds(conn, 8192, 3)
            seen["header"] = json.loads(data)
            seen["fds"] = len(fds)
            os.write(fds[1], b"served by the service\n")
            seen["stdin"] = os.read(fds[0], 100)
            for fd in fds:
                os.close(fd)
            conn.sendall(b"exit 3\n")
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_relay_hands_its_streams_over_and_exits_with_the_status(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    seen: dict = {}
    thread = _service(path, seen)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", relay.__file__, "--socket", str(path), "42"],
        input=b"from the client",
        capture_output=True,
        env={"SSH_ORIGINAL_COMMAND": "scp -t dir/"},
        timeout=30,
    )
    thread.join(timeout=10)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == b"served by the service\n"
    assert seen == {
        "header": {"v": 1, "request": 42, "command": "scp -t dir/"},
        "fds": 3,
        "stdin": b"from the client",
    }


@pytest.mark.parametrize("argv", [[], ["--socket", "/x"], ["--socket", "/x", "7x"], ["-h"]])
def test_the_relay_refuses_a_bad_invocation(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-I", "-S", relay.__file__, *argv], capture_output=True, timeout=30
    )
    assert proc.returncode == 2 and b"usage: stagebox sftp-session" in proc.stderr


def test_the_relay_says_when_the_service_is_down(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-I", "-S", relay.__file__, "--socket", str(tmp_path / "none"), "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("stagebox: the staging service is not reachable at ")
    assert proc.stderr.count("\n") == 1


def test_a_relay_python_with_a_line_break_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("STAGEBOX_RELAY_PYTHON", "/usr/bin/python3\nssh-ed25519 AAAA other")
    attrs = {"sftp_endpoint": "sshd", "sftp_socket": "/run/s.sock", "sftp_root": "/s"}
    with pytest.raises(ConfigError, match="STAGEBOX_RELAY_PYTHON: a path cannot hold"):
        line(attrs, "uuid-1", KEY, "alice", 7)


def _sent(header: bytes) -> tuple[bytes, list[int]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reading, writing = os.pipe()
        streams = [reading, writing, writing]

        def send() -> None:
            socket.send_fds(theirs, [header], streams)
            theirs.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return _receive(ours, 10)
        finally:
            sender.join()
            os.close(reading)
            os.close(writing)


def test_a_long_command_reaches_the_service_whole() -> None:
    command = "scp -t " + "d/" * 50_000
    header = json.dumps({"v": 1, "request": 3, "command": command}).encode() + b"\n"
    data, fds = _sent(header)
    try:
        assert len(fds) == 3
        assert _header(data, fds)["command"] == command
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b'{"v": 1, "request": 3}', "ended early"),
        (b'{"v": 1, "request": "3"}\n', "names no request"),
        (b'{"v": 1, "request": 3, "command": 7}\n', "command is not text"),
        (b'{"v": 1, "request": 3, "command": "' + b"x" * HEADER_MAX + b'"}\n', "is over"),
    ],
)
def test_a_header_that_breaks_a_rule_is_named(header: bytes, why: str) -> None:
    data, fds = _sent(header)
    try:
        with pytest.raises(ValueError, match=why):
            _header(data, fds)
    finally:
        for fd in fds:
            os.close(fd)


def _socket_at(path: Path) -> SessionSocket:
    return SessionSocket(endpoint=None, path=path, staging_user="no-such-account")  # type: ignore[arg-type]


def test_the_socket_goes_only_where_no_one_else_can_swap_it(tmp_path: Path) -> None:
    import asyncio

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match=f"{shared} is writable by its group or others"):
        asyncio.run(_socket_at(shared / "s.sock").start())
    assert not (shared / "s.sock").exists()


def test_a_file_at_the_socket_path_is_left_alone(tmp_path: Path) -> None:
    import asyncio

    other = tmp_path / "s.sock"
    other.write_text("not ours")
    with pytest.raises(ConfigError, match=f"{other} exists and is not a socket"):
        asyncio.run(_socket_at(other).start())
    assert other.read_text() == "not ours"
