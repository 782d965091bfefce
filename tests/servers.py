"""Real servers on 127.0.0.1 for the integration tests, started on free ports."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stagebox_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stagebox", *args]


@dataclass
class StageboxServer:
    """``stagebox serve`` in its own process, so tests can kill and restart it."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    scheme: str = "http"
    cafile: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "STAGEBOX_SWEEP_INTERVAL": "1", **self.env}
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                stagebox_cmd(
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    *self.extra_args,
                ),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                verify = ssl.create_default_context(cafile=self.cafile) if self.cafile else True
                health = httpx.get(f"{self.url}/api/v1/health", timeout=1, verify=verify)
                if health.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become healthy:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, exactly like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def admin(self, *args: str) -> str:
        out = subprocess.run(
            stagebox_cmd("admin", "--data-dir", str(self.data_dir), *args),
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def add_uploader(self, name: str) -> str:
        return self.admin("uploader", "add", name)
