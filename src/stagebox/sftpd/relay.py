"""``stagebox sftp-session``: what OpenSSH's sshd runs for an approved key.

On a box served through sshd (``--sftp-endpoint sshd``) every approved key's
authorized_keys line forces this command, with the request the key was
approved under. It hands the session's stdin, stdout and stderr to stagebox's
session service over a Unix socket (``SCM_RIGHTS``), so the SFTP or SCP
conversation runs in the service, confined to that uploader's root, and the
bytes are hashed as they arrive. The staging account itself never touches the
staging directory. This process only waits for the exit status.

Standard library only: sshd starts it for every session.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

USAGE = "usage: stagebox sftp-session --socket PATH REQUEST_ID"


def _parse(argv: list[str]) -> tuple[str, int] | None:
    if len(argv) != 3 or argv[0] != "--socket" or not argv[2].isdigit():
        return None
    return argv[1], int(argv[2])


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def main(argv: list[str]) -> int:
    """Hand this session to the service and return its exit status (``argv``:
    ``--socket PATH REQUEST_ID``)."""
    parsed = _parse(argv)
    if parsed is None:
        sys.stderr.write(USAGE + "\n")
        return 2
    path, request_id = parsed
    header = json.dumps(
        {"v": 1, "request": request_id, "command": os.environ.get("SSH_ORIGINAL_COMMAND")}
    ).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        served_by = _peer_uid(sock)
        owner = os.stat(path).st_uid
        if served_by not in (0, owner):
            sys.stderr.write(f"stagebox: {path} is served by uid {served_by}, not its owner\n")
            return 1
        socket.send_fds(sock, [header + b"\n"], [0, 1, 2])
    except OSError as exc:
        why = exc.strerror or exc
        sys.stderr.write(f"stagebox: the staging service is not reachable at {path}: {why}\n")
        return 1
    # The service holds the session's streams now; sshd sees them end when it does.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    answer = b""
    while not answer.endswith(b"\n"):
        try:
            chunk = sock.recv(64)
        except OSError:
            chunk = b""
        if not chunk:
            return 255  # the service went away mid-session
        answer += chunk
    try:
        return int(answer.split()[-1])
    except (ValueError, IndexError):
        return 255


if __name__ == "__main__":  # how sshd runs it: python -I -S .../relay.py --socket PATH ID
    sys.exit(main(sys.argv[1:]))
