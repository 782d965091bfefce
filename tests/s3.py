"""The moto S3 server on 127.0.0.1 (the one S3-compatible server installable here)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stagebox.server.process import free_port, stop_group, wait_listening

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "stagebox-test",
    "AWS_SECRET_ACCESS_KEY": "stagebox-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class MotoServer:
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        server = Path(sys.executable).with_name("moto_server")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **CREDENTIALS},
            )
        try:
            wait_listening(self.port, self.proc, self.log_path, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=10)
        self.proc = None
