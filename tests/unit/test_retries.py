"""Which failures are tried again, how each retry is told, and the per-file budget
that starts afresh whenever the server's offset moved forward."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import stamina

from stagebox.client.api import Retry, RetryPolicy, StageboxClient, retryable
from stagebox.client.journal import Journal
from stagebox.client.progress import ProgressEvent
from stagebox.client.scan import LocalFile
from stagebox.client.uploader import Uploader, UploadOptions
from stagebox.errors import (
    AuthError,
    ChangedDuringUpload,
    ConnectionFailed,
    ServerError,
    StageboxError,
    TransportError,
    Unreachable,
)
from stagebox.transports import Transport
from stagebox.transports.http import short_reason

ATTEMPTS = 3


@pytest.fixture(autouse=True)
def no_waits() -> Iterator[None]:
    """Every run of attempts gets ATTEMPTS tries and no backoff."""
    with stamina.set_testing(True, attempts=ATTEMPTS):
        yield


# -- small servers on 127.0.0.1 that fail in one way each ------------------------


@contextlib.contextmanager
def tcp_server(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """Accepts connections on a free port and hands each to ``answer``; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            answer(conn)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def resets(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def hangs_up(conn: socket.socket) -> None:
    conn.recv(65536)


def plain_http(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


def stalls(conn: socket.socket) -> None:
    conn.recv(65536)
    threading.Event().wait(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def failure_of(url: str, timeout: float = 5.0) -> StageboxError:
    """What one GET of ``url`` raises, mapped into the tree, after its retries."""
    client = StageboxClient(url, "t")
    client.http.timeout = httpx.Timeout(timeout)
    try:
        client.health()
    except StageboxError as exc:
        return exc
    finally:
        client.close()
    raise AssertionError("the request succeeded")


def test_nothing_listening_is_unreachable_and_not_retried():
    port = free_port()
    error = failure_of(f"http://127.0.0.1:{port}")
    assert isinstance(error, Unreachable)
    assert str(error) == (
        f"cannot reach http://127.0.0.1:{port} (connection refused): "
        "is stagebox serve running there?"
    )
    assert not retryable(error)


def test_unknown_host_is_unreachable():
    error = failure_of("http://nohost.invalid:8080")
    assert isinstance(error, Unreachable)
    assert str(error) == (
        "cannot reach http://nohost.invalid:8080 (unknown host nohost.invalid): "
        "check the server URL"
    )


def test_https_against_a_plain_http_port_is_unreachable_with_the_http_url():
    with tcp_server(plain_http) as port:
        error = failure_of(f"https://127.0.0.1:{port}")
    assert isinstance(error, Unreachable)
    assert str(error) == (
        f"cannot reach https://127.0.0.1:{port} (the port does not speak https): "
        f"try http://127.0.0.1:{port}"
    )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(resets, "connection reset"), (hangs_up, "server disconnected"), (stalls, "timed out")],
)
def test_a_broken_connection_is_retried(answer, reason):
    connections = []

    def counted(conn: socket.socket) -> None:
        connections.append(1)
        answer(conn)

    with tcp_server(counted) as port:
        error = failure_of(f"http://127.0.0.1:{port}", timeout=0.2)
    assert isinstance(error, ConnectionFailed)
    assert not isinstance(error, Unreachable)
    assert retryable(error)
    assert short_reason(error) == reason
    assert len(connections) == ATTEMPTS


@pytest.mark.parametrize("status", [423, 500, 502, 503, 504])
def test_a_busy_or_failing_server_is_retried(status):
    assert retryable(ServerError(status, "try later"))


@pytest.mark.parametrize("status", [400, 403, 404, 409, 413, 422])
def test_a_refused_request_is_not_retried(status):
    assert not retryable(ServerError(status, "no"))


@pytest.mark.parametrize(
    "error",
    [AuthError("revoked"), TransportError("CERTIFICATE_VERIFY_FAILED"), ChangedDuringUpload("x")],
)
def test_errors_that_will_not_pass_are_not_retried(error):
    assert not retryable(error)


def answering(handler: Callable[[httpx.Request], httpx.Response]) -> StageboxClient:
    return StageboxClient("http://stagebox.test", "t", transport=httpx.MockTransport(handler))


def test_a_server_that_answered_once_and_then_refuses_is_waited_for():
    # given a client that has had an answer from its server
    client = answering(lambda _: httpx.Response(200, json={"status": "ok"}))
    refused = Unreachable("http://stagebox.test", "connection refused")
    assert not client.can_retry(refused)
    client.health()
    # then a refused connection is a restart: worth retrying
    assert client.can_retry(refused)


def test_each_retry_is_one_warning_line_and_told_to_the_listener(caplog):
    client = answering(lambda _: httpx.Response(503, json={"detail": "busy"}))
    told: list[Retry] = []
    calls = []

    def attempt() -> None:
        calls.append(1)
        client._request("GET", "/api/v1/health")

    with caplog.at_level(logging.WARNING, "stagebox.client.api"), pytest.raises(ServerError):
        client.retrying("ds/big.bin", attempt, on_retry=told.append)
    assert [r.number for r in told] == list(range(1, ATTEMPTS))
    assert str(told[0]) == "ds/big.bin: server answered 503; retry 1 in 0.0 s"
    assert f"ds/big.bin: server answered 503; retry {ATTEMPTS - 1} in 0.0 s" in caplog.messages
    # the inner request retried on its own too, with its own line
    assert "GET /api/v1/health: server answered 503; retry 1 in 0.0 s" in caplog.messages


def test_retry_line_names_the_file_the_reason_the_number_and_the_wait():
    error = ConnectionFailed("PATCH /files/x: [Errno 104] Connection reset by peer")
    error.__cause__ = httpx.WriteError("reset")
    error.__cause__.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    line = str(Retry("file.bin", error, 2, 1.5))
    assert line == "file.bin: connection reset; retry 2 in 1.5 s"


def test_a_retry_policy_can_be_given_to_the_client():
    client = StageboxClient("http://x", "t", retry=RetryPolicy(attempts=2, wait_max=0.5))
    assert client.retry.attempts == 2


# -- the per-file budget: it starts afresh whenever the offset moved forward ----


class FlakyLink(Transport):
    """A staging target behind a link that, per attempt, lets through the next
    number of bytes from ``allowances`` and then drops (all, when the list is out)."""

    chunk_size = 1024

    def __init__(self, allowances: list[int]) -> None:
        self.allowances = allowances
        self.staged = bytearray()
        self.opens = 0
        self._left: int | None = None

    def open(self, target: str, length: int) -> int:
        self.opens += 1
        self._left = self.allowances.pop(0) if self.allowances else None
        return len(self.staged)

    def write(self, offset: int, chunk: bytes) -> None:
        assert offset == len(self.staged)
        if self._left is not None and len(chunk) > self._left:
            self.staged += chunk[: self._left]
            raise ConnectionFailed("connection reset")
        self.staged += chunk
        if self._left is not None:
            self._left -= len(chunk)

    def finish(self) -> int:
        return len(self.staged)

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        pass


def fake_server(link: FlakyLink) -> Callable[[httpx.Request], httpx.Response]:
    """The API around one upload: completing it checks the staged bytes' sha256."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/uploader":
            return httpx.Response(200, json={"uuid": "u-1"})
        if path == "/api/v1/datafiles/batch":
            answer = {"action": "upload", "id": 1, "offset": 0, "upload_url": "/files/1"}
            return httpx.Response(200, json={"files": [answer]})
        if path == "/api/v1/datafiles/1/complete":
            declared = json.loads(request.content)["sha256"]
            good = declared == hashlib.sha256(link.staged).hexdigest()
            return httpx.Response(200, json={"state": "stored" if good else "failed"})
        return httpx.Response(404, json={"detail": path})

    return handle


def upload_through(link: FlakyLink, tmp_path: Path, size: int = 64 << 10):
    data = os.urandom(size)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    st = path.stat()
    file = LocalFile(path, "ds", "", "big.bin", st.st_size, st.st_mtime_ns)
    events: list[ProgressEvent] = []
    client = StageboxClient(
        "http://stagebox.test", "t", transport=httpx.MockTransport(fake_server(link))
    )
    options = UploadOptions(threads=1, small_file_bytes=1024)
    with contextlib.closing(Journal(tmp_path / "journal.db")) as journal:
        report = Uploader(client, journal, options, events.append, lambda: link).run([file])
    return report, events, data


def test_a_link_that_drops_after_every_few_kib_still_gets_the_file_through(tmp_path):
    # given a link that drops every attempt after 5 KiB: 13 attempts, far past the budget
    link = FlakyLink([5 << 10] * 20)
    report, events, data = upload_through(link, tmp_path)
    # then every attempt moved the offset forward, so the file arrives whole
    assert report.counts["verified"] == 1, report.failures
    assert bytes(link.staged) == data
    assert link.opens > 2 * ATTEMPTS
    retries = [e.message for e in events if e.kind == "retrying"]
    assert retries
    assert set(retries) == {"ds/big.bin: connection reset; retry 1 in 0.0 s"}


def test_a_link_that_moves_nothing_fails_the_file_after_the_budget(tmp_path):
    link = FlakyLink([0] * 20)
    report, events, _ = upload_through(link, tmp_path)
    assert report.counts["failed"] == 1
    assert report.failures[0].error == "connection reset"
    # the run's attempts, then one more look whether the last one moved the offset
    assert link.opens == ATTEMPTS + 1
    assert [e.message for e in events if e.kind == "retrying"] == [
        f"ds/big.bin: connection reset; retry {n} in 0.0 s" for n in range(1, ATTEMPTS)
    ]


def test_attempts_without_progress_between_ones_with_progress_never_run_out(tmp_path):
    # given a link where only every third attempt moves the offset (the budget's last)
    link = FlakyLink([0, 0, 8 << 10] * 12)
    report, _, data = upload_through(link, tmp_path)
    assert report.counts["verified"] == 1, report.failures
    assert bytes(link.staged) == data


def test_resumes_hash_from_kept_states_and_the_digest_is_right(tmp_path):
    # given drops at offsets that are not chunk boundaries
    link = FlakyLink([1500, 777, 4099, 3, 10_000] * 10)
    report, _, data = upload_through(link, tmp_path, size=(96 << 10) + 17)
    assert report.counts["verified"] == 1, report.failures
    assert bytes(link.staged) == data
