"""The ingest loop: find bags, queue their jobs on the task runner, wait for them."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from stagebox.ingest import jobs, stages
from stagebox.server.db.models import IngestJob, IngestStatus, utcnow
from stagebox.server.services.context import ServerContext
from stagebox.tasks import ThreadTaskRunner

log = logging.getLogger(__name__)


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_allocator() -> None:
    """Keep glibc from mapping and unmapping every 1 MiB chunk buffer.

    The stage hands 1 MiB chunks between threads; glibc serves them with a
    fresh mmap (or trims them away with madvise) each time, so every chunk
    paid page faults: half the stage's system time. With the thresholds set,
    freed chunks are reused. A no-op where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, 64 << 20)
        mallopt(M_TRIM_THRESHOLD, 32 << 20)


@dataclass
class IngestRun:
    """What one ``stagebox ingest run`` works on, and how."""

    ctx: ServerContext
    boxes: jobs.Boxes
    profile: dict[str, Any] | None
    workers: int = 2
    delete_received: bool = False
    poll: float = 5.0
    progress: stages.Progress | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def _wake_in(self, watched: set[int]) -> float:
        """Seconds until the soonest retry among ``watched`` (at most ``poll``)."""
        with self.ctx.catalog.session() as s:
            soonest = s.scalar(
                select(IngestJob.next_attempt_at)
                .where(
                    IngestJob.id.in_(watched),
                    IngestJob.status == IngestStatus.pending,
                    IngestJob.next_attempt_at.is_not(None),
                )
                .order_by(IngestJob.next_attempt_at)
                .limit(1)
            )
        if soonest is None:
            return self.poll
        return max(0.05, min(self.poll, (soonest - utcnow()).total_seconds()))

    def _ended(self, watched: set[int]) -> dict[int, str]:
        with self.ctx.catalog.session() as s:
            rows = s.execute(
                select(IngestJob.id, IngestJob.status).where(IngestJob.id.in_(watched))
            ).all()
        return {r.id: r.status for r in rows if r.status in jobs.ENDED}

    def run(self, once: bool) -> dict[int, str]:
        """Ingest until every job found has ended (``once``) or until stopped.

        Returns the status of each job this run watched: those that had not
        ended when it found them (a job that ended in an earlier run is left out).
        """
        tune_allocator()
        owner = jobs.worker_id()
        wake = threading.Event()

        def task(job_id: int) -> None:
            try:
                stages.run_job(self.ctx, job_id, owner, self.progress, self.stop)
            finally:
                wake.set()

        runner = ThreadTaskRunner({"ingest": task}, workers=self.workers)
        watched: set[int] = set()
        try:
            while not self.stop.is_set():
                watched |= set(
                    jobs.discover(
                        self.ctx,
                        self.boxes,
                        profile=self.profile,
                        delete_received=self.delete_received,
                    )
                )
                watched |= set(jobs.unfinished(self.ctx, self.boxes.receiving))
                for job_id in jobs.runnable(self.ctx, watched):
                    runner.submit("ingest", job_id=job_id)
                ended = self._ended(watched)
                if once and len(ended) == len(watched):
                    return ended
                wake.wait(self._wake_in(watched - set(ended)) if watched else self.poll)
                wake.clear()
        except KeyboardInterrupt:
            self.stop.set()  # running attempts end at their next checkpoint
            raise
        finally:
            runner.shutdown()
        return self._ended(watched)


def exit_code(outcome: dict[int, str]) -> int:
    """1 when a job this run watched ended ``failed``, else 0 (a cancelled job is
    an operator's choice, not a failure)."""
    return 1 if any(status == IngestStatus.failed for status in outcome.values()) else 0
