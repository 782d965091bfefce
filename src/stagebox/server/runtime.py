"""Assemble a running server: catalog, boxes, task runner and sweep."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from stagebox.config import Settings
from stagebox.server.db.session import Catalog
from stagebox.server.services import audit, boxes, verify
from stagebox.server.services.context import ServerContext
from stagebox.tasks import Sweeper, ThreadTaskRunner

if TYPE_CHECKING:
    from stagebox.sftpd.endpoint import InThread

log = logging.getLogger(__name__)


def build_context(settings: Settings) -> ServerContext:
    """Migrate the catalog, create the embedded boxes, register the tasks."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(settings.catalog_url)
    catalog.migrate()
    runner = ThreadTaskRunner(workers=settings.task_workers)
    ctx = ServerContext(settings=settings, catalog=catalog, runner=runner)
    runner.register("verify", partial(verify.verify_task, ctx))
    runner.register("promote", partial(verify.promote_task, ctx))
    runner.register("arrival", partial(verify.arrival_task, ctx))
    ctx.ensure_embedded_boxes()
    return ctx


def sftp_kinds(settings: Settings) -> list[str]:
    """The endpoints ``serve`` runs beside the API: its own SSH listener
    (``--sftp-port``), the sessions sshd hands over (``--sftp-sessions``)."""
    on = (("stagebox", settings.sftp_port is not None), ("sshd", settings.sftp_sessions))
    return [kind for kind, wanted in on if wanted]


class Runtime:
    """A context plus its background sweep; ``start`` resubmits stuck work at once."""

    def __init__(self, settings: Settings) -> None:
        self.ctx = build_context(settings)
        self._sweeper = Sweeper(partial(verify.sweep, self.ctx), settings.sweep_interval)
        self._auditor = audit.Auditor(self.ctx)
        self._sftp: list[InThread] = []

    def start(self) -> None:
        counts = verify.sweep(self.ctx)
        if any(counts.values()):
            log.info("start-up sweep resubmitted %s", counts)
        self._warn_shared_accounts()
        settings = self.ctx.settings
        for kind in sftp_kinds(settings):
            from stagebox.sftpd.endpoint import InThread

            endpoint = InThread(self.ctx, (kind,))
            self._sftp.append(endpoint)
            endpoint.start(settings.sftp_host or settings.host, settings.sftp_port or 0)
        self._sweeper.start()
        self._auditor.start()

    def _warn_shared_accounts(self) -> None:
        with self.ctx.catalog.session() as session:
            for box in boxes.list_boxes(session):
                if boxes.is_sftp(box) and box.attributes.get("sftp_endpoint") == "openssh":
                    log.warning(
                        "box %s: served by internal-sftp with one shared staging account: "
                        "every approved uploader can read and overwrite the others' staged "
                        "files (README: Moving from the OpenSSH staging host)",
                        box.name,
                    )

    def stop(self) -> None:
        for endpoint in self._sftp:
            endpoint.stop()
        self._sweeper.stop()
        self._auditor.stop()
        self.ctx.runner.shutdown()
        self.ctx.catalog.dispose()
