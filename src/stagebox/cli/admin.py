"""``stagebox admin``: operator commands that work on the catalog directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stagebox.cli.output import print_table

if TYPE_CHECKING:
    from stagebox.config import Settings
    from stagebox.server.db.session import Catalog

app = typer.Typer(help="Administer uploaders, tokens and boxes.", no_args_is_help=True)
uploader_app = typer.Typer(help="Uploaders and their API tokens.", no_args_is_help=True)
box_app = typer.Typer(help="Storage boxes: where bytes are staged and kept.", no_args_is_help=True)
requests_app = typer.Typer(
    help="Registration requests: approve or reject an uploader's SFTP key.", no_args_is_help=True
)
token_app = typer.Typer(help="Tokens for the admin API.", no_args_is_help=True)
app.add_typer(uploader_app, name="uploader")
app.add_typer(box_app, name="box")
app.add_typer(requests_app, name="requests")
app.add_typer(token_app, name="token")

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        help="the server's data dir (or STAGEBOX_DATA_DIR, or data_dir in STAGEBOX_CONFIG)"
    ),
]

_state: dict[str, Path | None] = {"data_dir": None}


@app.callback()
def admin(data_dir: DataDirOption = None) -> None:
    _state["data_dir"] = data_dir


def _settings(init: bool = False) -> Settings:
    from stagebox.config import server_settings

    return server_settings(init, data_dir=_state["data_dir"])


def _catalog(migrate: bool = True, init: bool = False) -> Catalog:
    # Imported here: the catalog stack is heavy and the upload client never needs it.
    from stagebox.server.db.session import Catalog

    catalog = Catalog(_settings(init).catalog_url)
    if migrate:
        catalog.migrate()
    return catalog


@app.command("init")
def init() -> None:
    """Create the data dir and its catalog (once); the server and admin commands use it."""
    settings = _settings(init=True)
    _catalog(init=True).dispose()
    typer.echo(f"data dir ready: {settings.data_dir.expanduser().absolute()}", err=True)


def _show(rows: list[dict[str, Any]], columns: tuple[str, ...], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row.get(k) is None else str(row.get(k)) for k in columns))
    print_table(table)


@uploader_app.command("add")
def uploader_add(name: str) -> None:
    """Create an uploader; its API token is printed alone on stdout, once."""
    from stagebox.server.services import uploaders

    catalog = _catalog()
    with catalog.session() as session:
        _, token = uploaders.add_uploader(session, name)
    typer.echo(token)


@uploader_app.command("list")
def uploader_list(as_json: JsonOption = False) -> None:
    """Every uploader with its state, token count and machine."""
    from stagebox.server.services import uploaders

    catalog = _catalog()
    with catalog.session() as session:
        rows = [uploaders.public(u) for u in uploaders.list_uploaders(session)]
    _show(rows, ("name", "uuid", "state", "tokens", "hostname", "os", "created_at"), as_json)


@uploader_app.command("revoke")
def uploader_revoke(name: str) -> None:
    """Revoke an uploader, its tokens and its SFTP keys; its next request gets 401
    and its next SSH connection is refused."""
    from stagebox.server.services import uploaders

    catalog = _catalog()
    with catalog.session() as session:
        uploaders.revoke_uploader(session, name)
    typer.echo(f"revoked {name}", err=True)


@box_app.command("add")
def box_add(
    name: str,
    role: Annotated[str, typer.Option(help="receiving | staging | permanent")],
    path: Annotated[
        str | None, typer.Option(help="a local box's directory, as the server sees it")
    ] = None,
    backend: Annotated[str, typer.Option(help="local | s3")] = "local",
    bucket: Annotated[str | None, typer.Option(help="an s3 box's bucket")] = None,
    prefix: Annotated[str | None, typer.Option(help="key prefix inside the bucket")] = None,
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint (AWS if unset)")
    ] = None,
    region: Annotated[str | None, typer.Option(help="S3 region")] = None,
    sftp_host: Annotated[str | None, typer.Option(help="staging host uploaders reach")] = None,
    sftp_port: Annotated[int | None, typer.Option(help="its SSH port (22)")] = None,
    sftp_user: Annotated[str | None, typer.Option(help="the staging account")] = None,
    sftp_root: Annotated[
        str | None, typer.Option(help="PATH as seen from the staging host (default: --path)")
    ] = None,
    sftp_endpoint: Annotated[
        str | None,
        typer.Option(
            help="who serves it: sshd (the default: OpenSSH's sshd handing each session "
            "to stagebox serve --sftp-sessions) or stagebox (its own SSH, --sftp-port)"
        ),
    ] = None,
    sftp_socket: Annotated[
        str | None,
        typer.Option(help="an sshd box's session socket (default /run/stagebox/NAME.sock)"),
    ] = None,
) -> None:
    """Add a storage box: local (--path, and --sftp-* for an sftp staging box) or
    s3 (--bucket, --prefix, --endpoint-url, --region; credentials from the AWS chain)."""
    from stagebox.server.services import boxes

    catalog = _catalog()
    with catalog.session() as session:
        box = boxes.add_box(
            session,
            name,
            role=role,
            backend=backend,
            path=path,
            sftp_host=sftp_host,
            sftp_port=sftp_port,
            sftp_user=sftp_user,
            sftp_root=sftp_root,
            sftp_endpoint=sftp_endpoint,
            sftp_socket=sftp_socket,
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint_url,
            region=region,
        )
        public = boxes.public(box)
    typer.echo(f"added box {public['name']}", err=True)


@box_app.command("list")
def box_list(as_json: JsonOption = False) -> None:
    """Every box with its role, backend and attributes."""
    from stagebox.server.services import boxes

    catalog = _catalog()
    with catalog.session() as session:
        rows = [boxes.public(b) for b in boxes.list_boxes(session)]
    columns = ("name", "role", "backend", "path", "bucket", "sftp_host", "sftp_port", "sftp_user")
    _show(rows, (*columns, "sftp_root"), as_json)


@requests_app.command("list")
def requests_list(
    state: Annotated[
        str | None, typer.Option(help="pending | approved | rejected | revoked")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Registration requests, oldest first, with each key's fingerprint."""
    from stagebox.server.services import registrations

    catalog = _catalog()
    with catalog.session() as session:
        rows = [registrations.public(r) for r in registrations.list_requests(session, state=state)]
    _show(rows, ("id", "uploader", "fingerprint", "state", "box", "reason", "created_at"), as_json)


@requests_app.command("approve")
def requests_approve(
    request_id: Annotated[int, typer.Argument(metavar="ID")],
    box: Annotated[str, typer.Option(help="the sftp staging box to assign")],
) -> None:
    """Approve a request: its key may log in to the box's staging account."""
    from stagebox.server.services import registrations

    catalog = _catalog()
    with catalog.session() as session:
        request = registrations.approve(session, request_id, box)
        typer.echo(f"approved request {request.id} of {request.uploader.name} on {box}", err=True)


@requests_app.command("reject")
def requests_reject(
    request_id: Annotated[int, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option(help="shown to the uploader")],
) -> None:
    """Reject a request (an approved key stops working at its next connection)."""
    from stagebox.server.services import registrations

    catalog = _catalog()
    with catalog.session() as session:
        request = registrations.reject(session, request_id, reason)
        typer.echo(f"rejected request {request.id} of {request.uploader.name}", err=True)


@app.command("export-keys")
def export_keys(
    box: Annotated[str, typer.Option(help="the sftp staging box")],
    out: Annotated[Path, typer.Option(help="authorized_keys file to write")],
) -> None:
    """Write an authorized_keys file: one restricted line per approved key of BOX."""
    from stagebox.server.services import boxes, registrations

    catalog = _catalog()
    with catalog.session() as session:
        boxes.get_box(session, box)
        lines = registrations.authorized_keys(session, box=box)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.chmod(0o644)
    tmp.replace(out)  # sshd never reads a half-written file
    typer.echo(f"wrote {len(lines)} keys to {out}", err=True)


@app.command("authorized-keys")
def authorized_keys(
    user: Annotated[str, typer.Argument(help="the staging account sshd asks about (%u)")],
) -> None:
    """Print the authorized_keys lines for USER: sshd's AuthorizedKeysCommand."""
    from stagebox.server.services import registrations

    catalog = _catalog(migrate=False)
    with catalog.session() as session:
        for line in registrations.authorized_keys(session, user=user):
            typer.echo(line)


@token_app.command("add")
def token_add(name: Annotated[str, typer.Argument(help="who holds the token")]) -> None:
    """Issue an admin API token; printed alone on stdout, once."""
    from stagebox.server.services import uploaders

    catalog = _catalog()
    with catalog.session() as session:
        token = uploaders.add_admin_token(session, name)
    typer.echo(token)


@app.command("audit")
def audit_command(
    box: Annotated[str | None, typer.Option(help="only the objects kept in box NAME")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="every stored object, however recent")
    ] = False,
    older_than: Annotated[
        float | None,
        typer.Option(
            help="objects whose last audit is older than DAYS (default: the server's "
            "audit_interval_days)",
            min=0,
        ),
    ] = None,
    limit_mb_s: Annotated[
        float | None,
        typer.Option(help="read at most MB/s (default: audit_max_mb_s; 0 = no cap)", min=0),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-read stored objects and compare size and sha256 with the catalog.

    Each check is recorded; a corrupt or missing object is marked so (never
    repaired). Exit 0 when every object checked is ok, 1 otherwise.
    """
    from stagebox.server.runtime import build_context
    from stagebox.server.services import audit

    if every and older_than is not None:
        raise typer.BadParameter("give --all or --older-than, not both")
    settings = _settings()
    ctx = build_context(settings)
    days = (
        None if every else (older_than if older_than is not None else settings.audit_interval_days)
    )
    rate = settings.audit_max_mb_s if limit_mb_s is None else limit_mb_s
    console = Console(stderr=True)

    def progress(due: audit.Due, result: str, detail: str) -> None:
        if result != "ok" and not as_json:
            console.print(f"{result}: {due.key} ({detail})")

    try:
        summary = audit.run_audit(
            ctx, box=box, older_than_days=days, max_mb_s=rate, progress=progress
        )
    finally:
        ctx.runner.shutdown()
        ctx.catalog.dispose()
    if as_json:
        findings = [
            {"kind": d.kind, "box_id": d.box_id, "key": d.key, "result": r, "detail": why}
            for d, r, why in summary.findings
        ]
        typer.echo(
            json.dumps({**summary.counts, "bytes_read": summary.bytes_read, "findings": findings})
        )
    else:
        _show(
            [{**summary.counts, "bytes_read": summary.bytes_read}],
            ("ok", "corrupt", "missing", "unchecked", "bytes_read"),
            False,
        )
    bad = sum(n for result, n in summary.counts.items() if result != "ok")
    raise typer.Exit(0 if bad == 0 else 1)


@app.command("sftp-hostkey")
def sftp_hostkey(
    rotate: Annotated[
        bool, typer.Option("--rotate", help="replace the key (clients must accept the new one)")
    ] = False,
) -> None:
    """The built-in SFTP endpoint's host key: made on first use, printed as its
    fingerprint, recorded on every box the endpoint serves so `stagebox register
    --status` can show it to uploaders."""
    from stagebox.sftpd import endpoint

    settings = _settings()
    path = endpoint.host_key_path(settings)
    existed = path.exists()
    key = endpoint.write_host_key(path) if rotate else endpoint.load_host_key(settings, create=True)
    fingerprint = key.get_fingerprint("sha256")
    catalog = _catalog()
    try:
        endpoint.record_host_key(catalog, fingerprint)
    finally:
        catalog.dispose()
    made = "rotated" if rotate and existed else "made" if not existed or rotate else "kept"
    typer.echo(f"{made} {path}", err=True)
    typer.echo(fingerprint)
