"""``stagebox upload``: send a folder tree; every file ends verified, skipped or failed."""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from stagebox.cli import options as opt
from stagebox.cli.output import signals_held
from stagebox.client import settings
from stagebox.client.api import StageboxClient
from stagebox.client.journal import Journal
from stagebox.client.progress import ProgressCallback, ProgressEvent
from stagebox.client.scan import REASONS, LocalFile, Omission, scan
from stagebox.client.sftp_plan import plan
from stagebox.client.uploader import Uploader, UploadOptions, UploadReport
from stagebox.errors import InvalidInput, StageboxError

METHODS = ("auto", "sftp", "http")

# How files are sent: `upload` and `watch` take the same options.
Threads = Annotated[int, typer.Option(help="files in flight", min=1, max=64)]
BwLimit = Annotated[
    float, typer.Option(help="cap the send rate at MB/s (all threads); 0 = no cap", min=0)
]
Method = Annotated[
    str | None,
    typer.Option(
        help="auto (sftp when approved, else http) | sftp | http (or STAGEBOX_METHOD) "
        "[default: auto]"
    ),
]
AcceptNewHostKey = Annotated[
    bool, typer.Option(help="record an sftp staging host's key at first contact")
]
KnownHosts = Annotated[Path | None, typer.Option(help="known_hosts for staging hosts (config dir)")]


@dataclass(frozen=True)
class UploadSettings:
    """Where and how ``upload`` and ``watch`` send files, resolved and checked."""

    target: opt.Target
    threads: int = 5
    bwlimit: float = 0.0  # MB/s for all threads together; 0 = no cap
    method: str = "auto"
    known_hosts: Path | None = None
    accept_new_host_key: bool = False


def upload_settings(
    server: str | None,
    token: str | None,
    cacert: Path | None,
    threads: int,
    bwlimit: float,
    method: str | None,
    known_hosts: Path | None,
    accept_new_host_key: bool,
) -> UploadSettings:
    """The sending options of a command line, by precedence; a bad one is one line."""
    to = opt.target(server, token, cacert)
    chosen = settings.resolve("method", method) or "auto"
    if chosen not in METHODS:
        raise InvalidInput("--method", "must be auto, sftp or http", chosen)
    return UploadSettings(to, threads, bwlimit, chosen, known_hosts, accept_new_host_key)


def upload_pass(
    how: UploadSettings,
    files: Iterable[LocalFile],
    progress: ProgressCallback,
    notice: Callable[[str], None],
    journal: Journal | None = None,
) -> UploadReport:
    """Send ``files`` once, as ``stagebox upload`` does, and return the report.

    Opens a client, chooses how to stage (sftp when approved, else http, with
    the reason given to ``notice``), runs the :class:`Uploader` with the
    server's journal (``journal``, or one opened and closed here), and closes
    what it opened, also when it raises. Every file's result has gone to
    ``progress`` by the time it returns or raises.
    """
    with ExitStack() as opened:
        to = how.target
        client = StageboxClient(to.server, to.token, threads=how.threads, verify_tls=to.tls)
        opened.callback(client.close)
        chosen = plan(
            client,
            how.method,
            known_hosts=how.known_hosts,
            accept_new_host_key=how.accept_new_host_key,
        )
        opened.callback(chosen.close)
        if chosen.notice:
            notice(chosen.notice)
        if journal is None:
            journal = Journal.for_server(to.server)
            opened.callback(journal.close)
        options = UploadOptions(
            threads=how.threads, bwlimit=how.bwlimit * 1e6, method=chosen.method
        )
        uploader = Uploader(client, journal, options, progress, chosen.transport_factory)
        return uploader.run(files)
    raise AssertionError("unreachable")  # for mypy: an ExitStack could swallow exceptions


class RichProgress:
    """Total bytes, files, rate and ETA, plus one line per active large file."""

    def __init__(self, console: Console, detail_bytes: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._detail = detail_bytes
        self._lock = threading.Lock()
        self._total = self.progress.add_task("total", total=0)
        self._files: dict[Path, TaskID] = {}
        self._planned = 0
        self._done = 0

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            p = self.progress
            if event.kind == "planned":
                self._planned += event.files
                total = (p.tasks[self._total].total or 0) + event.nbytes
                p.update(self._total, total=total)
            elif event.kind == "started" and event.file and event.file.size > self._detail:
                self._files[event.file.path] = p.add_task(
                    f"  {event.file.display}", total=event.file.size
                )
            elif event.kind == "advanced" and event.file:
                p.advance(self._total, event.nbytes)
                if (task := self._files.get(event.file.path)) is not None:
                    p.advance(task, event.nbytes)
            elif event.kind == "finished" and event.file:
                if event.result and event.result.state != "skipped":
                    self._done += 1
                if (task := self._files.pop(event.file.path, None)) is not None:
                    p.remove_task(task)
            p.update(self._total, description=f"files {self._done}/{self._planned}")


class OmissionLog:
    """What the scan left out: every entry on a spooled temporary file, a few in memory.

    Called by the scan, so from the one thread that iterates it. Past 1 MiB the
    entries move to disk; in memory stay the counts and the first ``shown`` of
    each reason, for the summary.
    """

    def __init__(self, shown: int = 10) -> None:
        # Held open across the run and closed by close(), not by a with-block.
        self._spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=1 << 20, mode="w+", encoding="utf-8"
        )
        self._shown = shown
        self.by_reason: Counter[str] = Counter()
        self.first: dict[str, list[Omission]] = {}

    def __call__(self, omission: Omission) -> None:
        self._spool.write(json.dumps(omission.to_json()) + "\n")
        self.by_reason[omission.reason] += 1
        kept = self.first.setdefault(omission.reason, [])
        if len(kept) < self._shown:
            kept.append(omission)

    @property
    def count(self) -> int:
        return self.by_reason.total()

    def counts(self) -> dict[str, int]:
        """Per reason, in the order of REASONS, leaving out those that never occurred."""
        return {r: self.by_reason[r] for r in REASONS if self.by_reason[r]}

    def write_json_items(self, out: TextIO) -> None:
        """The entries as the items of a JSON array, one a line, in the order met."""
        self._spool.seek(0)
        separator = "\n"
        for line in self._spool:
            out.write(separator + line.rstrip("\n"))
            separator = ",\n"

    def close(self) -> None:
        self._spool.close()


class JsonReport:
    """Streams the ``--json`` report: each file as it finishes, the totals at the end.

    The output is one JSON object, however many files the tree holds, and
    nothing of it is kept in memory. The scan's omissions come after the files,
    copied from their spool at the end, since the scan runs while files finish.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._first = True
        self._opened = False
        self._closed = False
        self._started = time.monotonic()
        # The totals of the files written, for a run cut short before it reports.
        self.so_far = UploadReport()

    def _open(self) -> None:
        # Written with the first file or the close, never alone: a run stopped
        # at any moment leaves either nothing or a whole document.
        if not self._opened:
            self._out.write('{"files": [')
            self._opened = True

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind != "finished" or event.result is None:
            return
        line = json.dumps(event.result.to_json())
        with self._lock:
            if self._closed:  # a thread finishing after a run was cut short
                return
            self._open()
            self._out.write(("\n" if self._first else ",\n") + line)
            self._first = False
            self.so_far.add(event.result)
            self.so_far.seconds = time.monotonic() - self._started

    def close(
        self, report: UploadReport, omissions: OmissionLog | None = None, error: str | None = None
    ) -> None:
        out = self._out
        tail: dict[str, object] = {
            "totals": {
                **report.totals(),
                "omitted": omissions.count if omissions is not None else 0,
            },
            "omitted_by_reason": omissions.counts() if omissions is not None else {},
        }
        if error:
            tail["error"] = error
        # Whole, even if a second SIGTERM or Ctrl-C comes while it is written.
        with self._lock, signals_held():
            self._closed = True
            self._open()
            out.write('\n], "omitted": [')
            if omissions is not None:
                omissions.write_json_items(out)
            out.write("\n], " + json.dumps(tail)[1:] + "\n")
            out.flush()


def render(report: UploadReport, omissions: OmissionLog, console: Console) -> None:
    if report.failures:
        table = Table("failed file", "error", title="failures", title_justify="left")
        for r in report.failures[:50]:
            table.add_row(r.file.display, r.error or "")
        if report.counts["failed"] > 50:
            table.add_row(f"... and {report.counts['failed'] - 50} more", "")
        console.print(table)
    if omissions.count:
        counts = ", ".join(f"{n} {reason}" for reason, n in omissions.counts().items())
        table = Table(
            "omitted", "reason", "detail", title=f"omitted: {counts}", title_justify="left"
        )
        for reason, n in omissions.counts().items():
            kept = omissions.first[reason]
            for o in kept:
                table.add_row(escape(str(o.path)), o.reason, escape(o.detail or ""))
            if n > len(kept):
                table.add_row(f"... and {n - len(kept)} more", reason, "")
        console.print(table)
    totals = {**report.totals(), "omitted": omissions.count}
    columns = ("files", "verified", "skipped", "failed", "omitted", "bytes_sent", "seconds")
    summary = Table(*(c.replace("_", " ") for c in columns))
    summary.add_row(*(str(totals[k]) for k in columns))
    console.print(summary)


def upload(
    src: Annotated[Path, typer.Argument(help="folder to upload")],
    server: opt.Server = None,
    token: opt.Token = None,
    structure: opt.Structure = None,
    dataset: opt.Dataset = None,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    min_age: opt.MinAge = 0.0,
    symlinks: opt.Symlinks = "skip",
    threads: Threads = 5,
    bwlimit: BwLimit = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON report")] = False,
    cacert: opt.CaCert = None,
    method: Method = None,
    accept_new_host_key: AcceptNewHostKey = False,
    known_hosts: KnownHosts = None,
) -> None:
    """Upload SRC; exit 0 only when every file ends verified or skipped.

    Whatever the scan leaves out is reported with why; an entry that cannot be
    read makes the run exit 1, a structure that finds no dataset exits 2.
    """
    how = upload_settings(
        server, token, cacert, threads, bwlimit, method, known_hosts, accept_new_host_key
    )
    rules = opt.scan_rules(structure, dataset, include, exclude, min_age, symlinks)
    # SRC is checked before any server is asked anything.
    omissions = OmissionLog()
    console = Console(stderr=True)
    try:
        files = scan(src, rules, omitted=omissions)
        if as_json:
            stream = JsonReport(sys.stdout)
            report: UploadReport | None = None
            try:
                report = upload_pass(how, files, stream, console.print)
                files.check_structure()
            except (StageboxError, KeyboardInterrupt) as exc:
                # A run cut short (by an error, Ctrl-C or SIGTERM) still prints one
                # whole JSON document, its totals those of the files it lists.
                error = str(exc) or "interrupted"
                stream.close(report or stream.so_far, omissions, error=error)
                raise
            stream.close(report, omissions)
        else:
            bars = RichProgress(console, UploadOptions().small_file_bytes)
            with bars.progress:
                try:
                    report = upload_pass(how, files, bars, console.print)
                except BaseException:
                    bars.progress.live.transient = True  # a failed run ends in its error line
                    raise
            files.check_structure()
            render(report, omissions, Console())
    finally:
        omissions.close()
    # An entry that could not be read may hold data: the run did not do its job.
    raise typer.Exit(0 if report.ok and not files.unreadable else 1)
