"""``stagebox ingest``: take tarred BagIt bags from a receiving box into storage."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stagebox.cli.output import print_table

if TYPE_CHECKING:
    from stagebox.ingest.jobs import Boxes
    from stagebox.server.services.context import ServerContext

app = typer.Typer(
    help="Ingest tarred BagIt bags: stage, validate, verify, store.", no_args_is_help=True
)

Receiving = Annotated[str, typer.Option("--receiving", help="the receiving box holding the tars")]
Staging = Annotated[
    str | None, typer.Option("--staging", help="staging box [default: the embedded one]")
]
Permanent = Annotated[
    str | None, typer.Option("--permanent", help="permanent box [default: the embedded one]")
]
ProfileOption = Annotated[
    str,
    typer.Option(
        "--profile",
        help="a BagIt profile file (BagIt-Profiles or DART JSON); 'aptrust' (APTrust 2.3) or "
        "'btr' (BTR 1.0) as shipped; 'auto' for the shipped one each bag's "
        "BagIt-Profile-Identifier names; 'none' for RFC 8493 alone",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

err = Console(stderr=True, highlight=False, soft_wrap=True)  # a log line is never cut

_state: dict[str, Path | None] = {"data_dir": None}


@app.callback()
def ingest(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="the server's data dir (or STAGEBOX_DATA_DIR, or data_dir in STAGEBOX_CONFIG)"
        ),
    ] = None,
) -> None:
    _state["data_dir"] = data_dir


def _context(data_dir: Path | None) -> ServerContext:
    # Imported here: the catalog stack is heavy and most commands never need it.
    from stagebox.config import server_settings
    from stagebox.server.runtime import build_context

    return build_context(server_settings(data_dir=data_dir))


def _profile(choice: str) -> dict[str, Any] | None:
    """The profile's JSON, kept on each job so a resumed job judges by the same rules."""
    from stagebox.ingest.profiles import job_profile

    return job_profile(choice)  # refuses a malformed profile now, not per job


def _boxes(ctx: ServerContext, receiving: str, staging: str | None, permanent: str | None) -> Boxes:
    from stagebox.ingest.jobs import resolve_boxes

    return resolve_boxes(ctx, receiving, staging, permanent)


@app.command("run")
def run(
    receiving: Receiving,
    staging: Staging = None,
    permanent: Permanent = None,
    profile: ProfileOption = "aptrust",
    once: Annotated[
        bool,
        typer.Option(
            "--once/--watch", help="stop when the bags found have ended, or keep watching"
        ),
    ] = True,
    workers: Annotated[int, typer.Option(min=1, max=32, help="jobs run at once")] = 2,
    delete_received: Annotated[
        bool, typer.Option(help="delete a bag's tar from the receiving box once stored")
    ] = False,
    poll: Annotated[float, typer.Option(min=0.1, help="seconds between looks for new bags")] = 5.0,
) -> None:
    """Find new tars (.tar, .tar.gz, .tgz) in the receiving box and ingest each one.

    Exits 1 when a job this run took ended failed; a job that failed in an
    earlier run is left for an operator (requeue or cancel).
    """
    from stagebox.ingest.worker import IngestRun, exit_code

    ctx = _context(_state["data_dir"])

    def progress(job_id: int, bag: str, what: str) -> None:
        err.print(f"job {job_id} ({bag}): {what}", markup=False)

    ingest = IngestRun(
        ctx,
        _boxes(ctx, receiving, staging, permanent),
        _profile(profile),
        workers=workers,
        delete_received=delete_received,
        poll=poll,
        progress=progress,
    )
    signal.signal(signal.SIGTERM, lambda *_: ingest.stop.set())
    try:
        outcome = ingest.run(once)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    from stagebox.ingest.jobs import endings

    for end in endings(ctx, outcome):
        what = f"{end.status}: {end.what}" if end.status == "succeeded" else end.what
        err.print(f"job {end.id} ({end.bag}): {what}", markup=False)
    raise typer.Exit(exit_code(outcome))


@app.command("submit")
def submit(
    key: Annotated[str, typer.Argument(help="the tar's key in the receiving box")],
    receiving: Receiving,
    staging: Staging = None,
    permanent: Permanent = None,
    profile: ProfileOption = "aptrust",
    delete_received: Annotated[bool, typer.Option(help="delete the tar once stored")] = False,
) -> None:
    """Queue one bag; the next ``ingest run`` on its receiving box takes it."""
    from stagebox.ingest import jobs

    ctx = _context(_state["data_dir"])
    job, created = jobs.submit(
        ctx,
        _boxes(ctx, receiving, staging, permanent),
        key,
        profile=_profile(profile),
        delete_received=delete_received,
    )
    typer.echo(json.dumps({"id": job.id, "created": created, "status": job.status}))


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="only jobs with this status")] = None,
    as_json: JsonOption = False,
) -> None:
    """Every ingest job, oldest first."""
    from stagebox.ingest import jobs

    rows = jobs.list_jobs(_context(_state["data_dir"]), status)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "bag", "stage", "status", "attempts", "bytes_read", "errors")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["bag"],
            row["stage"],
            row["status"],
            str(row["attempts"]),
            str(row["bytes_read"]),
            str(row["error_count"]),
        )
    print_table(table)


@app.command("show")
def show(
    job_id: Annotated[int, typer.Argument(metavar="JOB")],
    as_json: JsonOption = False,
) -> None:
    """One job with its files and every error."""
    from stagebox.ingest import jobs

    view = jobs.show_job(_context(_state["data_dir"]), job_id)
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    out = Console(highlight=False)
    for name in ("id", "bag", "stage", "status", "attempts", "bytes_read", "bytes_staged"):
        out.print(f"{name}: {view[name]}")
    for line in view["errors"]:
        out.print(f"error: {line}")
    for line in view["warnings"]:
        out.print(f"warning: {line}")
    table = Table("path", "uuid", "size", "sha256", "state")
    for f in view["files"]:
        table.add_row(f["path"], f["uuid"], str(f["size"]), f["sha256"][:16], f["state"])
    print_table(table)


@app.command("requeue")
def requeue(
    job_id: Annotated[int, typer.Argument(metavar="JOB")],
    stage: Annotated[str | None, typer.Option(help="run again from this stage")] = None,
) -> None:
    """Put a failed job back in the queue (its attempts start again from 0)."""
    from stagebox.ingest import jobs

    job = jobs.requeue(_context(_state["data_dir"]), job_id, stage)
    typer.echo(f"job {job.id} ({job.bag}): pending from stage {job.stage}")


@app.command("cancel")
def cancel(job_id: Annotated[int, typer.Argument(metavar="JOB")]) -> None:
    """Stop a job before it stores anything; its staged objects are deleted, its record kept.

    A worker running the job stops at its next checkpoint. A job that has
    succeeded, or begun to store its files, is refused (exit 2).
    """
    from stagebox.ingest import jobs

    done = jobs.cancel(_context(_state["data_dir"]), job_id)
    note = "; its worker stops at its next checkpoint" if done["was"] == "running" else ""
    typer.echo(
        f"job {done['id']} ({done['bag']}): cancelled, "
        f"{done['removed']} staged objects removed{note}"
    )
