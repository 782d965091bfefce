"""``stagebox admin``: operator commands that work on the catalog directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from stagebox.server.db.session import Catalog

app = typer.Typer(help="Administer uploaders, tokens and boxes.", no_args_is_help=True)
uploader_app = typer.Typer(help="Uploaders and their API tokens.", no_args_is_help=True)
app.add_typer(uploader_app, name="uploader")

_state: dict[str, Path | None] = {"data_dir": None}


@app.callback()
def admin(
    data_dir: Annotated[
        Path | None, typer.Option(help="the server's data dir (or STAGEBOX_DATA_DIR)")
    ] = None,
) -> None:
    _state["data_dir"] = data_dir


def _catalog() -> Catalog:
    # Imported here: the catalog stack is heavy and the upload client never needs it.
    from stagebox.config import load_settings
    from stagebox.server.db.session import Catalog

    settings = load_settings(data_dir=_state["data_dir"])
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(settings.catalog_url)
    catalog.migrate()
    return catalog


@uploader_app.command("add")
def uploader_add(name: str) -> None:
    """Create an uploader; its API token is printed alone on stdout, once."""
    from stagebox.server.services import uploaders

    catalog = _catalog()
    with catalog.session() as session:
        _, token = uploaders.add_uploader(session, name)
    typer.echo(token)


@uploader_app.command("list")
def uploader_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every uploader with its state and token count."""
    from stagebox.server.services import uploaders

    catalog = _catalog()
    with catalog.session() as session:
        rows = [
            {
                "name": u.name,
                "uuid": u.uuid,
                "state": "revoked" if u.revoked_at else "active",
                "tokens": sum(1 for t in u.tokens if t.revoked_at is None),
                "created_at": u.created_at.isoformat(),
            }
            for u in uploaders.list_uploaders(session)
        ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "uuid", "state", "tokens", "created")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("name", "uuid", "state", "tokens", "created_at")))
    Console().print(table)


@uploader_app.command("revoke")
def uploader_revoke(name: str) -> None:
    """Revoke an uploader and all its tokens; its next request gets 401."""
    from stagebox.server.services import uploaders

    catalog = _catalog()
    with catalog.session() as session:
        uploaders.revoke_uploader(session, name)
    typer.echo(f"revoked {name}", err=True)
