"""``stagebox serve`` as a child process on a free loopback port.

Used by ``stagebox demo``, the integration tests and the benchmarks, which all
need a real server they can start, kill and restart.
"""

from __future__ import annotations

import contextlib
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


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``proc`` (started with a new session), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_listening(
    port: int,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float = 30.0,
    banner: bytes = b"",
) -> None:
    """Wait until 127.0.0.1:``port`` accepts (and greets with ``banner``); raise,
    with the server's log, if ``proc`` dies first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited early:\n{log_path.read_text()}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1) as sock,
        ):
            if not banner or sock.recv(len(banner)).startswith(banner):
                return
        time.sleep(0.1)
    raise RuntimeError(
        f"nothing listened on port {port} in {timeout:.0f}s:\n{log_path.read_text()}"
    )


def stagebox_cmd(*args: str) -> list[str]:
    """The argv that runs the stagebox CLI with this interpreter."""
    return [sys.executable, "-m", "stagebox", *args]


def wait_healthy(
    url: str,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    cafile: str | None = None,
) -> None:
    """Poll ``/api/v1/health`` until it answers 200; raise if ``proc`` dies first."""
    verify: bool | ssl.SSLContext = ssl.create_default_context(cafile=cafile) if cafile else True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server at {url} did not become healthy in {timeout:.0f}s")


@dataclass
class ServerProcess:
    """One server on 127.0.0.1; its output goes to ``log_path`` beside the data dir."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    scheme: str = "http"
    cafile: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 30.0) -> None:
        argv = stagebox_cmd(
            "serve", "--init", "--data-dir", str(self.data_dir), "--port", str(self.port)
        )
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*argv, *self.extra_args],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_healthy(self.url, timeout, self.proc, self.cafile)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}\n{self.log_path.read_text()}") from None
        except BaseException:  # interrupted or broken: never leave the child behind
            self.kill()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not gone after ``timeout`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, exactly like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def admin(self, *args: str) -> str:
        """Run ``stagebox admin --data-dir DIR ARGS``; returns its stdout.

        The data dir is made first if it does not exist yet (``admin init``), as a
        facility does once before anything else."""
        if args != ("init",) and not (self.data_dir / "catalog.db").exists():
            self.admin("init")
        out = subprocess.run(
            stagebox_cmd("admin", "--data-dir", str(self.data_dir), *args),
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def add_uploader(self, name: str) -> str:
        return self.admin("uploader", "add", name)
