"""How the CLI prints tables."""

from __future__ import annotations

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
