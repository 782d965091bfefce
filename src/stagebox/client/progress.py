"""Progress events: one callback type for the CLI's bars and any other listener."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from stagebox.client.scan import LocalFile

EventKind = Literal["planned", "started", "advanced", "retrying", "finished"]


@dataclass(frozen=True)
class FileResult:
    file: LocalFile
    state: Literal["verified", "skipped", "failed"]
    bytes_sent: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.file.path),
            "owner": self.file.owner or "",
            "experiment": self.file.experiment or "",
            "dataset": self.file.dataset,
            "directory": self.file.directory,
            "filename": self.file.filename,
            "size": self.file.size,
            "state": self.state,
            "bytes_sent": self.bytes_sent,
            "error": self.error,
        }


@dataclass(frozen=True)
class ProgressEvent:
    """``planned``: ``files``/``nbytes`` more to process; ``started``/``advanced``
    (``nbytes`` sent)/``finished`` (``result``) for one file; ``retrying``: an
    attempt at the file failed and another follows, ``message`` says why and when
    (``ds/big.bin: connection reset; retry 1 in 0.2 s``; the same line is logged
    at WARNING by :mod:`stagebox.client.api`)."""

    kind: EventKind
    file: LocalFile | None = None
    nbytes: int = 0
    files: int = 0
    result: FileResult | None = None
    message: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def ignore(_event: ProgressEvent) -> None:
    """The default listener."""
