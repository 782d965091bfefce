"""``stagebox verify``: a receipt. Is every selected local file stored, byte for byte?"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stagebox.cli import options as opt
from stagebox.cli.output import print_table, signals_held
from stagebox.client.api import StageboxClient
from stagebox.client.receipt import STATES, Receipt, Verifier
from stagebox.client.scan import Omission, scan
from stagebox.errors import StageboxError

SHOWN = 200


def verify(
    src: Annotated[Path, typer.Argument(help="folder to check")],
    server: opt.Server = None,
    token: opt.Token = None,
    structure: opt.Structure = None,
    dataset: opt.Dataset = None,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    min_age: opt.MinAge = 0.0,
    symlinks: opt.Symlinks = "skip",
    threads: Annotated[int, typer.Option(help="files hashed at once", min=1, max=64)] = 2,
    show_all: Annotated[bool, typer.Option("--all", help="list stored files too")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON report")] = False,
    cacert: opt.CaCert = None,
) -> None:
    """Hash every selected file and ask the server whether its newest stored version
    is these bytes. Uploads nothing. Exit 0 only when every file is stored and identical."""
    to = opt.target(server, token, cacert)
    rules = opt.scan_rules(structure, dataset, include, exclude, min_age, symlinks)
    omissions: list[Omission] = []
    found = scan(src, rules, omitted=omissions.append)
    client = StageboxClient(to.server, to.token, verify_tls=to.tls)
    counts: Counter[str] = Counter()
    out = sys.stdout
    shown: list[Receipt] = []

    def totals() -> dict[str, int]:
        return {
            "files": sum(counts.values()),
            **{s: counts[s] for s in STATES},
            "omitted": len(omissions),
        }

    def json_tail(**tail: object) -> None:
        with signals_held():
            out.write("\n], " + json.dumps(tail)[1:] + "\n")
            out.flush()

    try:
        if as_json:
            with signals_held():
                out.write('{"files": [')
        for i, receipt in enumerate(Verifier(client, threads=threads).run(found)):
            if as_json:
                with signals_held():  # written and counted, or neither
                    out.write(("\n" if i == 0 else ",\n") + json.dumps(receipt.to_json()))
                    counts[receipt.state] += 1
                continue
            counts[receipt.state] += 1
            if (show_all or receipt.state != "stored") and len(shown) < SHOWN:
                shown.append(receipt)
        found.check_structure()
    except (StageboxError, KeyboardInterrupt) as exc:
        if as_json:  # a run cut short still prints one whole JSON document
            json_tail(totals=totals(), ok=False, error=str(exc) or "interrupted")
        raise
    finally:
        client.close()
    unreadable = counts["unreadable"] + found.unreadable
    ok = sum(counts.values()) == counts["stored"] and found.unreadable == 0
    if as_json:
        json_tail(omitted=[o.to_json() for o in omissions], totals=totals(), ok=ok)
    else:
        _render(shown, omissions, totals(), unreadable)
    raise typer.Exit(0 if ok else 1)


def _render(
    shown: list[Receipt], omissions: list[Omission], totals: dict[str, int], unreadable: int
) -> None:
    console = Console()
    if shown:
        table = Table("state", "file", "detail")
        for r in shown:
            table.add_row(r.state, r.file.display, r.detail or "")
        print_table(table)
    for o in omissions[:20]:
        console.print(f"omitted ({o.reason}): {o.path}" + (f": {o.detail}" if o.detail else ""))
    if len(omissions) > 20:
        console.print(f"... and {len(omissions) - 20} more omitted")
    summary = Table(*totals)
    summary.add_row(*(str(v) for v in totals.values()))
    print_table(summary)
    bad = totals["files"] - totals["stored"]
    if bad or unreadable:
        console.print(f"NOT all stored: {bad} file(s) not stored as they are here")
    else:
        console.print(f"all {totals['files']} file(s) stored, byte for byte")
