"""asyncssh's SFTP (and SCP) code over plain byte streams instead of an SSH channel.

asyncssh's SFTP client and server take an SSH channel's reader and writer, but
use little of them: read exactly N bytes, write, close, and a channel to ask
whether it is closing. These give them that over asyncio streams, so the same
code runs where another program carries the SSH: OpenSSH's ``ssh`` for the
client (:func:`stagebox.ssh.start_sftp`), sshd's session for the server
(:mod:`stagebox.sftpd.sessions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import Callable
from typing import Any

import asyncssh

PIPE_SIZE = 1 << 20  # Linux's pipe-max-size for an unprivileged account


def widen(pipe: int | Any) -> None:
    """Make a pipe (a descriptor, or a file object of one) hold PIPE_SIZE bytes
    instead of Linux's 64 KiB, where it may.

    Each SFTP write request is 256 KiB: through a 64 KiB pipe, every request took
    four writes, four wake-ups of the reader and as many copies within asyncio's
    buffer. 1 GiB through ``ssh`` into an sshd box (3 alternated runs): 9.0-9.8 s
    and 7.8-8.4 CPU-s in the client before, 6.0-6.5 s and 5.0-5.5 CPU-s with both
    pipes widened. A socket, a pipe already closed, or an account past its pipe
    allowance keeps what it has.
    """
    with contextlib.suppress(OSError, ValueError):
        fd = pipe if isinstance(pipe, int) else pipe.fileno()
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


class PipeChannel:
    """What asyncssh's SFTP and SCP code asks of the channel under its streams."""

    def __init__(
        self, is_closing: Callable[[], bool], closed: Callable[[int], None], done: asyncio.Event
    ) -> None:
        self._is_closing = is_closing
        self._closed = closed
        self._done = done
        self.logger = asyncssh.logging.logger.get_child("pipes")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_connection(self) -> None:
        return None

    def get_environment(self) -> dict[str, str]:
        return {}

    def is_closing(self) -> bool:
        return self._is_closing()

    def exit(self, status: int) -> None:
        self._closed(status)

    def abort(self) -> None:
        self._closed(255)

    def close(self) -> None:
        self._closed(0)

    async def wait_closed(self) -> None:
        await self._done.wait()


class PipeReader:
    def __init__(self, stream: asyncio.StreamReader, channel: PipeChannel) -> None:
        self._stream = stream
        self.channel = channel
        self.logger = channel.logger
        self.readexactly = stream.readexactly
        self.readline = stream.readline

    async def read(self, n: int = -1) -> bytes:
        return await self._stream.read(n)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class PipeWriter:
    def __init__(self, stream: asyncio.StreamWriter, channel: PipeChannel) -> None:
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
        await self.channel.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
