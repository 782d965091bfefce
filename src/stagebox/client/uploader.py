"""Upload orchestration: register in batches, send, hash while sending, complete.

Small files travel in bundles (many per request); large files stream through a
transport, resumed from the server's offset after any interruption. Every byte
is read once: the hash is taken from the bytes as they are sent.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from stagebox.checksums import MultiHasher
from stagebox.client.api import StageboxClient, retryable
from stagebox.client.journal import Journal
from stagebox.client.progress import FileResult, ProgressCallback, ProgressEvent, ignore
from stagebox.client.ratelimit import RateLimiter
from stagebox.client.scan import LocalFile
from stagebox.errors import ChangedDuringUpload, ConnectionFailed, ServerError, StageboxError
from stagebox.transports import Transport, TusTransport
from stagebox.wire import BUNDLE_CONTENT_TYPE, encode_bundle_header

log = logging.getLogger(__name__)

REGISTER_BATCH = 1000
CHUNK = 1 << 20


@dataclass
class UploadOptions:
    threads: int = 5
    small_file_bytes: int = 1 << 20
    bundle_bytes: int = 4 << 20
    bundle_files: int = 500
    algorithms: tuple[str, ...] = ("sha256",)
    bwlimit: float = 0.0  # bytes per second for all threads together; 0 = unlimited


@dataclass
class UploadReport:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, state: str) -> int:
        return sum(1 for r in self.results if r.state == state)

    @property
    def ok(self) -> bool:
        return all(r.state != "failed" for r in self.results)

    def to_json(self) -> dict[str, object]:
        return {
            "files": [r.to_json() for r in self.results],
            "totals": {
                "files": len(self.results),
                "verified": self.count("verified"),
                "skipped": self.count("skipped"),
                "failed": self.count("failed"),
                "bytes_sent": sum(r.bytes_sent for r in self.results),
                "seconds": round(self.seconds, 3),
            },
        }


def _open_source(file: LocalFile) -> Any:
    """Open without following symlinks, and insist it is still the same regular file."""
    try:
        fd = os.open(file.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ChangedDuringUpload(f"cannot open: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (file.size, file.mtime_ns):
        os.close(fd)
        raise ChangedDuringUpload("changed during upload (size or mtime differs from the scan)")
    return os.fdopen(fd, "rb", buffering=0)


def _check_unchanged(f: Any, file: LocalFile) -> None:
    st = os.fstat(f.fileno())
    if (st.st_size, st.st_mtime_ns) != (file.size, file.mtime_ns):
        raise ChangedDuringUpload("changed during upload")


class Uploader:
    """Uploads scanned files to one server; reusable for several runs."""

    def __init__(
        self,
        client: StageboxClient,
        journal: Journal,
        options: UploadOptions | None = None,
        progress: ProgressCallback = ignore,
        transport_factory: Callable[[], Transport] | None = None,
    ) -> None:
        self.client = client
        self.journal = journal
        self.options = options or UploadOptions()
        self.progress = progress
        self._transport_factory = transport_factory or (lambda: TusTransport(client.http))
        self._local = threading.local()
        self._transports: list[Transport] = []
        self._lock = threading.Lock()
        # Small files waiting to fill a bundle; touched only by the run() thread.
        self._bundle: list[tuple[LocalFile, dict[str, Any]]] = []
        self._bundle_size = 0
        self._limiter = RateLimiter(self.options.bwlimit)

    # -- the run -----------------------------------------------------------

    def run(self, files: Iterable[LocalFile]) -> UploadReport:
        started = time.monotonic()
        report = UploadReport()
        futures: list[Future[list[FileResult]]] = []
        verified = self.journal.verified_paths()
        with ThreadPoolExecutor(self.options.threads, thread_name_prefix="stagebox-up") as pool:
            for batch in _batched(iter(files), REGISTER_BATCH):
                to_register = []
                for file in batch:
                    if file.error:
                        report.results.append(self._finish(file, "failed", error=file.error))
                    elif verified.get(str(file.path)) == (file.size, file.mtime_ns):
                        report.results.append(self._finish(file, "skipped"))
                    else:
                        to_register.append(file)
                self.progress(
                    ProgressEvent(
                        "planned",
                        files=len(to_register),
                        nbytes=sum(f.size for f in to_register),
                    )
                )
                for file, answer in self._register(to_register, report):
                    self._dispatch(pool, futures, file, answer, report)
                self._flush_bundle(pool, futures)
            for future in futures:
                report.results.extend(future.result())
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        report.seconds = time.monotonic() - started
        return report

    def _finish(
        self, file: LocalFile, state: Any, bytes_sent: int = 0, error: str | None = None
    ) -> FileResult:
        result = FileResult(file, state, bytes_sent, error)
        self.progress(ProgressEvent("finished", file=file, result=result))
        return result

    def _register(
        self, files: list[LocalFile], report: UploadReport
    ) -> Iterator[tuple[LocalFile, dict[str, Any]]]:
        if not files:
            return
        try:
            answers = self.client.register([f.registration() for f in files])
        except ServerError as exc:
            if exc.status != 409 or len(files) == 1:
                if len(files) == 1:
                    report.results.append(self._finish(files[0], "failed", error=str(exc)))
                    return
                raise
            # One file conflicts with what is stored: isolate it, keep the rest going.
            for file in files:
                yield from self._register([file], report)
            return
        skipped = []
        for file, answer in zip(files, answers, strict=True):
            if answer["action"] == "skip":
                skipped.append(
                    (file.path, file.size, file.mtime_ns, answer.get("sha256"), answer["id"])
                )
                report.results.append(self._finish(file, "skipped"))
            else:
                yield file, answer
        self.journal.record_verified(skipped)

    # -- dispatch: bundles for small files, a transport for the rest ---------

    def _dispatch(
        self,
        pool: ThreadPoolExecutor,
        futures: list[Future[list[FileResult]]],
        file: LocalFile,
        answer: dict[str, Any],
        report: UploadReport,
    ) -> None:
        opts = self.options
        if file.size <= opts.small_file_bytes and answer["offset"] == 0:
            self._bundle.append((file, answer))
            self._bundle_size += file.size
            if len(self._bundle) >= opts.bundle_files or self._bundle_size >= opts.bundle_bytes:
                self._flush_bundle(pool, futures)
        else:
            futures.append(pool.submit(lambda: [self._send_large(file, answer)]))

    def _flush_bundle(
        self, pool: ThreadPoolExecutor, futures: list[Future[list[FileResult]]]
    ) -> None:
        bundle, self._bundle, self._bundle_size = self._bundle, [], 0
        if bundle:
            futures.append(pool.submit(self._send_bundle, bundle))

    def _send_bundle(self, items: list[tuple[LocalFile, dict[str, Any]]]) -> list[FileResult]:
        results: list[FileResult] = []
        entries: list[dict[str, object]] = []
        blobs: list[bytes] = []
        sent: list[tuple[LocalFile, dict[str, Any], str]] = []
        for file, answer in items:
            self.progress(ProgressEvent("started", file=file))
            try:
                with _open_source(file) as f:
                    data = f.read(file.size + 1)
                    _check_unchanged(f, file)
                if len(data) != file.size:
                    raise ChangedDuringUpload("changed during upload")
            except ChangedDuringUpload as exc:
                results.append(self._finish(file, "failed", error=str(exc)))
                continue
            hasher = MultiHasher(self.options.algorithms)
            hasher.update(data)
            digests = hasher.hexdigests()
            entries.append({"id": answer["id"], "size": file.size, **digests})
            blobs.append(data)
            sent.append((file, answer, digests["sha256"]))
        if not entries:
            return results
        parts = [encode_bundle_header({"files": entries}), *blobs]
        del blobs
        self._limiter.consume(sum(len(p) for p in parts))
        try:
            answers = self.client.bundle(parts, BUNDLE_CONTENT_TYPE)
        except StageboxError as exc:
            return results + [self._finish(file, "failed", error=str(exc)) for file, _, _ in sent]
        done = []
        for (file, answer, sha256), outcome in zip(sent, answers, strict=True):
            self.progress(ProgressEvent("advanced", file=file, nbytes=file.size))
            if outcome["state"] in ("verified", "stored"):
                done.append((file.path, file.size, file.mtime_ns, sha256, answer["id"]))
                results.append(self._finish(file, "verified", file.size))
            else:
                error = outcome.get("error") or f"server left it {outcome['state']}"
                results.append(self._finish(file, "failed", file.size, error))
        self.journal.record_verified(done)
        return results

    def _transport(self) -> Transport:
        transport: Transport | None = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._transport_factory()
            self._local.transport = transport
            with self._lock:
                self._transports.append(transport)
        return transport

    def _send_large(self, file: LocalFile, answer: dict[str, Any]) -> FileResult:
        """Stream one file, resuming from the server's offset after any failure."""
        self.progress(ProgressEvent("started", file=file))
        url = answer["upload_url"]
        self.journal.record_upload(file.path, file.size, file.mtime_ns, answer["id"], url)
        transport = self._transport()
        sent = 0
        delays = self.client.backoff.delays()
        while True:
            try:
                digests, n = self._stream(transport, file, url)
                sent += n
                break
            except ChangedDuringUpload as exc:
                transport.abandon()
                self._discard(url)
                return self._finish(file, "failed", sent, str(exc))
            except StageboxError as exc:
                transport.abandon()
                sent += getattr(exc, "bytes_sent", 0)
                if not retryable(exc) or not delays:
                    return self._finish(file, "failed", sent, str(exc))
                delay = delays.pop(0)
                log.info("%s: %s; resuming in %.1fs", file.display, exc, delay)
                time.sleep(delay)
        try:
            outcome = self.client.complete(answer["id"], digests)
        except StageboxError as exc:
            return self._finish(file, "failed", sent, str(exc))
        if outcome["state"] in ("verified", "stored"):
            self.journal.record_verified(
                [(file.path, file.size, file.mtime_ns, digests["sha256"], answer["id"])]
            )
            return self._finish(file, "verified", sent)
        error = outcome.get("error") or f"server left it {outcome['state']}"
        return self._finish(file, "failed", sent, error)

    def _stream(
        self, transport: Transport, file: LocalFile, url: str
    ) -> tuple[dict[str, str], int]:
        """One attempt: resume at the server's offset; returns digests and bytes sent."""
        offset = transport.open(url, file.size)
        hasher = MultiHasher(self.options.algorithms)
        pos = offset
        with _open_source(file) as f:
            # Re-hash the prefix the server already has instead of re-sending it.
            if offset and hasher.update_from(f, offset) != offset:
                raise ChangedDuringUpload("changed during upload (shorter than registered)")
            try:
                while pos < file.size:
                    chunk = f.read(min(CHUNK, file.size - pos))
                    if not chunk:
                        raise ChangedDuringUpload("changed during upload (shorter than registered)")
                    hasher.update(chunk)
                    self._limiter.consume(len(chunk))
                    transport.write(pos, chunk)
                    pos += len(chunk)
                    self.progress(ProgressEvent("advanced", file=file, nbytes=len(chunk)))
                if f.read(1):
                    raise ChangedDuringUpload("changed during upload (longer than registered)")
                _check_unchanged(f, file)
            except StageboxError as exc:
                exc.bytes_sent = pos - offset  # type: ignore[attr-defined]
                raise
            staged = transport.finish()
        if staged != file.size:
            raise ConnectionFailed(f"the server holds {staged} of {file.size} bytes; resuming")
        return hasher.hexdigests(), pos - offset

    def _discard(self, url: str) -> None:
        """Drop a half-sent upload of a file that changed, so no mix is ever stored."""
        try:
            self.client.terminate(url)
        except StageboxError as exc:
            log.warning("could not discard %s: %s", url, exc)


def _batched(items: Iterator[LocalFile], n: int) -> Iterator[list[LocalFile]]:
    while batch := list(islice(items, n)):
        yield batch
