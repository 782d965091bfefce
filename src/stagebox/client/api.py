"""A thin, retrying client of the stagebox HTTP API.

Failures that can pass (a reset or dropped connection, a timeout, 423, 5xx) are
tried again with stamina's exponential backoff and jitter, and each retry is
announced in one line: ``POST /api/v1/datafiles/batch: server answered 503;
retry 1 in 0.2 s``, logged at WARNING (so it reaches stderr at the default
verbosity) and told to the caller's listener. A server that is not there at all
(:class:`~stagebox.errors.Unreachable`) fails at once, unless it answered before.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import stamina
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

from stagebox.errors import (
    AuthError,
    ConfigError,
    ConnectionFailed,
    ServerError,
    Unreachable,
)
from stagebox.transports.http import connection_error, raise_for_status, short_reason

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = frozenset({423, 500, 502, 503, 504})


def retryable(exc: BaseException) -> bool:
    """Whether a failure can pass by itself, so that trying again is worth a wait:
    a broken or timed-out connection, a locked upload (423), a failing server (5xx).
    An :class:`Unreachable` server is not (see :meth:`StageboxClient.can_retry`)."""
    if isinstance(exc, Unreachable):
        return False
    if isinstance(exc, ConnectionFailed):
        return True
    return isinstance(exc, ServerError) and exc.status in RETRYABLE_STATUS


@dataclass(frozen=True)
class RetryPolicy:
    """How long a failure that can pass is tried again: up to ``attempts`` tries
    within ``timeout`` seconds, waiting ``wait_initial * 2**n`` plus up to
    ``wait_jitter``, at most ``wait_max``, before try ``n + 1`` (stamina's backoff).
    With the defaults, ten failures in a row cost about 22 s of waiting."""

    attempts: int = 10
    timeout: float | None = 120.0
    wait_initial: float = 0.1
    wait_max: float = 5.0
    wait_jitter: float = 0.3


@dataclass(frozen=True)
class Retry:
    """One retry about to happen: ``what`` failed with ``error``; retry ``number``
    (1 after the first failure) follows in ``delay`` seconds."""

    what: str
    error: BaseException
    number: int
    delay: float

    def __str__(self) -> str:
        return f"{self.what}: {short_reason(self.error)}; retry {self.number} in {self.delay:.1f} s"


OnRetry = Callable[[Retry], None]

# stamina calls its hooks in the thread that is retrying, just before it waits;
# this tells that thread's current StageboxClient.retrying call.
_retrying = threading.local()


def _announce(details: RetryDetails) -> None:
    tell: Callable[[RetryDetails], None] | None = getattr(_retrying, "tell", None)
    if tell is not None:
        tell(details)


# stagebox announces each retry itself, in one line. stamina's default hooks
# would add a "stamina.retry_scheduled" record, or with structlog installed a
# line on stdout, in the middle of a --json report.
set_on_retry_hooks([_announce])


class _Parts:
    """A re-iterable body (a retry sends it again) that never joins its parts."""

    def __init__(self, parts: list[bytes]) -> None:
        self._parts = parts

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._parts)


class StageboxClient:
    """Talks to one server with one token; safe to share between threads."""

    def __init__(
        self,
        server: str,
        token: str,
        *,
        threads: int = 5,
        retry: RetryPolicy | None = None,
        verify_tls: bool | ssl.SSLContext = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token:
            raise ConfigError("no token: pass --token or set STAGEBOX_TOKEN")
        self.server = server.rstrip("/")
        self.retry = retry or RetryPolicy()
        #: Whether the server has answered once: from then on a refused connection
        #: is a restart, worth waiting for, not a wrong address.
        self.reached = False
        limits = httpx.Limits(
            max_connections=threads * 2 + 2, max_keepalive_connections=threads * 2
        )
        self.http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=limits,
            verify=verify_tls,
            transport=transport,
            event_hooks={"response": [self._answered]},
        )

    def _answered(self, _response: httpx.Response) -> None:
        self.reached = True

    def close(self) -> None:
        self.http.close()

    def can_retry(self, exc: BaseException) -> bool:
        """:func:`retryable`, and :class:`Unreachable` too once the server has answered:
        then it is restarting (or the network is coming back), not a wrong address."""
        return retryable(exc) or (isinstance(exc, Unreachable) and self.reached)

    def retrying(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        on: Callable[[BaseException], bool] | None = None,
        on_retry: OnRetry | None = None,
    ) -> T:
        """``fn()``, called again after each failure that ``on`` (default
        :meth:`can_retry`) accepts, until it succeeds or :attr:`retry` is spent;
        then the last failure is raised. Each retry is announced in one line,
        logged at WARNING and passed to ``on_retry``."""
        policy = self.retry

        def tell(details: RetryDetails) -> None:
            retry = Retry(what, details.caused_by, details.retry_num, details.wait_for)
            log.warning("%s", retry)
            if on_retry is not None:
                on_retry(retry)

        outer = getattr(_retrying, "tell", None)
        _retrying.tell = tell
        try:
            for attempt in stamina.retry_context(
                on=on or self.can_retry,
                attempts=policy.attempts,
                timeout=policy.timeout,
                wait_initial=policy.wait_initial,
                wait_max=policy.wait_max,
                wait_jitter=policy.wait_jitter,
            ):
                with attempt:
                    return fn()
        finally:
            _retrying.tell = outer
        raise AssertionError("unreachable")  # stamina raises the last failure

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        def once() -> httpx.Response:
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                raise connection_error(f"{method} {url}", exc) from exc
            if response.status_code == 401:
                raise AuthError("the server refused the token (unknown or revoked)")
            raise_for_status(response)
            return response

        return self.retrying(f"{method} {url}", once)

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/api/v1/health").json()
        return result

    def register(self, files: list[dict[str, Any]], method: str = "http") -> list[dict[str, Any]]:
        body: dict[str, Any] = {"files": files}
        if method != "http":
            body["method"] = method
        answer = self._request("POST", "/api/v1/datafiles/batch", json=body)
        result: list[dict[str, Any]] = answer.json()["files"]
        return result

    def staged_bundle(self, path: str) -> list[dict[str, Any]]:
        """Have the server take a bundle written into this uploader's sftp directory."""
        answer = self._request("POST", "/api/v1/datafiles/bundle/staged", json={"path": path})
        result: list[dict[str, Any]] = answer.json()["files"]
        return result

    def wait_settled(self, datafile_id: int, timeout: float) -> dict[str, Any]:
        """Wait (long-polling the server) until it has verified or failed a datafile."""
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.0, min(25.0, deadline - time.monotonic()))
            answer: dict[str, Any] = self._request(
                "GET", f"/api/v1/datafiles/{datafile_id}", params={"wait": round(wait, 3)}
            ).json()
            if answer["state"] not in ("staged", "verified") or time.monotonic() >= deadline:
                return answer

    def whoami(self) -> dict[str, Any]:
        """The uploader the token belongs to (its uuid, name and machine)."""
        result: dict[str, Any] = self._request("GET", "/api/v1/uploader").json()
        return result

    def check(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the catalog holds of each local file (size, sha256): see ``stagebox verify``."""
        answer = self._request("POST", "/api/v1/datafiles/check", json={"files": files})
        result: list[dict[str, Any]] = answer.json()["files"]
        return result

    def describe(self, machine: dict[str, str]) -> dict[str, Any]:
        result: dict[str, Any] = self._request("PUT", "/api/v1/uploader", json=machine).json()
        return result

    def request_registration(self, public_key: str) -> dict[str, Any]:
        body = {"public_key": public_key}
        result: dict[str, Any] = self._request("POST", "/api/v1/registrations", json=body).json()
        return result

    def registrations(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/api/v1/registrations").json()
        return result

    def complete(self, datafile_id: int, digests: dict[str, str]) -> dict[str, Any]:
        body = {"sha256": digests["sha256"], "md5": digests.get("md5")}
        result: dict[str, Any] = self._request(
            "POST", f"/api/v1/datafiles/{datafile_id}/complete", json=body
        ).json()
        return result

    def bundle(self, parts: list[bytes], content_type: str) -> list[dict[str, Any]]:
        """POST a bundle given as its parts (header, then each file), sent without joining."""
        length = sum(len(p) for p in parts)
        answer = self._request(
            "POST",
            "/api/v1/datafiles/bundle",
            content=_Parts(parts),
            headers={"Content-Type": content_type, "Content-Length": str(length)},
        )
        result: list[dict[str, Any]] = answer.json()["files"]
        return result

    def get(self, datafile_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/v1/datafiles/{datafile_id}").json()
        return result

    def list(self, **params: Any) -> dict[str, Any]:
        query = {k: v for k, v in params.items() if v is not None}
        result: dict[str, Any] = self._request("GET", "/api/v1/datafiles", params=query).json()
        return result
