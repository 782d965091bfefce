from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stagebox.errors import ConfigError

if TYPE_CHECKING:
    from stagebox.config import Settings

DataDir = Annotated[
    Path | None,
    typer.Option(
        help="catalog and embedded boxes (or STAGEBOX_DATA_DIR) [default: ./stagebox-data]"
    ),
]
Init = Annotated[bool, typer.Option("--init", help="create the data dir if it does not exist")]


def serve(
    data_dir: DataDir = None,
    host: Annotated[
        str | None,
        typer.Option(help="address to listen on (or STAGEBOX_HOST) [default: 127.0.0.1]"),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="port to listen on (or STAGEBOX_PORT) [default: 8080]")
    ] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    md5: Annotated[bool | None, typer.Option(help="also compute md5 (MyTardis)")] = None,
    sftp_port: Annotated[
        int | None,
        typer.Option(help="also run the built-in SFTP/SCP endpoint on this port"),
    ] = None,
    sftp_sessions: Annotated[
        bool | None,
        typer.Option(
            "--sftp-sessions", help="also serve the sessions sshd hands over (an sshd box)"
        ),
    ] = None,
    init: Init = False,
) -> None:
    """Run the server: API, tus uploads, verification and promotion.

    Each setting comes from its flag, else STAGEBOX_<NAME>, else the TOML file
    named by STAGEBOX_CONFIG, else its default.
    """
    import uvicorn

    from stagebox.config import server_settings
    from stagebox.server.app import create_app

    settings = server_settings(
        init,
        data_dir=data_dir,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        md5=md5,
        sftp_port=sftp_port,
        sftp_sessions=sftp_sessions,
    )
    if settings.ssl_certfile:
        _check_tls(settings.ssl_certfile, settings.ssl_keyfile)
    _check_sftp_box(settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def _check_tls(certfile: Path, keyfile: Path | None) -> None:
    """Load the pair now, so a bad one is one line before anything starts."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        named = f"{certfile}" + (f" with key {keyfile}" if keyfile else "")
        raise ConfigError(f"TLS certificate {named}: cannot be loaded ({exc})") from None


def _check_sftp_box(settings: Settings) -> None:
    """The box ``--sftp-port`` or ``--sftp-sessions`` would serve exists: a missing
    one is one line now, not a failed start-up inside the server."""
    from stagebox.server.db.session import Catalog
    from stagebox.server.runtime import sftp_kinds
    from stagebox.sftpd.catalog import sftp_box

    kinds = sftp_kinds(settings)
    if not kinds:
        return
    catalog = Catalog(settings.catalog_url)
    try:
        catalog.migrate()
        for kind in kinds:
            flag = "--sftp-port" if kind == "stagebox" else "--sftp-sessions"
            try:
                sftp_box(catalog, settings.sftp_box, (kind,))
            except LookupError as exc:
                raise ConfigError(f"{flag}: {exc.args[0]}") from None
    finally:
        catalog.dispose()
