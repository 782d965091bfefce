"""The ``stagebox`` command line: thin commands over the library."""

from __future__ import annotations

import sys

import typer

from stagebox.cli import admin, bag, demo, ingest, packages, register, serve, upload, verify, watch
from stagebox.errors import ConfigError, Forbidden, InvalidInput, StageboxError

app = typer.Typer(
    name="stagebox",
    help="Stage research data, prove every byte arrived, then store it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("serve")(serve.serve)
app.command("upload")(upload.upload)
app.command("verify")(verify.verify)
app.command("watch")(watch.watch)
app.command("status")(watch.status)
app.command("register")(register.register)
app.command("demo")(demo.demo)
app.command("pack")(packages.pack_command)
app.command("push")(packages.push_command)
app.add_typer(admin.app, name="admin")
app.add_typer(bag.app, name="bag")
app.add_typer(ingest.app, name="ingest")

USAGE_ERRORS = (ConfigError, InvalidInput, Forbidden)


def run() -> None:
    """Run the CLI: library errors become one line and an exit code."""
    try:
        app()
    except StageboxError as exc:
        typer.echo(f"stagebox: {exc}", err=True)
        sys.exit(2 if isinstance(exc, USAGE_ERRORS) else 1)
