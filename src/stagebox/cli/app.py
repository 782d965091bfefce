"""The ``stagebox`` command line: thin commands over the library."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Annotated

import typer

from stagebox import __version__
from stagebox.errors import ConfigError, Forbidden, InvalidInput, StageboxError

# Each command and group, by the module that holds it. ``run`` loads only the one
# named on the command line (``stagebox admin ...`` never loads the upload client,
# and the reverse): each module costs import time at every start.
COMMANDS = {
    "serve": ("serve", "serve"),
    "sftp-serve": ("sftpd", "sftp_serve"),
    "upload": ("upload", "upload"),
    "verify": ("verify", "verify"),
    "watch": ("watch", "watch"),
    "status": ("watch", "status"),
    "register": ("register", "register"),
    "demo": ("demo", "demo"),
    "pack": ("packages", "pack_command"),
    "push": ("packages", "push_command"),
}
GROUPS = ("admin", "bag", "config", "ingest")  # each in its own module of that name


def build(only: str | None = None) -> typer.Typer:
    """The CLI with every command, or with only the command or group ``only``."""
    app = typer.Typer(
        name="stagebox",
        help="Stage research data, prove every byte arrived, then store it.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
    )
    app.callback()(main)
    for name, (module, attr) in COMMANDS.items():
        if only in (None, name):
            app.command(name)(getattr(importlib.import_module(f"stagebox.cli.{module}"), attr))
    for name in GROUPS:
        if only in (None, name):
            app.add_typer(importlib.import_module(f"stagebox.cli.{name}").app, name=name)
    return app


USAGE_ERRORS = (ConfigError, InvalidInput, Forbidden)

# What `pip install stagebox` leaves out: the server, the catalog, the workers, S3.
SERVER_MODULES = frozenset(
    {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "pydantic_settings", "boto3"}
)

_debug = {"on": os.environ.get("STAGEBOX_DEBUG", "") not in ("", "0")}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stagebox {__version__}")
        raise typer.Exit()


def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="show tracebacks (or STAGEBOX_DEBUG=1)")
    ] = False,
) -> None:
    """Stage research data, prove every byte arrived, then store it."""
    _debug["on"] = _debug["on"] or debug


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so every command unwinds as on Ctrl-C:
    journals closed, a ``--json`` document finished. Commands with their own stop
    (``watch``, ``ingest run``, ``serve``) install their own handler."""


_terminated = {"by": False}


def _terminate(signum: int, frame: object) -> None:
    _terminated["by"] = True
    raise Terminated()


def run() -> None:
    """Run the CLI: errors become one line and an exit code (``--debug`` shows tracebacks)."""
    signal.signal(signal.SIGTERM, _terminate)
    first = sys.argv[1] if len(sys.argv) > 1 else None
    try:
        build(first if first in COMMANDS or first in GROUPS else None)()
    except SystemExit as exc:
        if exc.code == 130 and _terminated["by"]:  # typer turns the interrupt into 130
            typer.echo("stagebox: stopped (SIGTERM)", err=True)
            sys.exit(143)
        raise
    except StageboxError as exc:
        if _debug["on"]:
            raise
        typer.echo(f"stagebox: {exc}", err=True)
        sys.exit(2 if isinstance(exc, USAGE_ERRORS) else 1)
    except Exception as exc:
        if _debug["on"]:
            raise
        if (
            isinstance(exc, ModuleNotFoundError)
            and (exc.name or "").split(".")[0] in SERVER_MODULES
        ):
            typer.echo(
                f"stagebox: this command needs the server parts ({exc.name}), which a client-only "
                "install leaves out: pip install 'stagebox[server]'",
                err=True,
            )
            sys.exit(2)
        typer.echo(
            f"stagebox: internal error: {type(exc).__name__}: {exc} "
            "(run again with --debug for the traceback, and report it)",
            err=True,
        )
        sys.exit(1)
