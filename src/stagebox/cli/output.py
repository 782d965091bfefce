"""How the CLI prints tables."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def print_table(table: Table, stderr: bool = False) -> None:
    """Print a table whole: wider than the terminal, it is printed at its own width
    (the terminal wraps the lines) instead of cutting names to "stagi…"."""
    console = Console(stderr=stderr)
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if needed > console.width:
        console = Console(stderr=stderr, width=needed)
    console.print(table)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends, so their handler (which raises)
    never cuts a write of a ``--json`` document in half. A no-op off the main thread
    and where the platform cannot mask signals (Windows)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not (
        threading.main_thread()
    ):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
