"""Options that several commands share: the server and token, and how a tree is selected.

``upload`` and ``verify`` select files the same way, so that a receipt speaks of
exactly the files an upload sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagebox.client.scan import STRUCTURES, SYMLINKS, ScanRules

Server = Annotated[str, typer.Option(help="server URL, e.g. https://stagebox.example.org")]
Token = Annotated[
    str | None, typer.Option(envvar="STAGEBOX_TOKEN", help="API token (or STAGEBOX_TOKEN)")
]
Structure = Annotated[str, typer.Option(help=f"folder structure: {' | '.join(STRUCTURES)}")]
Dataset = Annotated[str | None, typer.Option(help="SRC itself is this dataset")]
Include = Annotated[list[str] | None, typer.Option(help="only files matching GLOB")]
Exclude = Annotated[list[str] | None, typer.Option(help="skip files matching GLOB")]
MinAge = Annotated[float, typer.Option(help="ignore files modified in the last MINUTES", min=0)]
Symlinks = Annotated[
    str,
    typer.Option(help=f"{' | '.join(SYMLINKS)}: skip links (reported) or follow those inside SRC"),
]
CaCert = Annotated[Path | None, typer.Option(help="CA bundle to trust for TLS")]


def scan_rules(
    structure: str,
    dataset: str | None,
    include: list[str] | None,
    exclude: list[str] | None,
    min_age: float,
    symlinks: str,
) -> ScanRules:
    return ScanRules(
        structure=structure,
        dataset=dataset,
        include=include or (),
        exclude=exclude or (),
        min_age_minutes=min_age,
        symlinks=symlinks,
    )
