"""The moto S3 server on 127.0.0.1 (the one S3-compatible server installable here)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagebox.server.process import free_port, stop_group, wait_listening
from stagebox.storage.s3 import S3Backend
from stagebox.storage.s3_writes import UNFINISHED

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

    def client(self) -> Any:
        """A boto3 S3 client for this server, with its credentials whatever the environment."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )


@contextlib.contextmanager
def running_moto(log_path: Path) -> Iterator[MotoServer]:
    """A moto server, with this process's AWS credentials pointing at it meanwhile
    (boto3 clients made here, and servers started from here, use them)."""
    server = MotoServer(log_path)
    server.start()
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def leftovers(box: S3Backend) -> tuple[list[str], list[str]]:
    """Multipart uploads still open and tail records still kept in ``box``'s bucket."""
    uploads = box.client.list_multipart_uploads(Bucket=box.bucket).get("Uploads", [])
    objects = box.client.list_objects_v2(Bucket=box.bucket).get("Contents", [])
    tails = [o["Key"] for o in objects if f"/{UNFINISHED}/" in f"/{o['Key']}"]
    return [u["Key"] for u in uploads], tails
