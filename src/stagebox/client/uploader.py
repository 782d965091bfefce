"""Upload orchestration: register in batches, send, hash while sending, complete.

Small files travel in bundles (many per request); large files stream through a
transport, resumed from the server's offset after any interruption. Every byte
is read once: the hash is taken from the bytes as they are sent.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from stagebox.checksums import MultiHasher
from stagebox.client.api import Retry, StageboxClient
from stagebox.client.journal import Journal
from stagebox.client.progress import FileResult, ProgressCallback, ProgressEvent, ignore
from stagebox.client.scan import SOURCE_OPEN_FLAGS, LocalFile
from stagebox.errors import (
    AuthError,
    ChangedDuringUpload,
    ConfigError,
    ConnectionFailed,
    HostKeyError,
    ServerError,
    StageboxError,
    Unreachable,
)
from stagebox.ratelimit import RateLimiter
from stagebox.transports import Transport, TusTransport
from stagebox.wire import BUNDLE_CONTENT_TYPE, encode_bundle_header

log = logging.getLogger(__name__)

REGISTER_BATCH = 1000
# Failures that would fail every file the same way: stop the run instead.
FATAL = (AuthError, ConfigError, HostKeyError, Unreachable)


@dataclass
class UploadOptions:
    threads: int = 5
    small_file_bytes: int = 1 << 20
    bundle_bytes: int = 4 << 20
    bundle_files: int = 500
    algorithms: tuple[str, ...] = ("sha256",)
    bwlimit: float = 0.0  # bytes per second for all threads together; 0 = unlimited
    method: str = "http"  # or "sftp": register for sftp, stage over the transport
    # How long to wait, beyond a second per 50 MB, for the server to verify a
    # file whose bytes it must read back (sftp).
    settle_timeout: float = 120.0


MAX_FAILURES_KEPT = 1000


@dataclass
class UploadReport:
    """Totals of a run and its first failures: its size does not grow with the tree.

    Each file's result goes to the progress listeners as it finishes (the
    ``--json`` report streams them); only counters are kept here.
    """

    counts: dict[str, int] = field(
        default_factory=lambda: {"verified": 0, "skipped": 0, "failed": 0}
    )
    bytes_sent: int = 0
    failures: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: FileResult) -> None:
        with self._lock:
            self.counts[result.state] += 1
            self.bytes_sent += result.bytes_sent
            if result.state == "failed" and len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append(result)

    @property
    def files(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.counts["failed"] == 0

    def totals(self) -> dict[str, int | float]:
        return {
            "files": self.files,
            **self.counts,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
        }


def _open_source(file: LocalFile) -> Any:
    """Open without following symlinks, and insist it is still the same regular file."""
    try:
        fd = os.open(file.path, SOURCE_OPEN_FLAGS)
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
        self.report = UploadReport()
        self._errors: list[BaseException] = []
        self._slots = threading.BoundedSemaphore(self.options.threads * 2)

    # -- the run -----------------------------------------------------------

    def run(self, files: Iterable[LocalFile]) -> UploadReport:
        """Upload every file; ``self.report`` holds the totals even if this raises."""
        started = time.monotonic()
        self.report = UploadReport()
        self._errors = []
        if not self.journal.uploader:
            # The journal's rows belong to one uploader: another token, another scope.
            self.journal.uploader = self.client.whoami()["uuid"]
        # Work in flight is bounded, so memory does not grow with the tree.
        self._slots = threading.BoundedSemaphore(self.options.threads * 2)
        try:
            with (
                ThreadPoolExecutor(self.options.threads, thread_name_prefix="stagebox-up") as pool,
                ThreadPoolExecutor(1, thread_name_prefix="stagebox-register") as registrar,
            ):
                # The next batch is scanned while the server answers this one.
                planned: Future[list[tuple[LocalFile, dict[str, Any]]]] | None = None
                for batch in _batched(iter(files), REGISTER_BATCH):
                    if planned is not None:
                        self._send_planned(pool, planned.result())
                        if self._errors:
                            break
                    planned = registrar.submit(self._plan, batch)
                else:
                    if planned is not None:
                        self._send_planned(pool, planned.result())
            if self._errors:
                raise self._errors[0]
        finally:
            for transport in self._transports:
                transport.close()
            self._transports.clear()
            self.report.seconds = time.monotonic() - started
        return self.report

    def _plan(self, batch: list[LocalFile]) -> list[tuple[LocalFile, dict[str, Any]]]:
        """Register one batch; the files (with the server's answers) to send."""
        seen = self.journal.seen([f for f in batch if not f.error])
        to_register: list[tuple[LocalFile, str | None]] = []
        for file in batch:
            if file.error:
                self._finish(file, "failed", error=file.error)
            else:
                # A journal hit is declared, not trusted: the server decides.
                to_register.append((file, self.journal.unchanged_sha256(file, seen)))
        return list(self._register(to_register))

    def _send_planned(
        self, pool: ThreadPoolExecutor, uploads: list[tuple[LocalFile, dict[str, Any]]]
    ) -> None:
        self.progress(
            ProgressEvent("planned", files=len(uploads), nbytes=sum(f.size for f, _ in uploads))
        )
        for file, answer in uploads:
            self._dispatch(pool, file, answer)
        self._flush_bundle(pool)

    def _submit(self, pool: ThreadPoolExecutor, fn: Callable[..., object], *args: Any) -> None:
        self._slots.acquire()
        future = pool.submit(fn, *args)
        future.add_done_callback(self._done)

    def _done(self, future: Future[object]) -> None:
        self._slots.release()
        if (exc := future.exception()) is not None:
            self._errors.append(exc)

    def _finish(
        self, file: LocalFile, state: Any, bytes_sent: int = 0, error: str | None = None
    ) -> FileResult:
        result = FileResult(file, state, bytes_sent, error)
        self.report.add(result)
        self.progress(ProgressEvent("finished", file=file, result=result))
        return result

    def _register(
        self, files: list[tuple[LocalFile, str | None]]
    ) -> Iterator[tuple[LocalFile, dict[str, Any]]]:
        """Register (file, declared sha256) pairs; yields the files to send.

        The server answers each: skip (stored already), upload, or hash (a stored
        version has this size but another mtime: the file is hashed and
        registered again with its sha256, so a touched file is not sent again).
        """
        if not files:
            return
        entries = []
        for file, sha256 in files:
            entry = file.registration()
            if sha256 is not None:
                entry["sha256"] = sha256
            entries.append(entry)
        try:
            answers = self.client.register(entries, self.options.method)
        except ServerError as exc:
            if exc.status != 409 or len(files) == 1:
                if len(files) == 1:
                    self._finish(files[0][0], "failed", error=str(exc))
                    return
                raise
            # One file conflicts: isolate it, keep the rest going.
            for pair in files:
                yield from self._register([pair])
            return
        skipped: list[tuple[LocalFile, str, int | None]] = []
        to_hash: list[LocalFile] = []
        for (file, _), answer in zip(files, answers, strict=True):
            if answer["action"] == "skip":
                outcome = self._settled(answer, answer)
                if outcome["state"] == "stored":
                    skipped.append((file, str(answer.get("sha256") or ""), answer["id"]))
                    self._finish(file, "skipped")
                else:
                    self._finish(file, "failed", error=self._left(outcome))
            elif answer["action"] == "hash":
                to_hash.append(file)
            else:
                yield file, answer
        self.journal.record_stored([s for s in skipped if s[1]])
        hashed: list[tuple[LocalFile, str | None]] = []
        for file in to_hash:
            try:
                hashed.append((file, self._hash_file(file)))
            except ChangedDuringUpload as exc:
                self._finish(file, "failed", error=str(exc))
        if hashed:
            yield from self._register(hashed)

    def _hash_file(self, file: LocalFile) -> str:
        hasher = MultiHasher(("sha256",))
        with _open_source(file) as f:
            if hasher.update_from(f) != file.size:
                raise ChangedDuringUpload("changed while it was hashed")
            _check_unchanged(f, file)
        return hasher.hexdigests()["sha256"]

    def _settled(self, answer: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
        """The server's last word on a file: waits while it is verifying or promoting."""
        if outcome["state"] in ("staged", "verified"):
            size = int(outcome.get("size") or 0)
            timeout = self.options.settle_timeout + size / 50e6
            return self.client.wait_settled(answer["id"], timeout)
        return outcome

    @staticmethod
    def _left(outcome: dict[str, Any]) -> str:
        return str(outcome.get("error") or f"server left it {outcome['state']}, not stored")

    # -- dispatch: bundles for small files, a transport for the rest ---------

    def _dispatch(self, pool: ThreadPoolExecutor, file: LocalFile, answer: dict[str, Any]) -> None:
        opts = self.options
        if file.size <= opts.small_file_bytes and answer["offset"] == 0:
            self._bundle.append((file, answer))
            self._bundle_size += file.size
            if len(self._bundle) >= opts.bundle_files or self._bundle_size >= opts.bundle_bytes:
                self._flush_bundle(pool)
        else:
            self._submit(pool, self._send_large, file, answer)

    def _flush_bundle(self, pool: ThreadPoolExecutor) -> None:
        bundle, self._bundle, self._bundle_size = self._bundle, [], 0
        if bundle:
            self._submit(pool, self._send_bundle, bundle)

    def _send_bundle(self, items: list[tuple[LocalFile, dict[str, Any]]]) -> None:
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
                self._finish(file, "failed", error=str(exc))
                continue
            hasher = MultiHasher(self.options.algorithms)
            hasher.update(data)
            digests = hasher.hexdigests()
            entries.append({"id": answer["id"], "size": file.size, **digests})
            blobs.append(data)
            sent.append((file, answer, digests["sha256"]))
        if not entries:
            return
        parts = [encode_bundle_header({"files": entries}), *blobs]
        del blobs
        self._limiter.consume(sum(len(p) for p in parts))
        try:
            answers = self._post_bundle(parts)
        except FATAL:
            raise
        except StageboxError as exc:
            for file, _, _ in sent:
                self._finish(file, "failed", error=str(exc))
            return
        done: list[tuple[LocalFile, str, int | None]] = []
        for (file, answer, sha256), outcome in zip(sent, answers, strict=True):
            self.progress(ProgressEvent("advanced", file=file, nbytes=file.size))
            try:
                outcome = self._settled(answer, outcome)
            except StageboxError as exc:
                outcome = {"state": "unknown", "error": str(exc)}
            if outcome["state"] == "stored":
                done.append((file, sha256, answer["id"]))
                self._finish(file, "verified", file.size)
            else:
                self._finish(file, "failed", file.size, self._left(outcome))
        self.journal.record_stored(done)

    def _post_bundle(self, parts: list[bytes]) -> list[dict[str, Any]]:
        if self.options.method == "http":
            return self.client.bundle(parts, BUNDLE_CONTENT_TYPE)

        def attempt() -> list[dict[str, Any]]:
            # Written over the thread's SSH connection, then taken by the server.
            name = self._transport().put_bundle(parts)
            return self.client.staged_bundle(name)

        return self.client.retrying("bundle over sftp", attempt)

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
        url = answer["sftp_path"] if self.options.method == "sftp" else answer["upload_url"]
        self.journal.record_upload(file.path, file.size, file.mtime_ns, answer["id"], url)
        transport = self._transport()
        resume = _Resume()
        try:
            digests = self._resume(transport, file, url, resume)
        except ChangedDuringUpload as exc:
            self._discard(transport, url)
            return self._finish(file, "failed", resume.sent, str(exc))
        except FATAL:
            raise
        except StageboxError as exc:
            return self._finish(file, "failed", resume.sent, str(exc))
        try:
            # The server may read the bytes back first (sftp), and promotes them:
            # only a file in permanent storage counts.
            outcome = self._settled(answer, self.client.complete(answer["id"], digests))
        except StageboxError as exc:
            return self._finish(file, "failed", resume.sent, str(exc))
        if outcome["state"] == "stored":
            self.journal.record_stored([(file, digests["sha256"], answer["id"])])
            return self._finish(file, "verified", resume.sent)
        return self._finish(file, "failed", resume.sent, self._left(outcome))

    def _resume(
        self, transport: Transport, file: LocalFile, url: str, resume: _Resume
    ) -> dict[str, str]:
        """Send the file, resuming at the server's offset after each failure that can
        pass; returns its digests once the server holds every byte.

        Failures are retried with the client's backoff. A run of attempts ends as
        soon as the server holds more than when the run began, and the next run
        starts with a fresh budget: a link that drops every few MiB still gets the
        file through, one that moves nothing fails after the policy's attempts.
        """
        attempt = functools.partial(self._attempt, transport, file, url, resume)
        on_retry = functools.partial(self._retrying, file)
        while True:
            resume.since = None
            try:
                digests = self.client.retrying(
                    file.display, attempt, on=self._can_resume, on_retry=on_retry
                )
            except StageboxError as exc:
                # The run's last attempt may have moved the offset forward too.
                if not self._can_resume(exc) or not self._moved(transport, file, url, resume):
                    raise
                continue
            if digests is not None:
                return digests

    def _can_resume(self, exc: BaseException) -> bool:
        # A 409 is a tus offset conflict: an interrupted request went on writing
        # after the HEAD that told where to resume. Asking again answers it.
        return self.client.can_retry(exc) or (isinstance(exc, ServerError) and exc.status == 409)

    def _retrying(self, file: LocalFile, retry: Retry) -> None:
        self.progress(ProgressEvent("retrying", file=file, message=str(retry)))

    def _attempt(
        self, transport: Transport, file: LocalFile, url: str, resume: _Resume
    ) -> dict[str, str] | None:
        """One attempt: the digests once the server holds every byte, or None when
        the server holds more than when this run of attempts began (ending the run)."""
        try:
            offset, resume.opened = resume.opened, None
            if offset is None:
                offset = transport.open(url, file.size)
            if resume.since is None:
                resume.since = offset
            elif offset > resume.since:
                resume.opened = offset  # the next run starts here without asking again
                return None
            return self._stream(transport, file, offset, resume)
        except BaseException:
            transport.abandon()
            raise

    def _moved(self, transport: Transport, file: LocalFile, url: str, resume: _Resume) -> bool:
        """Whether the server now holds more than when the run of attempts began."""
        try:
            offset = transport.open(url, file.size)
        except StageboxError:
            return False
        if resume.since is not None and offset > resume.since:
            resume.opened = offset
            return True
        transport.abandon()
        return False

    def _stream(
        self, transport: Transport, file: LocalFile, offset: int, resume: _Resume
    ) -> dict[str, str]:
        """Send the file from ``offset`` (the bytes the server holds) to the end."""
        hasher = resume.hasher_at(offset, self.options.algorithms)
        pos = offset
        with _open_source(file) as f:
            # Hash the bytes the server already has, from the last state kept
            # before them, instead of sending them again.
            f.seek(hasher.length)
            missing = offset - hasher.length
            if hasher.update_from(f, missing) != missing:
                raise ChangedDuringUpload("changed during upload (shorter than registered)")
            resume.confirm(hasher)
            while pos < file.size:
                chunk = f.read(min(transport.chunk_size, file.size - pos))
                if not chunk:
                    raise ChangedDuringUpload("changed during upload (shorter than registered)")
                hasher.update(chunk)
                self._limiter.consume(len(chunk))
                transport.write(pos, chunk)
                pos += len(chunk)
                resume.sent += len(chunk)
                resume.recent.append(hasher.copy())
                self.progress(ProgressEvent("advanced", file=file, nbytes=len(chunk)))
            if f.read(1):
                raise ChangedDuringUpload("changed during upload (longer than registered)")
            _check_unchanged(f, file)
            staged = transport.finish()
        if staged != file.size:
            raise ConnectionFailed(f"the server holds {staged} of {file.size} bytes; resuming")
        return hasher.hexdigests()

    def _discard(self, transport: Transport, url: str) -> None:
        """Drop a half-sent upload of a file that changed, so no mix is ever stored."""
        try:
            transport.discard(url)
        except StageboxError as exc:
            log.warning("could not discard %s: %s", url, exc)


# Hash states kept at the ends of the last chunks sent: a resume re-reads at most
# this many chunks to hash up to the server's offset, not the whole prefix.
HASH_STATES_KEPT = 64


@dataclass
class _Resume:
    """One file's resume loop: bytes handed to the transport so far, the server's
    offset when the current run of attempts began, an offset the transport is
    already open at (so the next attempt need not ask again), and hash states at
    offsets a resume may start from."""

    sent: int = 0
    since: int | None = None
    opened: int | None = None
    # The state at the offset the server last confirmed (it never goes back),
    # and at the end of each of the last chunks sent after it.
    confirmed: MultiHasher | None = None
    recent: deque[MultiHasher] = field(default_factory=lambda: deque(maxlen=HASH_STATES_KEPT))

    def hasher_at(self, offset: int, algorithms: tuple[str, ...]) -> MultiHasher:
        """A copy of the latest hash state at or before ``offset``."""
        for state in (*reversed(self.recent), self.confirmed):
            if state is not None and state.length <= offset:
                return state.copy()
        return MultiHasher(algorithms)

    def confirm(self, hasher: MultiHasher) -> None:
        self.confirmed = hasher.copy()
        self.recent.clear()


def _batched(items: Iterator[LocalFile], n: int) -> Iterator[list[LocalFile]]:
    while batch := list(islice(items, n)):
        yield batch
