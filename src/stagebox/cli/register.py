"""``stagebox register``: ask a server for SFTP staging with this machine's key."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from stagebox.cli import options as opt
from stagebox.client import identity
from stagebox.client.api import StageboxClient


def _line(request: dict[str, Any] | None) -> str:
    if request is None:
        return "not registered (run: stagebox register)"
    head = f"request {request['id']} ({request['fingerprint']}): {request['state']}"
    if request["state"] == "approved" and request.get("sftp"):
        sftp = request["sftp"]
        where = f"sftp {sftp['user']}@{sftp['host']}:{sftp['port']} {sftp['root']}"
        if sftp.get("host_key"):
            where += f"; host key {sftp['host_key']}"
        return f"{head} on box {request['box']} ({where})"
    if request.get("reason"):
        return f"{head}: {request['reason']}"
    return head


def register(
    server: opt.Server = None,
    token: opt.Token = None,
    status: Annotated[bool, typer.Option("--status", help="only show the request's state")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the request as JSON")] = False,
) -> None:
    """Create this machine's SSH key (once), describe the machine to the server and
    request SFTP staging; an admin approves it. Running it again reuses both."""
    to = opt.target(server, token, None)
    server = to.server
    client = StageboxClient(server, to.token, verify_tls=to.tls)
    try:
        saved = identity.load_server(server)
        if status:
            request = _current(client, saved)
        else:
            _, public_key = identity.ensure_key()
            me = client.describe(identity.machine())
            request = client.request_registration(public_key)
            identity.save_server(
                server, {"uuid": me["uuid"], "name": me["name"], "request_id": request["id"]}
            )
    finally:
        client.close()
    if as_json:
        typer.echo(json.dumps(request, indent=2))
    else:
        typer.echo(_line(request))


def _current(client: StageboxClient, saved: dict[str, Any]) -> dict[str, Any] | None:
    requests = client.registrations()
    wanted = saved.get("request_id")
    for request in requests:
        if request["id"] == wanted:
            return request
    return requests[-1] if requests else None
