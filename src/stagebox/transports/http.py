"""tus 1.0.0 over HTTP: one streaming PATCH per file (or per resume).

``write`` hands chunks to a bounded queue that the PATCH body drains on a
sender thread, so reading and hashing the next chunk overlaps sending this one,
and memory stays at ``queue_depth`` chunks whatever the file size.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
from collections.abc import Iterator

import httpx

from stagebox.errors import ConnectionFailed, ServerError, TransportError, Unreachable
from stagebox.transports.base import Transport

TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
_DONE = object()


# How OpenSSL says that the peer answered a TLS hello with something else (plain http).
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


def _unreachable(exc: httpx.TransportError, cause: BaseException) -> Unreachable | None:
    """An Unreachable if ``cause`` says nothing answers at the request's origin."""
    try:
        url = exc.request.url
    except RuntimeError:  # raised outside a request: no origin to name
        return None
    origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
    if isinstance(cause, ConnectionRefusedError):
        return Unreachable(origin, "connection refused", "is stagebox serve running there?")
    if isinstance(cause, socket.gaierror):
        return Unreachable(origin, f"unknown host {url.host}", "check the server URL")
    if isinstance(cause, ssl.SSLError) and cause.reason in _NOT_TLS:
        hint = f"try http://{url.netloc.decode('ascii')}"
        return Unreachable(origin, "the port does not speak https", hint)
    return None


def connection_error(what: str, exc: httpx.TransportError) -> TransportError:
    """Map an httpx failure into the tree.

    Nothing listening, an unknown host name, or a plain-http port asked for TLS
    is :class:`Unreachable`; a certificate the client does not trust is a
    :class:`TransportError` (never retried); any other broken connection (reset,
    disconnected, timed out) is a :class:`ConnectionFailed`, worth retrying.
    """
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TransportError(
                f"{what}: {cause.verify_message or cause} (CERTIFICATE_VERIFY_FAILED)"
            )
        if (unreachable := _unreachable(exc, cause)) is not None:
            return unreachable
    return ConnectionFailed(f"{what}: {exc}")


def short_reason(exc: BaseException) -> str:
    """A few words for why a request failed, for a retry line: ``connection reset``,
    ``server disconnected``, ``timed out``, ``server answered 503``."""
    if isinstance(exc, ServerError):
        return f"server answered {exc.status}"
    if isinstance(exc, Unreachable):
        return exc.reason
    for cause in _causes(exc):
        if isinstance(cause, httpx.TimeoutException):
            return "timed out"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if isinstance(cause, BrokenPipeError):
            return "connection broken"
        if isinstance(cause, httpx.RemoteProtocolError) and "disconnected" in str(cause):
            return "server disconnected"
    return str(exc)


def raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text or response.reason_phrase
    raise ServerError(response.status_code, str(detail))


class TusTransport(Transport):
    def __init__(self, client: httpx.Client, queue_depth: int = 8) -> None:
        self._client = client
        self._depth = queue_depth
        self._url = ""
        self._length = 0
        self._queue: queue.Queue[object] | None = None
        self._sender: threading.Thread | None = None
        self._result: httpx.Response | None = None
        self._error: BaseException | None = None

    def open(self, target: str, length: int) -> int:
        self._url = target
        self._length = length
        try:
            response = self._client.head(target, headers=TUS_HEADERS)
        except httpx.TransportError as exc:
            raise connection_error(f"HEAD {target}", exc) from exc
        raise_for_status(response)
        return int(response.headers["Upload-Offset"])

    def _start(self, offset: int) -> None:
        self._queue = queue.Queue(self._depth)
        self._result = None
        self._error = None
        headers = {
            **TUS_HEADERS,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(self._length - offset),
        }
        q = self._queue

        def body() -> Iterator[bytes]:
            while (item := q.get()) is not _DONE:
                assert isinstance(item, bytes)
                yield item

        def send() -> None:
            try:
                self._result = self._client.patch(self._url, content=body(), headers=headers)
            except BaseException as exc:  # surfaced to the writer thread
                self._error = exc

        self._sender = threading.Thread(target=send, name="stagebox-tus-send", daemon=True)
        self._sender.start()

    def _check_sender(self) -> None:
        if self._sender is not None and not self._sender.is_alive():
            self._raise_outcome(expect_done=False)

    def write(self, offset: int, chunk: bytes) -> None:
        if self._sender is None:
            self._start(offset)
        assert self._queue is not None
        while True:
            self._check_sender()
            try:
                self._queue.put(chunk, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> int:
        if self._sender is None:  # nothing to send (resumed at the end, or empty)
            return self._length
        assert self._queue is not None
        while self._sender.is_alive():
            try:
                self._queue.put(_DONE, timeout=0.2)
                break
            except queue.Full:
                continue
        self._sender.join()
        self._sender = None
        return self._raise_outcome(expect_done=True)

    def _raise_outcome(self, expect_done: bool) -> int:
        self._sender = None
        if self._error is not None:
            error = self._error
            if isinstance(error, httpx.TransportError):
                raise connection_error(f"PATCH {self._url}", error) from error
            if isinstance(error, TransportError):
                raise error
            raise ConnectionFailed(f"PATCH {self._url}: {error!r}") from error
        assert self._result is not None
        raise_for_status(self._result)
        offset = int(self._result.headers.get("Upload-Offset", "0"))
        if not expect_done:
            raise ServerError(self._result.status_code, "server ended the upload early")
        return offset

    def abandon(self) -> None:
        if self._sender is not None and self._queue is not None:
            # Unblock the body generator; the server keeps what it received.
            while self._sender.is_alive():
                try:
                    self._queue.put(_DONE, timeout=0.2)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._queue.get_nowait()
            self._sender.join(timeout=30)
        self._sender = None

    def discard(self, target: str) -> None:
        try:
            response = self._client.delete(target, headers=TUS_HEADERS)
        except httpx.TransportError as exc:
            raise connection_error(f"DELETE {target}", exc) from exc
        if response.status_code != 404:
            raise_for_status(response)

    def close(self) -> None:
        self.abandon()
