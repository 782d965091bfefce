"""A token bucket shared by threads: the upload's ``--bwlimit``, the audit's read rate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Caps the combined send rate at ``bytes_per_second``; 0 means unlimited."""

    def __init__(
        self,
        bytes_per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = bytes_per_second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = clock()

    def consume(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(self._next, now)
            self._next = start + nbytes / self.rate
            wait = start - now
        if wait > 0:
            self._sleep(wait)
