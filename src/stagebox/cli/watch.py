"""``stagebox watch``: upload a folder unattended; ``stagebox status``: what the scans did."""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from stagebox.cli import options as opt
from stagebox.cli.upload import (
    AcceptNewHostKey,
    BwLimit,
    KnownHosts,
    Method,
    Threads,
    upload_pass,
    upload_settings,
)
from stagebox.client.journal import Journal, state_dir
from stagebox.client.progress import ProgressCallback
from stagebox.client.scan import LocalFile
from stagebox.client.schedule import Schedule, parse_at, parse_interval
from stagebox.client.uploader import UploadReport
from stagebox.client.watch import StopFlag, Watcher, classify, probe
from stagebox.client.watch_state import WatchState, all_watches, iso
from stagebox.errors import ConfigError, InvalidInput, StageboxError

DEFAULT_INTERVAL = 300.0
# A stop request ends the watcher within a second: files in flight get until
# the grace to finish; past the hard limit, whatever still runs (a request
# waiting on a silent server) is abandoned. Both leave the journal consistent:
# every journal write is one SQLite transaction, and the server resumes.
HARD_STOP = 0.85
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGBREAK")

log = logging.getLogger("stagebox.cli.watch")


def watch(
    src: Annotated[Path, typer.Argument(help="folder to watch")],
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
    cacert: opt.CaCert = None,
    method: Method = None,
    accept_new_host_key: AcceptNewHostKey = False,
    known_hosts: KnownHosts = None,
    interval: Annotated[
        str | None,
        typer.Option(help="scan every DURATION: 30s, 5m, 1h, 1h30m [default: 5m, unless --at]"),
    ] = None,
    at: Annotated[
        list[str] | None, typer.Option(help="scan daily at HH:MM, local time (repeatable)")
    ] = None,
    log_file: Annotated[
        Path | None, typer.Option("--log", help="append the log to FILE as well as stderr")
    ] = None,
) -> None:
    """Scan SRC now and on a schedule, and upload what is new or changed, until stopped.

    Takes upload's options. A file is sent once two scans in a row saw the same
    size and mtime (on the first scan, --min-age alone decides). An unreachable
    server is retried with backoff; a refused token or a bad option exits 2.
    SIGTERM or Ctrl-C stops it at a file boundary within a second, exit 0.
    """
    how = upload_settings(
        server, token, cacert, threads, bwlimit, method, known_hosts, accept_new_host_key
    )
    rules = opt.scan_rules(structure, dataset, include, exclude, min_age, symlinks)
    every = parse_interval(interval) if interval else (None if at else DEFAULT_INTERVAL)
    schedule = Schedule(every, tuple(sorted({parse_at(a) for a in at or ()})))
    if not src.is_dir():
        raise InvalidInput("SRC", f"{src} is not a directory")
    _log_to(log_file)
    to = how.target
    stop = StopFlag()
    state = WatchState.for_watch(src, to.server)
    journal = Journal.for_server(to.server)
    notices: set[str] = set()

    def notice(text: str) -> None:
        if text not in notices:  # said once, not at every scan
            notices.add(text)
            log.info("%s", text)

    def run_pass(
        files: Iterable[LocalFile], progress: ProgressCallback, journal: Journal
    ) -> UploadReport:
        return upload_pass(how, files, progress, notice, journal)

    watcher = Watcher(
        src,
        rules,
        schedule,
        run_pass,
        lambda: probe(to.server, to.token, to.tls),
        journal,
        state,
        stop,
    )
    log.info("watching %s for %s, %s", src, to.server, schedule.describe())
    try:
        failure = _supervise(watcher, stop, state)
    finally:
        journal.close()
    if failure is None:
        log.info("stopped")
        return
    if isinstance(failure, InvalidInput) or (
        isinstance(failure, StageboxError) and classify(failure) == "fatal"
    ):
        log.info("stopping: %s", failure)
        typer.echo(f"stagebox: {failure}", err=True)
        raise typer.Exit(2)
    raise failure


def _log_to(path: Path | None) -> None:
    """One line per event, timestamped, to stderr and (appended) to ``path``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        try:
            # On POSIX, reopened when logrotate moves the file away.
            cls = logging.handlers.WatchedFileHandler if os.name == "posix" else logging.FileHandler
            handlers.append(cls(path, mode="a", encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--log {path}: cannot be opened ({exc.strerror})") from None
    formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    # The library's loggers too: a file resumed after a dropped connection says so.
    root = logging.getLogger("stagebox")
    root.setLevel(logging.INFO)
    root.propagate = False
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


def _supervise(watcher: Watcher, stop: StopFlag, state: WatchState) -> BaseException | None:
    """Run the watcher on a thread until it ends; a signal asks it to stop.

    Returns what ended it, if not a stop. The signal handlers only set the
    flag: the main thread waits here, so it never holds a lock they need.
    """
    ended: list[BaseException] = []

    def body() -> None:
        try:
            watcher.run()
        except BaseException as exc:  # handed to the main thread
            ended.append(exc)

    def asked(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("stopping (%s)", signal.Signals(signum).name)
        stop.set()

    for name in STOP_SIGNALS:
        if (number := getattr(signal, name, None)) is not None:
            signal.signal(number, asked)
    thread = threading.Thread(target=body, name="stagebox-watch", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        if stop.since is not None and thread.is_alive():
            thread.join(max(0.0, stop.since + HARD_STOP - time.monotonic()))
            if thread.is_alive():
                _abandon(state)
    return ended[0] if ended else None


def _abandon(state: WatchState) -> None:
    """Exit at once: the pass is waiting on the server, not between two writes."""
    log.info("stopped (abandoned a request in flight; the next scan resumes it)")
    with contextlib.suppress(OSError):
        state.record({"event": "stopped", "at": iso(time.time())})
    for handler in logging.getLogger("stagebox").handlers:
        handler.flush()
    sys.stdout.flush()
    # Threads still in a request cannot be joined: leave without waiting for them.
    os._exit(0)


# -- stagebox status ---------------------------------------------------------------


def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    last: Annotated[int, typer.Option(min=1, help="scans shown per watched folder")] = 5,
) -> None:
    """What the last scans of each `stagebox watch` on this machine did."""
    watches = [_summary(events, last) for events in all_watches()]
    if as_json:
        typer.echo(json.dumps({"watches": watches}, indent=2))
        return
    console = Console(highlight=False, soft_wrap=True)
    if not watches:
        console.print(f"no stagebox watch has run here yet (state in {escape(str(state_dir()))})")
        return
    for view in watches:
        console.print(f"{escape(view['src'])} -> {escape(view['server'])}: {view['state']}")
        for entry in view["scans"]:
            console.print(f"  {entry.get('started')} {escape(str(entry.get('line', '')))}")


def _summary(events: list[dict[str, Any]], last: int) -> dict[str, Any]:
    scans = [e for e in events if e.get("event") == "scan"]
    final = events[-1]
    if final.get("event") == "stopped":
        said = f"stopped at {final.get('at')}"
        running = False
    else:
        alive = _alive(int(final.get("pid", 0)))
        running = alive is not False
        said = f"watching (pid {final.get('pid')})" if alive else "watcher not running"
        if alive is None:
            said = f"last scan at {final.get('started')}"
        if running and final.get("next_scan"):
            said += f", next scan at {final['next_scan']}"
    return {
        "src": final.get("src", ""),
        "server": final.get("server", ""),
        "running": running,
        "state": said,
        "scans": scans[-last:],
    }


def _alive(pid: int) -> bool | None:
    """Whether the watcher's process still runs; None where that cannot be asked cheaply."""
    if os.name != "posix" or pid <= 0:
        return None  # on Windows os.kill(pid, 0) would terminate the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
