"""Which scanned files are ready to send: never one that is still being written.

The rule, for ``stagebox watch``:

- ``--min-age`` applies as in ``stagebox upload``;
- on the watcher's first scan, ``--min-age`` alone decides: those files were
  there before the watcher started (MyData likewise uploads what it finds on
  start, minding only its "ignore files newer than" setting);
- after that, a file is sent only once two consecutive scans saw it with the
  same size and mtime: a file new or changed since the last scan waits for
  the next one;
- a file the journal holds stored with this size and mtime is never held back
  (it is registered, and the server answers skip).

What slips through (a writer that pauses for longer than the interval) is
caught by the uploader, which refuses a file whose size or mtime changes while
it is sent; at worst an incomplete file is stored as one version and its
completed form as the next, never a mix of the two.
"""

from __future__ import annotations

import threading
from pathlib import Path

from stagebox.client.scan import LocalFile

Signature = tuple[int, int]  # (size, mtime_ns)


class StabilityTracker:
    """Holds a file back until two consecutive scans saw the same size and mtime.

    Remembers only files that are not stored as they are now, so its memory
    follows what is new or changing, not the size of the tree. See the module
    docstring for the rule.
    """

    def __init__(self) -> None:
        self.scans = 0
        self._previous: dict[Path, Signature] = {}
        self._current: dict[Path, Signature] = {}
        self._lock = threading.Lock()

    def begin(self) -> None:
        self.scans += 1
        self._current = {}

    @property
    def first(self) -> bool:
        return self.scans <= 1

    def ready(self, file: LocalFile, stored_as_is: bool = False) -> bool:
        """Whether ``file``, met by this scan, may be sent now."""
        if stored_as_is:
            return True
        signature = (file.size, file.mtime_ns)
        with self._lock:
            self._current[file.path] = signature
            return self.first or self._previous.get(file.path) == signature

    def end(self, complete: bool = True) -> None:
        """Close the scan. A scan cut short forgets nothing it did not reach."""
        with self._lock:
            if complete:
                self._previous = self._current
            else:
                self._previous = {**self._previous, **self._current}
            self._current = {}

    @property
    def remembered(self) -> int:
        return len(self._previous)
