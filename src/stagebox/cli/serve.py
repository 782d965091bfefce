from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def serve(
    data_dir: Annotated[Path, typer.Option(help="catalog and embedded boxes live here")] = Path(
        "./stagebox-data"
    ),
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    md5: Annotated[bool | None, typer.Option(help="also compute md5 (MyTardis)")] = None,
) -> None:
    """Run the server: API, tus uploads, verification and promotion."""
    import uvicorn

    from stagebox.config import load_settings
    from stagebox.server.app import create_app

    settings = load_settings(
        data_dir=data_dir,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        md5=md5,
    )
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
