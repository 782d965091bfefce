"""``stagebox bag``: BagIt bags, checked before they are ingested."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="BagIt bags (RFC 8493).", no_args_is_help=True)


@app.command("validate")
def validate(
    path: Annotated[Path, typer.Argument(help="a bag directory, .tar (.tar.gz, .tgz) or .zip")],
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            help="a BagIt profile file (BagIt-Profiles or DART JSON); 'aptrust' (APTrust 2.3) "
            "or 'btr' (BTR 1.0) as shipped; 'auto' for the shipped one the bag's "
            "BagIt-Profile-Identifier names; 'none' for RFC 8493 alone [default: none]",
        ),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast", help="check structure, completeness and Payload-Oxum; compare no digests"
        ),
    ] = False,
) -> None:
    """Validate a bag: exit 0 when valid, 1 when not (every error on stderr), 2 on usage errors."""
    # Imported here: every other command starts faster without the validator.
    from stagebox.ingest.bagit import validate_path
    from stagebox.ingest.profiles import choose

    chosen = choose(profile) if profile is not None else None
    report = validate_path(path, chosen, fast=fast)
    for error in report.errors:
        typer.echo(f"error: {error}", err=True)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if not report.valid:
        raise typer.Exit(1)
    typer.echo(
        f"valid: {path} ({report.payload_files} payload files, {report.payload_bytes} bytes)"
    )
