"""``stagebox pack`` and ``stagebox push``: build a data package, send it where it is used."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from stagebox.cli import options as opt
from stagebox.errors import ConfigError, InvalidInput

# The package modules (asyncssh, PyYAML) load only when pack or push runs, so
# every other command starts as fast as before.
if TYPE_CHECKING:
    from stagebox.client.progress import ProgressEvent
    from stagebox.packages.push import PushOutcome, PushUnreachable
    from stagebox.packages.record import Package, PushFile, PushRecord

FORMATS = ("zip", "bag")

Vars = Annotated[
    list[str] | None, typer.Option("--var", help="KEY=VALUE for $KEY in the YAML (repeatable)")
]


def pack_command(
    declaration: Annotated[Path, typer.Argument(help="the declaration (pipeline.yml)")],
    action: Annotated[str, typer.Option(help="the action whose package to build")],
    prefix: Annotated[
        str | None,
        typer.Option(envvar="DATA_FILE_PREFIX", help="output prefix (or DATA_FILE_PREFIX)"),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="KEY=VALUE: a task option for package.yml (repeatable)"),
    ] = None,
    var: Vars = None,
    fmt: Annotated[str, typer.Option("--format", help=" | ".join(FORMATS))] = "zip",
) -> None:
    """Build PREFIX.<pipeline>.<action>.mdi.package.zip; print its path alone on stdout."""
    from stagebox.packages.declaration import Declaration
    from stagebox.packages.pack import pack
    from stagebox.packages.yamlfile import Variables, parse_assignments

    variables = Variables(parse_assignments(var, "--var"))
    result = pack(
        Declaration.read(declaration),
        action,
        prefix or "",
        variables=variables,
        options=parse_assignments(option, "--option"),
        fmt=fmt,
        report=lambda line: typer.echo(f"stagebox pack: {line}", err=True),
    )
    packed = sum(1 for e in result.files.values() if e is not None)
    how = "written" if result.changed else "unchanged (the same bytes were there)"
    typer.echo(
        f"stagebox pack: {packed} of {len(result.files)} file types, {result.size} bytes, "
        f"sha256 {result.sha256[:16]}..., {how}",
        err=True,
    )
    typer.echo(str(result.path))


def push_command(
    package: Annotated[Path, typer.Argument(help="the package zip from stagebox pack")],
    push_server_host: Annotated[
        str | None, typer.Option("--push-server", help="SSH host to push to")
    ] = None,
    push_port: Annotated[int | None, typer.Option(help="its SSH port [default: 22]")] = None,
    push_dir: Annotated[
        str | None, typer.Option(help="directory there [default: /srv/data]")
    ] = None,
    push_user: Annotated[str | None, typer.Option(help="SSH user [default: ubuntu]")] = None,
    push_key: Annotated[
        Path | None, typer.Option(help="private key, mode 0600 [default: ~/.ssh/mdi-push-key.pem]")
    ] = None,
    known_hosts: Annotated[
        Path, typer.Option(help="known_hosts to check the host key against")
    ] = Path("~/.ssh/known_hosts"),
    accept_new_host_key: Annotated[
        bool, typer.Option(help="record the host's key at first contact")
    ] = False,
    connect_timeout: Annotated[float, typer.Option(help="seconds to reach the host", min=1)] = 15.0,
    server: Annotated[
        str | None, typer.Option(help="push to a stagebox server instead (http path)")
    ] = None,
    token: opt.Token = None,
    dataset: Annotated[
        str | None, typer.Option(help="dataset on the server [default: the uploadType]")
    ] = None,
    cacert: Annotated[Path | None, typer.Option(help="CA bundle to trust for TLS")] = None,
    job: Annotated[
        Path | None, typer.Option(help="job YAML whose push: keys set the options above")
    ] = None,
    var: Vars = None,
    force: Annotated[bool, typer.Option(help="push even if the record says it arrived")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON result")] = False,
) -> None:
    """Push a package (and its extra push files); exit 0 only when it arrived, checked."""
    from stagebox.packages import jobfile
    from stagebox.packages.push import PushUnreachable, SshDestination, push_ssh
    from stagebox.packages.record import Package, PushRecord
    from stagebox.packages.to_server import ServerDestination, push_server
    from stagebox.packages.yamlfile import Variables, parse_assignments

    err = Console(stderr=True, highlight=False)
    pkg = Package.read(package)
    given = {
        "push-server": push_server_host,
        "push-port": None if push_port is None else str(push_port),
        "push-dir": push_dir,
        "push-user": push_user,
        "push-key": None if push_key is None else str(push_key),
    }
    settings = dict(jobfile.DEFAULTS)
    if job is not None:
        variables = Variables(parse_assignments(var, "--var"))
        settings.update(jobfile.push_settings(job, pkg.action, variables))
    settings.update({k: v for k, v in given.items() if v is not None})
    host = settings.get("push-server")
    if server and host:
        raise InvalidInput("--server", "push to a stagebox server or to --push-server, not both")
    if not server and not host:
        raise ConfigError(
            "nothing to push to: give --push-server HOST, --server URL, "
            "or a --job file whose push: block sets push-server"
        )
    record = PushRecord(pkg)
    if server:
        to = opt.target(server, token, cacert)
        to_server = ServerDestination(to.server, to.token, dataset, to.tls)
        target = to_server.target(pkg)
    else:
        try:
            port = int(settings["push-port"])
        except ValueError:
            raise InvalidInput("push-port", "must be a number", settings["push-port"]) from None
        to_ssh = SshDestination(
            host=str(host),
            directory=settings["push-dir"],
            user=settings["push-user"],
            port=port,
            key=Path(settings["push-key"]),
            known_hosts=known_hosts,
            accept_new_host_key=accept_new_host_key,
            connect_timeout=connect_timeout,
        )
        target = to_ssh.target
    done = None if force else record.pushed(target)
    if done is not None:
        _finish(as_json, pkg, target, "already-pushed", done, record)
        return
    with _bar(err, pkg) as bar:
        try:
            if server:
                outcome = push_server(pkg, to_server, bar.on_event)
            else:
                outcome = push_ssh(pkg, to_ssh, bar.on_bytes)
        except PushUnreachable as exc:
            bar.stop()
            _unreachable(as_json, pkg, target, exc)
            raise typer.Exit(1) from None
    try:
        entry = record.add(target, {"bytes_sent": outcome.bytes_sent})
    except OSError as exc:
        typer.echo(f"stagebox push: arrived, but {record.path} cannot be written: {exc.strerror}")
        entry = {"target": target, "sha256": pkg.file.sha256}
    _finish(as_json, pkg, target, "pushed", entry, record, outcome)


def _finish(
    as_json: bool,
    pkg: Package,
    target: str,
    state: str,
    entry: dict[str, Any],
    record: PushRecord,
    outcome: PushOutcome | None = None,
) -> None:
    files = (
        [{"name": f.name, "state": f.state, "bytes_sent": f.bytes_sent} for f in outcome.files]
        if outcome
        else []
    )
    if as_json:
        doc = {
            "state": state,
            "package": str(pkg.path),
            "sha256": pkg.file.sha256,
            "target": target,
            "time": entry.get("time"),
            "bytes_sent": outcome.bytes_sent if outcome else 0,
            "files": files,
            "record": str(record.path),
        }
        typer.echo(json.dumps(doc))
        return
    if state == "already-pushed":
        typer.echo(
            f"{pkg.file.name}: already pushed to {target} at {entry.get('time')} "
            f"(sha256 {pkg.file.sha256[:16]}...); nothing sent (--force to push again)"
        )
        return
    for f in files:
        typer.echo(f"  {f['name']}: {f['state']}, {f['bytes_sent']} bytes sent", err=True)
    typer.echo(
        f"{pkg.file.name}: pushed to {target}, sha256 checked "
        f"({outcome.bytes_sent if outcome else 0} bytes sent); recorded in {record.path}"
    )


def _unreachable(as_json: bool, pkg: Package, target: str, exc: PushUnreachable) -> None:
    if as_json:
        doc = {"state": "failed", "package": str(pkg.path), "target": target,
               "error": exc.reason, "rerun": exc.rerun}  # fmt: skip
        typer.echo(json.dumps(doc))
    typer.echo(f"stagebox push: FAILED: {exc.reason}", err=True)
    typer.echo(
        "stagebox push: nothing was recorded as pushed. Outbound SSH may be blocked here "
        "(e.g. on a cluster node); from a host that can reach it, run:",
        err=True,
    )
    typer.echo(f"  {exc.rerun}", err=True)


class _bar:
    """A transient byte bar on stderr (nothing at all when stderr is not a terminal)."""

    def __init__(self, console: Console, pkg: Package) -> None:
        total = sum(f.size for f in pkg.files)
        self.progress = Progress(
            TextColumn("push"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
            transient=True,
            disable=not (console.is_terminal and sys.stderr.isatty())
            or os.environ.get("TERM") == "dumb",
        )
        self.task = self.progress.add_task("push", total=total)

    def __enter__(self) -> _bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.progress.stop()

    def on_bytes(self, _file: PushFile, nbytes: int) -> None:
        self.progress.advance(self.task, nbytes)

    def on_event(self, event: ProgressEvent) -> None:
        if event.kind == "advanced":
            self.progress.advance(self.task, event.nbytes)
