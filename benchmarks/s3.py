"""The s3 case's server and sides: one moto S3 server per case; ``stagebox upload`` to a
stagebox server whose http staging box is a bucket on it, against ``rclone copy`` and
``aws s3 cp`` of the same file into another bucket on it.

moto keeps every object in its own memory, so each run's objects (and any multipart upload
left open) are deleted after the run; the figures measure moto as much as the clients, and
only ratios taken against the same moto mean anything.

Server CPU and peak RSS are ``stagebox serve``'s: the peers have no server of their own.
moto's CPU and peak RSS are measured in every run, as ``moto_*``: its CPU says how much of
the S3 work each side caused; its RSS grows from run to run (it keeps what it was sent
until its heap is reused) and says nothing about the client.

Checks after the clock stops: stagebox's ``--json`` totals must say verified, then
(untimed) the file must end stored, which empties the staging bucket; a peer must leave one
object of the file's size.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from benchmarks.measure import Measurement, run_measured
from benchmarks.sides import (
    Bench,
    Record,
    RunFailed,
    ServerSetup,
    record,
    stagebox_upload,
    with_also,
)
from stagebox.config import Settings

if TYPE_CHECKING:
    from tests.s3 import MotoServer

BOX = "s3-staging"
STAGING, PEERS = "staging", "peers"  # buckets: stagebox's staging box, the peers' target
REGION = "us-east-1"


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def moto_reason() -> str | None:
    """Why the case cannot run here, or None."""
    if "staging_box" not in Settings.model_fields:
        return "stagebox has no staging_box setting (no S3 staging for http uploads)"
    if not Path(sys.executable).with_name("moto_server").exists():
        return "moto_server not in the venv (pip install -e '.[dev]' installs moto[server])"
    return None


def real_command(name: str) -> str | None:
    """``name`` on PATH; a pyenv shim is resolved to what it runs, so the shim's own
    start-up (a shell and ``pyenv exec``, ~0.2 s) is not timed as the tool's."""
    found = shutil.which(name)
    if found is None or "/.pyenv/shims/" not in found:
        return found
    out = subprocess.run(["pyenv", "which", name], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else found


def _clean_env() -> dict[str, str]:
    """The environment without AWS_* or RCLONE_* settings: the host's (a CA bundle, a
    profile) must not reach a plain-http moto on 127.0.0.1."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}


@dataclass
class S3Stage:
    """The case's moto server, a client to it, and the stagebox setup staging on it."""

    url: str
    client: Any  # boto3's S3 client
    process: psutil.Process
    credentials: dict[str, str]

    @property
    def setup(self) -> ServerSetup:
        return ServerSetup(
            name="s3-staging",
            admin=((
                "box", "add", BOX, "--role", "staging", "--backend", "s3",
                "--bucket", STAGING, "--endpoint-url", self.url, "--region", REGION,
            ),),
            env={"STAGEBOX_STAGING_BOX": BOX, **self.credentials},
            also={"moto": self.process},
        )  # fmt: skip

    def empty(self, bucket: str) -> None:
        """Abort every open multipart upload and delete every object in ``bucket``."""
        for up in self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            self.client.abort_multipart_upload(
                Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"]
            )
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys})

    def sizes(self, bucket: str) -> dict[str, int]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def rclone_env(self) -> dict[str, str]:
        """An rclone remote ``moto:`` given in the environment (provider Other)."""
        prefix = "RCLONE_CONFIG_MOTO_"
        return {
            **_clean_env(),
            f"{prefix}TYPE": "s3",
            f"{prefix}PROVIDER": "Other",
            f"{prefix}ENDPOINT": self.url,
            f"{prefix}REGION": REGION,
            f"{prefix}ACCESS_KEY_ID": self.credentials["AWS_ACCESS_KEY_ID"],
            f"{prefix}SECRET_ACCESS_KEY": self.credentials["AWS_SECRET_ACCESS_KEY"],
        }

    def aws_env(self, run_dir: Path) -> dict[str, str]:
        """The test credentials, and no config file of the host's."""
        missing = str(run_dir / "no-aws-config")
        return {
            **_clean_env(),
            **self.credentials,
            "AWS_CONFIG_FILE": missing,
            "AWS_SHARED_CREDENTIALS_FILE": missing,
        }


@contextlib.contextmanager
def moto_for_case(b: Bench, name: str) -> Iterator[tuple[MotoServer, Any]]:
    """A moto server in a fresh folder of the case, and a boto3 client for it."""
    from tests.s3 import MotoServer

    root = b.fresh_dir(f"{name}-moto")
    moto = MotoServer(root / "moto.log")
    try:
        try:
            moto.start()
        except (RuntimeError, OSError) as exc:
            raise RunFailed(f"moto server did not start: {exc}") from exc
        yield moto, moto.client()
    finally:
        moto.stop()
    shutil.rmtree(root)


@contextlib.contextmanager
def s3_stage(b: Bench, name: str) -> Iterator[S3Stage]:
    """A moto server for the case, with the staging and the peers' buckets."""
    from botocore.exceptions import BotoCoreError, ClientError
    from tests.s3 import CREDENTIALS

    print("  setting up: moto server, buckets", flush=True)
    with moto_for_case(b, name) as (moto, client):
        assert moto.proc is not None
        try:
            for bucket in (STAGING, PEERS):
                client.create_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError) as exc:
            raise RunFailed(f"creating buckets on moto failed: {exc}") from exc
        yield S3Stage(moto.url, client, psutil.Process(moto.proc.pid), dict(CREDENTIALS))


def stagebox_s3_upload(b: Bench, stage: S3Stage, folder: Path, size: int, label: str) -> Record:
    """``stagebox upload`` staged in the moto bucket; the file must end stored (untimed)."""
    try:
        return stagebox_upload(b, folder, 1, size, label, stage.setup, settle=True)
    finally:
        stage.empty(STAGING)


def _peer(stage: S3Stage, run_dir: Path, cmd: list[str], env: dict[str, str]) -> Measurement:
    os.sync()
    return run_measured(
        cmd,
        stdout=run_dir / "client.out",
        stderr=run_dir / "client.err",
        env=env,
        also={"moto": stage.process},
    )


def _check_peer(
    stage: S3Stage, tool: str, label: str, m: Measurement, run_dir: Path, key: str, size: int
) -> None:
    """The peer must have left exactly one object, ``key``, of ``size`` bytes."""
    try:
        got = stage.sizes(PEERS)
    finally:
        stage.empty(PEERS)
    if m.exit_code != 0 or got != {key: size}:
        raise RunFailed(
            f"{tool} ({label}) exit {m.exit_code}, objects {got}, expected {{{key!r}: {size}}}"
            f":\n{_tail(run_dir / 'client.err')}"
        )
    shutil.rmtree(run_dir)


def rclone_s3(b: Bench, stage: S3Stage, folder: Path, size: int, label: str) -> Record:
    """``rclone copy FOLDER moto:peers/RUN/`` with rclone's defaults, except
    ``--s3-no-head`` (rclone 1.60 HEADs the new object with ``versionId=null``, which moto
    answers 400, and then copies again) and ``--retries 1`` (a failure is not hidden)."""
    run_dir = b.fresh_dir(label)
    config = run_dir / "rclone.conf"
    config.touch()
    cmd = [
        "rclone", "copy", "--config", str(config), "--s3-no-head", "--retries", "1",
        f"{folder}/", f"moto:{PEERS}/{run_dir.name}/",
    ]  # fmt: skip
    m = _peer(stage, run_dir, cmd, stage.rclone_env())
    _check_peer(stage, "rclone copy", label, m, run_dir, f"{run_dir.name}/data.bin", size)
    return with_also(m, record(m, files=1, bytes=size))


def aws_s3_cp(b: Bench, stage: S3Stage, path: Path, label: str, aws: str) -> Record:
    """``aws s3 cp FILE s3://peers/RUN/data.bin`` with the CLI's defaults."""
    run_dir = b.fresh_dir(label)
    key = f"{run_dir.name}/{path.name}"
    cmd = [
        aws, "--endpoint-url", stage.url, "s3", "cp", "--only-show-errors",
        str(path), f"s3://{PEERS}/{key}",
    ]  # fmt: skip
    m = _peer(stage, run_dir, cmd, stage.aws_env(run_dir))
    size = path.stat().st_size
    _check_peer(stage, "aws s3 cp", label, m, run_dir, key, size)
    return with_also(m, record(m, files=1, bytes=size))
