"""``stagebox upload``: send a folder tree; every file ends verified, skipped or failed."""

from __future__ import annotations

import json
import ssl
import sys
import tempfile
import threading
from collections import Counter
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
from stagebox.client.api import StageboxClient
from stagebox.client.journal import Journal
from stagebox.client.progress import ProgressEvent
from stagebox.client.scan import REASONS, Omission, scan
from stagebox.client.sftp_plan import plan
from stagebox.client.uploader import Uploader, UploadOptions, UploadReport
from stagebox.errors import ConfigError, InvalidInput, StageboxError


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
        out.write('{"files": [')

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind != "finished" or event.result is None:
            return
        line = json.dumps(event.result.to_json())
        with self._lock:
            self._out.write(("\n" if self._first else ",\n") + line)
            self._first = False

    def close(
        self, report: UploadReport, omissions: OmissionLog | None = None, error: str | None = None
    ) -> None:
        out = self._out
        out.write('\n], "omitted": [')
        if omissions is not None:
            omissions.write_json_items(out)
        tail: dict[str, object] = {
            "totals": {
                **report.totals(),
                "omitted": omissions.count if omissions is not None else 0,
            },
            "omitted_by_reason": omissions.counts() if omissions is not None else {},
        }
        if error:
            tail["error"] = error
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
    server: opt.Server,
    token: opt.Token = None,
    structure: opt.Structure = "dataset",
    dataset: opt.Dataset = None,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    min_age: opt.MinAge = 0.0,
    symlinks: opt.Symlinks = "skip",
    threads: Annotated[int, typer.Option(help="files in flight", min=1, max=64)] = 5,
    bwlimit: Annotated[
        float, typer.Option(help="cap the send rate at MB/s (all threads); 0 = no cap", min=0)
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON report")] = False,
    cacert: opt.CaCert = None,
    method: Annotated[
        str, typer.Option(help="auto (sftp when approved, else http) | sftp | http")
    ] = "auto",
    accept_new_host_key: Annotated[
        bool, typer.Option(help="record an sftp staging host's key at first contact")
    ] = False,
    known_hosts: Annotated[
        Path | None, typer.Option(help="known_hosts for staging hosts (config dir)")
    ] = None,
) -> None:
    """Upload SRC; exit 0 only when every file ends verified or skipped.

    Whatever the scan leaves out is reported with why; an entry that cannot be
    read makes the run exit 1, a structure that finds no dataset exits 2.
    """
    if not token:
        raise ConfigError("no token: pass --token or set STAGEBOX_TOKEN")
    rules = opt.scan_rules(structure, dataset, include, exclude, min_age, symlinks)
    if method not in ("auto", "sftp", "http"):
        raise InvalidInput("--method", "must be auto, sftp or http", method)
    # SRC is checked before any server is asked anything.
    omissions = OmissionLog()
    files = scan(src, rules, omitted=omissions)
    tls = ssl.create_default_context(cafile=str(cacert)) if cacert else True
    client = StageboxClient(server, token, threads=threads, verify_tls=tls)
    console = Console(stderr=True)
    try:
        chosen = plan(
            client, method, known_hosts=known_hosts, accept_new_host_key=accept_new_host_key
        )
    except BaseException:
        client.close()
        omissions.close()
        raise
    if chosen.notice:
        console.print(chosen.notice)
    options = UploadOptions(threads=threads, bwlimit=bwlimit * 1e6, method=chosen.method)
    journal = Journal.for_server(server)
    factory = chosen.transport_factory
    try:
        if as_json:
            stream = JsonReport(sys.stdout)
            uploader = Uploader(client, journal, options, stream, factory)
            try:
                report = uploader.run(files)
                files.check_structure()
            except StageboxError as exc:
                stream.close(uploader.report, omissions, error=str(exc))
                raise
            stream.close(report, omissions)
        else:
            bars = RichProgress(console, options.small_file_bytes)
            with bars.progress:
                report = Uploader(client, journal, options, bars, factory).run(files)
            files.check_structure()
            render(report, omissions, Console())
    finally:
        chosen.close()
        client.close()
        journal.close()
        omissions.close()
    # An entry that could not be read may hold data: the run did not do its job.
    raise typer.Exit(0 if report.ok and not files.unreadable else 1)
