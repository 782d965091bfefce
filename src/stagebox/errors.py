"""The one exception tree of stagebox.

Every failure a caller may want to handle is a subclass of :class:`StageboxError`.
Library errors (httpx, OS, SQLAlchemy) are converted at the boundary where they
happen, so callers never need to import them::

    StageboxError
    ├── ConfigError            bad settings, missing token, unusable data dir
    ├── InvalidInput           a value broke a rule; names the field and the rule
    │   └── InvalidName        a dataset, directory or file name is unsafe
    ├── AuthError              unknown or revoked token
    ├── NotFound               no such thing, or not yours to see
    ├── Conflict               the request contradicts what is stored
    │   ├── OffsetMismatch     a write at an offset other than the staged size
    │   └── UploadLocked       another request is writing the same upload
    ├── LengthExceeded         a body would run past the declared length
    ├── ChecksumMismatch       bytes do not hash to what was declared
    ├── ChangedDuringUpload    the source file changed while it was being sent
    ├── StorageError           a storage backend failed
    │   └── KeyEscapesRoot     a key would resolve outside its box
    └── TransportError         the client could not talk to the server
        ├── HostKeyError       an SSH host key is unknown or changed (never retried)
        ├── ConnectionFailed   reset, disconnected, timed out (retryable)
        │   └── Unreachable    refused, unknown host, not https: nothing answers there
        └── ServerError        the server answered with an error
"""

from __future__ import annotations


class StageboxError(Exception):
    """Base of every stagebox error."""


class ConfigError(StageboxError):
    """Settings are missing or unusable."""


class InvalidInput(StageboxError):
    """A value broke a rule. ``field`` names the value, ``rule`` the rule."""

    def __init__(self, field: str, rule: str, value: object | None = None) -> None:
        self.field = field
        self.rule = rule
        self.value = value
        super().__init__(f"{field}: {rule}")


class InvalidName(InvalidInput):
    """A dataset, directory or file name is unsafe or malformed."""


class AuthError(StageboxError):
    """The token is unknown or revoked."""


class Forbidden(StageboxError):
    """The caller is known but may not do this (not approved, not an admin)."""


class NotFound(StageboxError):
    """The thing does not exist, or belongs to someone else."""


class Conflict(StageboxError):
    """The request contradicts what is already stored."""


class OffsetMismatch(Conflict):
    """A write was offered at an offset other than the bytes already staged."""

    def __init__(self, expected: int, got: int) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"Upload-Offset {got} does not match the {expected} bytes staged")


class UploadLocked(Conflict):
    """Another request is writing to the same upload."""


class LengthExceeded(StageboxError):
    """A body would run past the declared upload length."""


class ChecksumMismatch(StageboxError):
    """Bytes do not hash to the declared digest."""

    def __init__(self, algorithm: str, expected: str, actual: str) -> None:
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__(f"{algorithm} mismatch: declared {expected}, received {actual}")


class ChangedDuringUpload(StageboxError):
    """The source file changed size or mtime while being sent."""


class StorageError(StageboxError):
    """A storage backend failed."""


class KeyEscapesRoot(StorageError):
    """A key would resolve to a path outside its storage box."""


class TransportError(StageboxError):
    """The client could not complete a request to the server."""


class HostKeyError(TransportError):
    """The SSH server's host key is unknown or changed; never retried."""


class ConnectionFailed(TransportError):
    """The connection was refused, reset or timed out; worth retrying."""


class Unreachable(ConnectionFailed):
    """Nothing answers at ``url``: the connection was refused, the host name is
    unknown, or the port does not speak https. Not retried while the server has
    not answered once (it would only keep a user waiting); after that it is a
    restart, retried like any ConnectionFailed. A watcher catches it and tries
    again at its next scan."""

    def __init__(self, url: str, reason: str, hint: str = "") -> None:
        self.url = url
        self.reason = reason
        self.hint = hint
        super().__init__(f"cannot reach {url} ({reason})" + (f": {hint}" if hint else ""))


class ServerError(TransportError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"server answered {status}: {message}")
