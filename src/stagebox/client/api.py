"""A thin, retrying client of the stagebox HTTP API."""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

from stagebox.errors import AuthError, ConfigError, ConnectionFailed, ServerError
from stagebox.transports.http import connection_error, raise_for_status

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = {423, 500, 502, 503, 504}


def retryable(exc: Exception) -> bool:
    if isinstance(exc, ConnectionFailed):
        return True
    return isinstance(exc, ServerError) and exc.status in RETRYABLE_STATUS


class Backoff:
    """Exponential backoff with jitter; ``attempts`` tries in all."""

    def __init__(self, attempts: int = 10, base: float = 0.25, cap: float = 5.0) -> None:
        self.attempts = attempts
        self.base = base
        self.cap = cap

    def delays(self) -> list[float]:
        return [
            min(self.cap, self.base * 2**i) * (0.5 + random.random() / 2)
            for i in range(self.attempts - 1)
        ]

    def run(self, fn: Callable[[], T], what: str) -> T:
        delays = self.delays()
        for delay in [*delays, None]:
            try:
                return fn()
            except Exception as exc:
                if delay is None or not retryable(exc):
                    raise
                log.info("%s failed (%s); retrying in %.1fs", what, exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")


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
        backoff: Backoff | None = None,
        verify_tls: bool | ssl.SSLContext = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token:
            raise ConfigError("no token: pass --token or set STAGEBOX_TOKEN")
        self.server = server.rstrip("/")
        self.backoff = backoff or Backoff()
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
        )

    def close(self) -> None:
        self.http.close()

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

        return self.backoff.run(once, f"{method} {url}")

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
