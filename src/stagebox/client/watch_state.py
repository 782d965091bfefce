"""What the watcher did: one summary per scan, kept in a small file ``stagebox status`` reads.

One JSON-lines file per watch (SRC and server) in the client's state dir,
beside the journal (``STAGEBOX_STATE_DIR`` overrides it), holding the last
events: a ``scan`` summary each scan, ``stopped`` when the watcher ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from stagebox.client.journal import state_dir

Outcome = Literal["ok", "unreachable", "error", "stopped"]


@dataclass
class ScanSummary:
    """What one scan found and what its pass did; one line of the log and the state file."""

    scan: int
    started: float
    outcome: Outcome = "ok"
    new: int = 0
    changed: int = 0
    waiting: int = 0
    stored: int = 0
    failed: int = 0
    to_send: int = 0  # ready, not known stored: sent unless the server is unreachable
    omitted: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    next_scan: float | None = None

    def line(self) -> str:
        if self.outcome == "unreachable":
            counts = f"{self.to_send} to send, {self.waiting} waiting (growing)"
        else:
            counts = (
                f"{self.new} new, {self.changed} changed, {self.waiting} waiting (growing), "
                f"{self.stored} stored, {self.failed} failed"
            )
        if self.omitted:
            counts += "; omitted: " + ", ".join(f"{n} {r}" for r, n in self.omitted.items())
        head = {
            "ok": f"scan {self.scan}: ",
            "stopped": f"scan {self.scan} stopped: ",
            "unreachable": f"scan {self.scan}: server unreachable ({self.error}); ",
            "error": f"scan {self.scan}: error: {self.error}; ",
        }[self.outcome]
        text = f"{head}{counts} ({self.seconds:.1f} s)"
        if self.outcome in ("unreachable", "error") and self.next_scan is not None:
            text += f"; next try in {max(self.next_scan - time.time(), 0):.0f} s"
        return text

    def to_json(self) -> dict[str, Any]:
        entry = asdict(self)
        entry["started"] = iso(self.started)
        entry["next_scan"] = iso(self.next_scan) if self.next_scan else None
        entry["seconds"] = round(self.seconds, 3)
        entry["line"] = self.line()
        return {"event": "scan", **entry}


def iso(when: float) -> str:
    return datetime.fromtimestamp(when).isoformat(timespec="seconds")


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


class WatchState:
    """The last ``keep`` events of one watch (SRC to server), as JSON lines.

    Rewritten whole (a temporary file, then a rename) at every event, so a
    reader never sees half a line.
    """

    PREFIX = "watch-"

    def __init__(self, path: Path, src: Path, server: str, keep: int = 100) -> None:
        self.path = path
        self.src = str(src)
        self.server = server
        self.keep = keep

    @classmethod
    def for_watch(cls, src: Path, server: str, directory: Path | None = None) -> WatchState:
        real = os.path.realpath(src)
        digest = hashlib.sha256(f"{real}\n{server.rstrip('/')}".encode()).hexdigest()[:16]
        where = directory or state_dir()
        return cls(where / f"{cls.PREFIX}{digest}.jsonl", Path(real), server.rstrip("/"))

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.path)

    def record(self, event: dict[str, Any]) -> None:
        entry = {"src": self.src, "server": self.server, "pid": os.getpid(), **event}
        lines = [json.dumps(e) for e in self.events()[-(self.keep - 1) :]]
        lines.append(json.dumps(entry))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def last_scan_number(self) -> int:
        return max(
            (int(e.get("scan", 0)) for e in self.events() if e.get("event") == "scan"), default=0
        )


def read_events(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line from an older or broken writer: the rest still count
    return events


def all_watches(directory: Path | None = None) -> list[list[dict[str, Any]]]:
    """The events of every watch this user ran, one list per watch, newest watch last."""
    where = directory or state_dir()
    found = [read_events(p) for p in sorted(where.glob(f"{WatchState.PREFIX}*.jsonl"))]
    found = [events for events in found if events]
    return sorted(found, key=lambda events: str(events[-1].get("started", "")))
