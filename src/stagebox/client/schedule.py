"""When ``stagebox watch`` scans: an interval, daily times, and the retry backoff."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as clock_time

from stagebox.errors import InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
# While the server cannot be reached, scans are spaced from min(interval, 30 s)
# doubling up to five minutes: a facility's many PCs do not hammer a server
# coming back, and a daily schedule does not wait a day to try again.
RETRY_FIRST = 30.0
RETRY_CAP = 300.0


def parse_interval(text: str) -> float:
    """``30s``, ``5m``, ``1h``, ``1d`` or a sum like ``1h30m``, in seconds (at least 1)."""
    spec = text.strip().lower()
    parts = _DURATION.findall(spec)
    if not spec or "".join(n + u for n, u in parts) != spec:
        raise InvalidInput("--interval", "a duration such as 30s, 5m, 1h or 1h30m", text)
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < 1:
        raise InvalidInput("--interval", "at least 1s", text)
    return seconds


def parse_at(text: str) -> clock_time:
    """A daily time ``HH:MM`` (24-hour, local time)."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise InvalidInput("--at", "a time of day HH:MM, 00:00 to 23:59", text)
    return clock_time(int(match[1]), int(match[2]))


@dataclass(frozen=True)
class Schedule:
    """When to scan: every ``interval`` seconds, at the daily ``times``, or both.

    Times are wall-clock seconds (``time.time()``); daily times are local.
    """

    interval: float | None = None
    times: tuple[clock_time, ...] = ()

    def __post_init__(self) -> None:
        if self.interval is None and not self.times:
            raise InvalidInput("--interval", "give --interval, --at, or both")

    def next_after(self, started: float) -> float:
        """When the scan after one that started at ``started`` is due.

        The earliest of ``started + interval`` and the first daily time after
        ``started``. It may lie in the past (a scan ran long): it is due at once.
        """
        due: list[float] = []
        if self.interval is not None:
            due.append(started + self.interval)
        if self.times:
            start = datetime.fromtimestamp(started)
            for day in (start.date(), start.date() + timedelta(days=1)):
                for at in self.times:
                    moment = datetime.combine(day, at).timestamp()
                    if moment > started:
                        due.append(moment)
        return min(due)

    def retry_delay(self, failures: int, jitter: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``failures`` scans in a row could not reach the server."""
        first = min(self.interval, RETRY_FIRST) if self.interval else RETRY_FIRST
        delay = min(RETRY_CAP, first * 2.0 ** max(failures - 1, 0))
        return delay * (0.9 + 0.2 * jitter())

    def describe(self) -> str:
        said = []
        if self.interval is not None:
            said.append(f"every {_seconds(self.interval)}")
        if self.times:
            said.append("daily at " + ", ".join(t.strftime("%H:%M") for t in self.times))
        return " and ".join(said)


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:.0f}{unit}"
    return f"{value:g}s"
