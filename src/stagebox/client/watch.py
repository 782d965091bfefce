"""Unattended watching: scan a tree on a schedule and upload what is new or changed.

A :class:`Watcher` scans SRC on start and then on a
:class:`~stagebox.client.schedule.Schedule`, hands the files that are ready
(:mod:`stagebox.client.stability` says which) to an upload pass, the one
``stagebox upload`` runs, injected as a callable, and writes one summary per
scan to a :class:`~stagebox.client.watch_state.WatchState` file.

While the server cannot be reached the watcher keeps scanning (so files that
were stable meanwhile go as soon as it is back), backing off between scans;
only what retrying cannot mend (a refused token, a host key, a bad setting)
ends it. A stop request ends a pass at the next file boundary.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import httpx

from stagebox.client.journal import Journal
from stagebox.client.progress import ProgressCallback, ProgressEvent
from stagebox.client.scan import LocalFile, Scan, ScanRules, scan
from stagebox.client.schedule import Schedule
from stagebox.client.stability import StabilityTracker
from stagebox.client.uploader import UploadOptions, UploadReport
from stagebox.client.watch_state import ScanSummary, WatchState, human_size, iso
from stagebox.errors import (
    AuthError,
    ConfigError,
    ConnectionFailed,
    Forbidden,
    HostKeyError,
    InvalidInput,
    ServerError,
    StageboxError,
)
from stagebox.transports.http import connection_error, raise_for_status

log = logging.getLogger(__name__)

# -- stopping between files -----------------------------------------------------


class Stopped(Exception):  # noqa: N818 - a request, not an error: not a StageboxError
    """Raised in a pass once the watcher was asked to stop, at a file boundary."""


class StopFlag:
    """Set (from a signal handler) to end the watcher.

    Once set, no file starts; a large file already being sent may finish for
    ``grace`` seconds, after which it is abandoned (the server keeps its
    bytes; the next run resumes it).
    """

    def __init__(self, grace: float = 0.3) -> None:
        self.grace = grace
        self.since: float | None = None
        self._event = threading.Event()

    def set(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def between_files(self) -> None:
        if self._event.is_set():
            raise Stopped()

    def within_file(self) -> None:
        since = self.since
        if since is not None and time.monotonic() - since > self.grace:
            raise Stopped()


# -- talking to the server --------------------------------------------------------

Kind = Literal["fatal", "unreachable", "error"]


def classify(exc: StageboxError) -> Kind:
    """``fatal``: retrying cannot help (a refused token, a host key, a bad setting);
    ``unreachable``: the server is away or overloaded; ``error``: anything else."""
    if isinstance(exc, AuthError | Forbidden | ConfigError | HostKeyError):
        return "fatal"
    if isinstance(exc, ServerError):
        if exc.status in (401, 403):
            return "fatal"
        if exc.status >= 500 or exc.status in (408, 423, 429):
            return "unreachable"
        return "error"
    if isinstance(exc, ConnectionFailed):
        return "unreachable"
    return "error"


def probe(
    server: str, token: str, verify_tls: bool | ssl.SSLContext = True, timeout: float = 5.0
) -> str:
    """The uuid of the token's uploader, asked once without retries.

    Raises what the upload would: ConnectionFailed when the server cannot be
    reached, ServerError for an error answer, AuthError for a refused token.
    """
    try:
        with httpx.Client(
            base_url=server,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=verify_tls,
        ) as http:
            response = http.get("/api/v1/uploader")
    except httpx.TransportError as exc:
        raise connection_error(f"{server}", exc) from exc
    if response.status_code == 401:
        raise AuthError("the server refused the token (unknown or revoked)")
    raise_for_status(response)
    return str(response.json()["uuid"])


# -- the watcher ------------------------------------------------------------------

PassRunner = Callable[[Iterable[LocalFile], ProgressCallback, Journal], UploadReport]
SELECT_BATCH = 500


class Selection:
    """The files of one scan that are ready, in scan order; counts the rest.

    Asks the journal, a batch at a time, which files are stored as they are,
    so those are not held back and the others are told new from changed.
    """

    def __init__(
        self,
        files: Scan,
        tracker: StabilityTracker,
        journal: Journal,
        summary: ScanSummary,
        stop: StopFlag,
    ) -> None:
        self.files = files
        self.complete = False
        self._tracker = tracker
        self._journal = journal
        self._summary = summary
        self._stop = stop
        self._kinds: dict[Path, str] = {}
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[LocalFile]:
        files = iter(self.files)
        while batch := list(islice(files, SELECT_BATCH)):
            # The journal's keys need the uploader's uuid (set once the server told it).
            named = [f for f in batch if not f.error]
            seen = self._journal.seen(named) if self._journal.uploader else {}
            for file in batch:
                self._stop.between_files()
                if file.error:
                    yield file
                    continue
                as_is = self._journal.unchanged_sha256(file, seen) is not None
                if not self._tracker.ready(file, as_is):
                    self._summary.waiting += 1
                    continue
                if not as_is:
                    self._summary.to_send += 1
                    with self._lock:
                        key = self._journal.key(file)
                        self._kinds[file.path] = "changed" if key in seen else "new"
                yield file
        self.complete = True

    def kind(self, file: LocalFile) -> str:
        """``new`` or ``changed``: was another version of this file stored before?"""
        with self._lock:
            return self._kinds.pop(file.path, "new")


class PassListener:
    """Logs each file stored or failed, counts them, and stops a pass between files."""

    def __init__(
        self,
        selection: Selection,
        summary: ScanSummary,
        stop: StopFlag,
        small_file_bytes: int = UploadOptions().small_file_bytes,
    ) -> None:
        self._selection = selection
        self._summary = summary
        self._stop = stop
        self._small = small_file_bytes
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "started":
            self._stop.between_files()
        elif event.kind == "advanced" and event.file and event.file.size > self._small:
            # A large file streams in chunks: it may run on briefly after a stop.
            # Small files are sent in bundles: never cut between send and record.
            self._stop.within_file()
        elif event.kind == "finished" and event.result is not None:
            result = event.result
            with self._lock:
                if result.state == "failed":
                    self._summary.failed += 1
                else:
                    self._summary.stored += 1
                if result.state == "verified":
                    kind = self._selection.kind(result.file)
                    if kind == "changed":
                        self._summary.changed += 1
                    else:
                        self._summary.new += 1
            if result.state == "verified":
                log.info("stored %s (%s)", result.file.display, human_size(result.file.size))
            elif result.state == "failed":
                log.info("failed %s: %s", result.file.display, result.error)


class Watcher:
    """Scans ``source`` on start and on ``schedule`` and uploads what is ready.

    ``upload`` runs one pass (``stagebox upload``'s); ``probe`` says who the
    token is, or raises as the pass would. :meth:`run` returns once ``stop``
    is set, and raises only what retrying cannot mend.
    """

    def __init__(
        self,
        source: Path,
        rules: ScanRules,
        schedule: Schedule,
        upload: PassRunner,
        probe: Callable[[], str],
        journal: Journal,
        state: WatchState,
        stop: StopFlag,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.rules = rules
        self.schedule = schedule
        self.tracker = StabilityTracker()
        self._upload = upload
        self._probe = probe
        self._journal = journal
        self._state = state
        self._stop = stop
        self._clock = clock
        self.number = state.last_scan_number()

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self.number += 1
            summary = self.scan_once(self.number)
            if summary.outcome in ("unreachable", "error"):
                failures += 1
                due = self._clock() + self.schedule.retry_delay(failures)
            else:
                failures = 0
                due = self.schedule.next_after(summary.started)
            summary.next_scan = None if summary.outcome == "stopped" else due
            self._record(summary.to_json())
            log.info("%s", summary.line())
            self._sleep_until(due)
        self._record({"event": "stopped", "at": iso(self._clock())})

    def _record(self, event: dict[str, Any]) -> None:
        try:
            self._state.record(event)
        except OSError as exc:  # status goes stale; the uploads go on
            log.warning("cannot write %s: %s", self._state.path, exc.strerror)

    def _sleep_until(self, due: float) -> None:
        # In slices, against the wall clock: a laptop that slept or a clock
        # change does not stretch the wait.
        while not self._stop.is_set() and (left := due - self._clock()) > 0:
            self._stop.wait(min(left, 30.0))

    def scan_once(self, number: int) -> ScanSummary:
        """One scan and its pass; the summary says how it went."""
        summary = ScanSummary(number, self._clock())
        started = time.monotonic()
        first = self.tracker.scans == 0
        self.tracker.begin()
        selection: Selection | None = None
        try:
            reachable = self._reach(summary)
            files = scan(self.source, self.rules)
            selection = Selection(files, self.tracker, self._journal, summary, self._stop)
            if reachable:
                listener = PassListener(selection, summary, self._stop)
                self._upload(selection, listener, self._journal)
            else:
                # Keep looking while the server is away: what was stable meanwhile
                # goes as soon as it is back.
                for _ in selection:
                    pass
            files.check_structure()
        except Stopped:
            summary.outcome = "stopped"
        except InvalidInput as exc:
            # The first scan checks the options (SRC, the structure); later,
            # a tree may be unmounted or rearranged for a while.
            if first:
                raise
            summary.outcome, summary.error = "error", str(exc)
        except StageboxError as exc:
            self._failed(summary, exc)
        finally:
            self.tracker.end(complete=selection is not None and selection.complete)
        if selection is not None:
            summary.omitted = {r: n for r, n in selection.files.omitted_by_reason.items() if n}
        summary.seconds = time.monotonic() - started
        return summary

    def _reach(self, summary: ScanSummary) -> bool:
        """Ask the server who the token is; False (noted) when it cannot be asked now."""
        try:
            uploader = self._probe()
        except StageboxError as exc:
            self._failed(summary, exc)
            return False
        if not self._journal.uploader:
            self._journal.uploader = uploader
        return True

    @staticmethod
    def _failed(summary: ScanSummary, exc: StageboxError) -> None:
        kind = classify(exc)
        if kind == "fatal":
            raise exc
        summary.outcome, summary.error = kind, str(exc)
