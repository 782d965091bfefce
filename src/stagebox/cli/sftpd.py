"""``stagebox sftp-serve``: the built-in SFTP/SCP staging endpoint on its own."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from stagebox.cli.serve import DataDir


def sftp_serve(
    data_dir: DataDir = None,
    host: Annotated[
        str | None,
        typer.Option(help="address to listen on (or STAGEBOX_SFTP_HOST) [default: host's]"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="port to listen on (or STAGEBOX_SFTP_PORT) [default: 2222]"),
    ] = None,
    box: Annotated[
        str | None,
        typer.Option(help="the sftp staging box to serve (or STAGEBOX_SFTP_BOX) [the only one]"),
    ] = None,
) -> None:
    """Serve SFTP and SCP for approved uploaders, each in its own staging root.

    It runs where the box's directory is (the server's host or a staging host
    that reaches the catalog); keys are looked up in the catalog at each login.
    """
    from stagebox.config import server_settings
    from stagebox.errors import ConfigError
    from stagebox.server.runtime import build_context
    from stagebox.sftpd.endpoint import serve_forever

    settings = server_settings(
        False, data_dir=data_dir, sftp_host=host, sftp_port=port, sftp_box=box
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    ctx = build_context(settings)
    try:
        asyncio.run(
            serve_forever(ctx, settings.sftp_host or settings.host, settings.sftp_port or 2222)
        )
    except LookupError as exc:
        raise ConfigError(str(exc.args[0])) from None
    except OSError as exc:
        raise ConfigError(f"sftp endpoint cannot listen: {exc.strerror or exc}") from None
    finally:
        ctx.runner.shutdown()
        ctx.catalog.dispose()
