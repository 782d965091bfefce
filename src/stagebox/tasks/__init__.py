"""Task functions and the runners that execute them."""

from stagebox.tasks.runner import Sweeper, TaskRunner, ThreadTaskRunner

__all__ = ["Sweeper", "TaskRunner", "ThreadTaskRunner"]
