"""Options that several commands share: the server and token, and how a tree is selected.

``upload`` and ``verify`` select files the same way, so that a receipt speaks of
exactly the files an upload sent.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from stagebox.client import settings
from stagebox.client.scan import STRUCTURES, SYMLINKS, ScanRules
from stagebox.errors import ConfigError

_FROM = "or STAGEBOX_{0}, or: stagebox config set {1} {0}"

Server = Annotated[
    str | None,
    typer.Option(
        help="server URL, e.g. https://stagebox.example.org ("
        + _FROM.format("SERVER", "server")
        + ")"
    ),
]
Token = Annotated[
    str | None, typer.Option(help="API token (" + _FROM.format("TOKEN", "token") + ")")
]
Structure = Annotated[
    str | None,
    typer.Option(
        help=f"folder structure: {' | '.join(STRUCTURES)} (or STAGEBOX_STRUCTURE or the client "
        "config) [default: dataset]"
    ),
]
Dataset = Annotated[str | None, typer.Option(help="SRC itself is this dataset")]
Include = Annotated[list[str] | None, typer.Option(help="only files matching GLOB")]
Exclude = Annotated[list[str] | None, typer.Option(help="skip files matching GLOB")]
MinAge = Annotated[float, typer.Option(help="ignore files modified in the last MINUTES", min=0)]
Symlinks = Annotated[
    str,
    typer.Option(help=f"{' | '.join(SYMLINKS)}: skip links (reported) or follow those inside SRC"),
]
CaCert = Annotated[
    Path | None, typer.Option(help="CA bundle to trust for TLS (or STAGEBOX_CACERT)")
]


@dataclass(frozen=True)
class Target:
    """The server a client command talks to, and how: from flags, environment, config file."""

    server: str
    token: str
    tls: bool | ssl.SSLContext


def target(server: str | None, token: str | None, cacert: Path | None) -> Target:
    """Resolve server, token and CA bundle by precedence; a missing one is one line."""
    url = settings.server_url(server)
    secret = settings.required("token", token)
    bundle = settings.resolve("cacert", None if cacert is None else str(cacert))
    tls: bool | ssl.SSLContext = True
    if bundle:
        try:
            tls = ssl.create_default_context(cafile=bundle)
        except (OSError, ssl.SSLError) as exc:
            origin = settings.source("cacert", None if cacert is None else str(cacert))
            raise ConfigError(
                f"CA bundle {bundle} (from {origin}): cannot be loaded ({exc})"
            ) from None
    return Target(url, secret, tls)


def scan_rules(
    structure: str | None,
    dataset: str | None,
    include: list[str] | None,
    exclude: list[str] | None,
    min_age: float,
    symlinks: str,
) -> ScanRules:
    return ScanRules(
        structure=settings.resolve("structure", structure) or "dataset",
        dataset=dataset,
        include=include or (),
        exclude=exclude or (),
        min_age_minutes=min_age,
        symlinks=symlinks,
    )
