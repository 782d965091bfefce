"""``stagebox config``: the client's settings file, so commands need no flags."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from stagebox.client import settings
from stagebox.errors import InvalidInput

app = typer.Typer(
    help="The client's settings (server, token, ...), so `stagebox upload /data` needs no flags.",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(help=f"one of: {', '.join(settings.KEYS)}")]


def _known(name: str) -> str:
    if name not in settings.KEYS:
        raise InvalidInput("NAME", f"unknown setting; known: {', '.join(settings.KEYS)}", name)
    return name


@app.command("set")
def set_(name: Name, value: Annotated[str, typer.Argument()]) -> None:
    """Set NAME to VALUE in the client config file (written mode 0600)."""
    values = settings.read_file()
    values[_known(name)] = value
    if name == "server":
        values[name] = settings.server_url(value)
    path = settings.write_file(values)
    typer.echo(f"{name} set in {path}", err=True)


@app.command("unset")
def unset(name: Name) -> None:
    """Remove NAME from the client config file."""
    values = settings.read_file()
    values.pop(_known(name), None)
    settings.write_file(values)


@app.command("show")
def show(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Each setting's value and where it comes from (flag, environment, file); tokens masked."""
    rows = {}
    for name, key in settings.KEYS.items():
        value = settings.resolve(name, None)
        if value and key.secret:
            value = value[:8] + "…"
        rows[name] = {"value": value, "from": settings.source(name, None) if value else None}
    if as_json:
        typer.echo(json.dumps({"file": str(settings.config_file()), "settings": rows}, indent=2))
        return
    typer.echo(f"# {settings.config_file()}")
    for name, row in rows.items():
        shown = "(unset)" if row["value"] is None else f"{row['value']}  ({row['from']})"
        typer.echo(f"{name} = {shown}")


@app.command("path")
def path() -> None:
    """Print the client config file's path."""
    typer.echo(str(settings.config_file()))
