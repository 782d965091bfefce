"""The ``stagebox`` command line: thin commands over the library."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from stagebox import __version__
from stagebox.cli import (
    admin,
    bag,
    config,
    demo,
    ingest,
    packages,
    register,
    serve,
    sftpd,
    upload,
    verify,
    watch,
)
from stagebox.errors import ConfigError, Forbidden, InvalidInput, StageboxError

app = typer.Typer(
    name="stagebox",
    help="Stage research data, prove every byte arrived, then store it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.command("serve")(serve.serve)
app.command("sftp-serve")(sftpd.sftp_serve)
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
app.add_typer(config.app, name="config")
app.add_typer(ingest.app, name="ingest")

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


@app.callback()
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
    try:
        app()
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
