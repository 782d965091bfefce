"""Real servers on 127.0.0.1 for the integration tests, started on free ports."""

from __future__ import annotations

from dataclasses import dataclass, field

from stagebox.server.process import ServerProcess, free_port, stagebox_cmd

__all__ = ["StageboxServer", "free_port", "stagebox_cmd"]


@dataclass
class StageboxServer(ServerProcess):
    """A test server: sweeps every second so stuck work is picked up quickly."""

    env: dict[str, str] = field(default_factory=lambda: {"STAGEBOX_SWEEP_INTERVAL": "1"})
