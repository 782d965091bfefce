"""Task runners: where idempotent task functions run.

The embedded :class:`ThreadTaskRunner` runs tasks on a thread pool inside the
server process. A broker-backed runner (Celery) implements the same
``submit``; task functions never know which one runs them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

log = logging.getLogger(__name__)

Task = Callable[..., object]


class TaskRunner(Protocol):
    def submit(self, task_name: str, **args: Any) -> None: ...

    def shutdown(self) -> None: ...


class ThreadTaskRunner:
    """Runs registered tasks on a bounded thread pool.

    A task already queued or running with the same arguments is not queued
    again, so a sweep and a request racing on one replica cost one run.
    """

    def __init__(self, tasks: Mapping[str, Task] | None = None, workers: int = 4) -> None:
        self._tasks: dict[str, Task] = dict(tasks or {})
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stagebox-task")
        self._inflight: set[tuple[str, tuple[tuple[str, Any], ...]]] = set()
        self._lock = threading.Lock()

    def register(self, name: str, fn: Task) -> None:
        self._tasks[name] = fn

    def submit(self, task_name: str, **args: Any) -> None:
        fn = self._tasks[task_name]
        key = (task_name, tuple(sorted(args.items())))
        with self._lock:
            if key in self._inflight:
                return
            self._inflight.add(key)
        future = self._pool.submit(fn, **args)
        future.add_done_callback(lambda f: self._done(key, f))

    def _done(self, key: tuple[str, Any], future: Future[object]) -> None:
        with self._lock:
            self._inflight.discard(key)
        exc = future.exception()
        if exc is not None:
            log.error("task %s failed: %s", key[0], exc, exc_info=exc)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


class Sweeper:
    """Calls ``sweep`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, sweep: Callable[[], object], interval: float) -> None:
        self._sweep = sweep
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stagebox-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sweep()
            except Exception:
                log.exception("sweep failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
