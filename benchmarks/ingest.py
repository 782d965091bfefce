"""The ingest case's workloads and sides: tarred BagIt bags, ``stagebox ingest run`` on local
or S3 (moto) boxes, and its peer ``tar -xf`` + ``sha256sum`` of every extracted file.

A bag is written straight into its tar (no extracted copy on disk) from a seeded generator,
so the same profile always gives the same bytes: payload files of sizes spread evenly
around a mean (pairwise symmetric, so the total is exact), each a slice of one random block
stamped with its own path, hence incompressible and each with its own sha256.

Every stagebox run gets a fresh data dir and receiving box (the cached tar hardlinked in,
or for S3 uploaded to moto once per case), set up before the clock starts; on local boxes
the data dir is a copy of the one the bag's first run got from ``stagebox admin box add``
(each admin command costs a Python start-up). After the run
its job must say ``succeeded`` at the first attempt, and every file of the bag must be in
``ingest show`` with the sha256 of the bag's manifest; the peer's ``sha256sum`` output is
checked against the same manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from benchmarks.measure import run_measured
from benchmarks.sides import Bench, Record, RunFailed, record
from benchmarks.workloads import GiB, MiB, human_size, is_ready, mark
from stagebox.server.process import stagebox_cmd

MTIME = 1_700_000_000  # every tar entry's, so a bag's tar is the same bytes each time
BLOCK = 8 * MiB  # the random block every payload file is a stamped slice of
TAG_FILES = ("bagit.txt", "bag-info.txt", "manifest-sha256.txt", "tagmanifest-sha256.txt")
MANIFEST = "manifest-sha256.txt"
TIMEOUT = 1800.0


# -- workloads: tarred bags ---------------------------------------------------------------


@dataclass(frozen=True)
class BagSpec:
    """A bag to generate: ``files`` payload files of ``payload_bytes`` in all, each within
    ``spread`` bytes of the mean, in ``folders`` folders under ``data/``."""

    name: str  # the tar's stem and its single top-level directory
    files: int
    payload_bytes: int
    spread: int
    folders: int
    seed: int = 1

    @property
    def title(self) -> str:
        if self.payload_bytes % MiB == 0:
            return f"{human_size(self.payload_bytes)} bag of {self.files:,} files"
        mean = self.payload_bytes // self.files
        low, high = (mean - self.spread) // 1024, (mean + self.spread) // 1024
        return f"bag of {self.files:,} files of {low}-{high} KiB"


@dataclass(frozen=True)
class Bag:
    """A generated bag: its tar and its manifest (``data/...`` path -> sha256)."""

    spec: BagSpec
    tar: Path
    manifest: dict[str, str]

    @property
    def tar_bytes(self) -> int:
        return self.tar.stat().st_size

    @property
    def entries(self) -> int:
        """Regular files in the tar: the payload and the tag files."""
        return self.spec.files + len(TAG_FILES)


def _sizes(spec: BagSpec, rng: random.Random) -> list[int]:
    """Sizes in pairs mean+d, mean-d; the last file takes the remainder."""
    mean = spec.payload_bytes // spec.files
    sizes = []
    for _ in range(spec.files // 2):
        d = rng.randint(0, spec.spread)
        sizes += [mean + d, mean - d]
    if spec.files % 2:
        sizes.append(mean)
    sizes[-1] += spec.payload_bytes - sum(sizes)
    return sizes


def _tar_add(tar: tarfile.TarFile, path: str, data: bytes | None = None) -> None:
    """Add a directory (``data`` None) or a regular file, owned by root, at ``MTIME``."""
    info = tarfile.TarInfo(path)
    info.mtime, info.uname, info.gname = MTIME, "root", "root"
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def _write_bag(spec: BagSpec, path: Path) -> dict[str, str]:
    """Write the bag's tar at ``path`` (tag files first and last, payload between)."""
    rng = random.Random(spec.seed)
    sizes = _sizes(spec, rng)
    block = rng.randbytes(BLOCK)
    width = len(str(spec.files - 1))
    names = [f"data/dir{i % spec.folders:03d}/file{i:0{width}d}.bin" for i in range(spec.files)]
    order = sorted(range(spec.files), key=lambda i: names[i])
    bagit_txt = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
    bag_info = (
        "Source-Organization: stagebox bench\n"
        "Bagging-Date: 2024-01-01\n"
        f"Payload-Oxum: {spec.payload_bytes}.{spec.files}\n"
    ).encode()
    manifest: dict[str, str] = {}
    top = spec.name
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add(tar, top)
        _tar_add(tar, f"{top}/bagit.txt", bagit_txt)
        _tar_add(tar, f"{top}/bag-info.txt", bag_info)
        _tar_add(tar, f"{top}/data")
        folder = ""
        for i in order:
            name, size = names[i], sizes[i]
            if not name.startswith(folder + "/"):
                folder = name.rsplit("/", 1)[0]
                _tar_add(tar, f"{top}/{folder}")
            stamp = f"{name}\n".encode()
            start = (i * 1_048_583) % (BLOCK - size)  # a prime stride: slices start apart
            data = (stamp + block[start : start + size])[:size]
            manifest[name] = hashlib.sha256(data).hexdigest()
            _tar_add(tar, f"{top}/{name}", data)
        manifest_txt = "".join(f"{manifest[n]}  {n}\n" for n in sorted(manifest)).encode()
        tags = {"bagit.txt": bagit_txt, "bag-info.txt": bag_info, MANIFEST: manifest_txt}
        tagmanifest = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in tags.items())
        _tar_add(tar, f"{top}/{MANIFEST}", manifest_txt)
        _tar_add(tar, f"{top}/tagmanifest-sha256.txt", tagmanifest.encode())
    return manifest


def bag_tar(root: Path, spec: BagSpec) -> Bag:
    """The bag of ``spec`` as ``<name>.tar``, generated once under ``root`` and reused."""
    folder = root / f"bag-{spec.name}-{human_size(spec.payload_bytes)}-{spec.files}files"
    tar, manifest = folder / f"{spec.name}.tar", folder / MANIFEST
    marker: dict[str, object] = {**asdict(spec), "format": 1}
    if not (is_ready(folder, marker) and tar.exists() and manifest.exists()):
        print(f"  generating {tar} ({spec.title})", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        tmp = folder / (tar.name + ".tmp")
        digests = _write_bag(spec, tmp)
        manifest.write_text("".join(f"{digests[n]}  {n}\n" for n in sorted(digests)))
        os.replace(tmp, tar)
        mark(folder, marker)
    lines = (line.split("  ", 1) for line in manifest.read_text().splitlines())
    return Bag(spec, tar, {path: digest for digest, path in lines})


@dataclass(frozen=True)
class IngestSizes:
    """The bags one profile uses (the big bag for time, bytes read and memory)."""

    big: BagSpec
    small: BagSpec
    s3: BagSpec


def _small(files: int, folders: int) -> BagSpec:
    return BagSpec("smallbag", files, files * 2560, 1536, folders)  # 1 KiB to 4 KiB each


SIZES = {
    "quick": IngestSizes(
        big=BagSpec("bigbag", 64, 64 * MiB, 512 * 1024, 8),
        small=_small(1_000, 20),
        s3=BagSpec("bigbag", 16, 16 * MiB, 512 * 1024, 4),
    ),
    # moto keeps every object in its own memory and is slow; 1 GiB is enough to show
    # whether the worker's memory grows with the bag.
    "full": IngestSizes(
        big=BagSpec("bigbag", 2_000, 2 * GiB, 512 * 1024, 20),
        small=_small(50_000, 100),
        s3=BagSpec("bigbag", 1_000, 1 * GiB, 512 * 1024, 20),
    ),
}


# -- sides ---------------------------------------------------------------------------------


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


def needs_ingest(b: Bench) -> str | None:
    """Why the case cannot run here: no ``stagebox ingest`` yet."""
    out = subprocess.run(
        stagebox_cmd("ingest", "run", "--help"), capture_output=True, text=True, timeout=60
    )
    if out.returncode == 0:
        return None
    lines = [line.strip("│╭╮╰╯─ ") for line in out.stderr.splitlines()]
    why = [line for line in lines if line and line != "Error"][-1:]
    return f"`stagebox ingest run --help` exit {out.returncode}: {' '.join(why)}"


def tar_then_sha256(b: Bench, bag: Bag, label: str) -> Record:
    """The peer: ``tar -xf`` into an empty folder, then ``sha256sum`` of every file
    extracted (``find -exec sha256sum {} +``); two timed commands, one side."""
    run_dir = b.fresh_dir(label)
    out = run_dir / "out"
    out.mkdir()
    os.sync()
    tar = run_measured(
        ["tar", "-xf", str(bag.tar), "-C", str(out)],
        stdout=run_dir / "tar.out",
        stderr=run_dir / "tar.err",
        timeout=TIMEOUT,
    )
    sha = run_measured(
        ["find", str(out), "-type", "f", "-exec", "sha256sum", "{}", "+"],
        stdout=run_dir / "sha.out",
        stderr=run_dir / "sha.err",
        timeout=TIMEOUT,
    )
    top = f"{out}/{bag.spec.name}/"
    lines = (run_dir / "sha.out").read_text().splitlines()
    digests = {path.removeprefix(top): h for h, path in (x.split("  ", 1) for x in lines)}
    payload = {k: v for k, v in digests.items() if k.startswith("data/")}
    if tar.exit_code or sha.exit_code or len(digests) != bag.entries or payload != bag.manifest:
        raise RunFailed(
            f"tar -xf + sha256sum ({label}) exit {tar.exit_code}/{sha.exit_code}, "
            f"{len(digests)} files hashed of {bag.entries}, payload digests "
            f"{'match' if payload == bag.manifest else 'differ from'} the manifest:\n"
            f"{_tail((run_dir / 'tar.err').read_text())}{_tail((run_dir / 'sha.err').read_text())}"
        )
    shutil.rmtree(run_dir)
    both = tar.then(sha)
    return record(
        both,
        files=bag.spec.files,
        bytes=bag.tar_bytes,
        tar_s=tar.wall_s,
        sha256_s=sha.wall_s,
        workload=bag.spec.title,
    )


@dataclass(frozen=True)
class Boxes:
    """A run's boxes: ``admin box add`` arguments, ``ingest run`` options, environment."""

    add: list[list[str]]
    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    server: psutil.Process | None = None  # an S3 server, measured beside the worker
    template: str | None = None  # runs with the same boxes copy the first run's data dir


def local_boxes(b: Bench, bag: Bag) -> Callable[[Path], Boxes]:
    """A receiving directory holding only the tar (hardlinked, else copied), the same path
    for every run of the bag so their data dirs can be copies of one; staging and permanent
    are the data dir's embedded boxes."""
    receiving = b.work / "runs" / "_receiving" / bag.tar.parent.name

    def setup(run_dir: Path) -> Boxes:
        shutil.rmtree(receiving, ignore_errors=True)
        receiving.mkdir(parents=True)
        try:
            os.link(bag.tar, receiving / bag.tar.name)
        except OSError:
            shutil.copyfile(bag.tar, receiving / bag.tar.name)
        box = ["recv", "--role", "receiving", "--backend", "local", "--path", str(receiving)]
        return Boxes(add=[box], options=["--receiving", "recv"], template=receiving.name)

    return setup


@contextlib.contextmanager
def moto_boxes(b: Bench, bag: Bag, name: str) -> Iterator[Callable[[Path], Boxes]]:
    """A moto server for the case with the tar uploaded to its receiving bucket; each run's
    staging and permanent boxes are buckets of their own."""
    from botocore.exceptions import BotoCoreError, ClientError
    from tests.s3 import CREDENTIALS

    from benchmarks.s3 import moto_for_case

    print(f"  setting up: moto server, {bag.tar.name} uploaded to it", flush=True)
    with moto_for_case(b, name) as (moto, client):
        assert moto.proc is not None
        server = psutil.Process(moto.proc.pid)
        region = CREDENTIALS["AWS_DEFAULT_REGION"]
        try:
            client.create_bucket(Bucket="receiving")
            client.upload_file(str(bag.tar), "receiving", bag.tar.name)
        except (BotoCoreError, ClientError) as exc:
            raise RunFailed(f"uploading {bag.tar.name} to moto failed: {exc}") from exc
        runs = itertools.count()

        def setup(run_dir: Path) -> Boxes:
            i = next(runs)
            s3 = ["--backend", "s3", "--endpoint-url", moto.url, "--region", region]
            client.create_bucket(Bucket=f"staging-{i}")
            client.create_bucket(Bucket=f"store-{i}")
            return Boxes(
                add=[
                    ["s3recv", "--role", "receiving", *s3, "--bucket", "receiving"],
                    ["s3staging", "--role", "staging", *s3, "--bucket", f"staging-{i}"],
                    ["s3store", "--role", "permanent", *s3, "--bucket", f"store-{i}"],
                ],
                options=["--receiving", "s3recv", "--staging", "s3staging"]
                + ["--permanent", "s3store"],
                env=dict(CREDENTIALS),
                server=server,
            )

        yield setup


def _stagebox_json(data_dir: Path, env: dict[str, str], *args: str) -> object:
    cmd = stagebox_cmd("ingest", "--data-dir", str(data_dir), *args, "--json")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RunFailed(f"{' '.join(cmd[2:])} exit {out.returncode}:\n{_tail(out.stderr)}")
    return json.loads(out.stdout)


def _jobs_brief(data_dir: Path, env: dict[str, str]) -> object:
    """What ``ingest list`` says of each job, for a failure message (never raises)."""
    try:
        jobs = _stagebox_json(data_dir, env, "list")
    except (RunFailed, ValueError, OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    if not isinstance(jobs, list):
        return jobs
    keys = ("id", "bag", "stage", "status", "attempts", "errors")
    return [{k: j.get(k) for k in keys} for j in jobs if isinstance(j, dict)]


def _check_job(bag: Bag, label: str, data_dir: Path, env: dict[str, str]) -> dict[str, object]:
    """The run's job (job 1: a fresh data dir, one tar): succeeded at the first attempt,
    every file with its sha256. One ``ingest show`` (a Python start-up each) says it all."""
    job = _stagebox_json(data_dir, env, "show", "1")
    assert isinstance(job, dict)
    if job["status"] != "succeeded" or job["attempts"] != 1:
        raise RunFailed(
            f"stagebox ingest ({label}): jobs {_jobs_brief(data_dir, env)}, "
            "expected one, succeeded at its first attempt"
        )
    files = {f["path"]: f for f in job["files"]}
    payload = {p: f["sha256"] for p, f in files.items() if p.startswith("data/")}
    states = sorted({f["state"] for f in files.values()})
    if len(files) != bag.entries or payload != bag.manifest or states != ["stored"]:
        raise RunFailed(
            f"stagebox ingest ({label}): {len(files)} files of {bag.entries}, states {states}, "
            f"payload sha256 {'match' if payload == bag.manifest else 'differ from'} the manifest"
        )
    return dict(job)


def _add_boxes(b: Bench, setup: Boxes, data_dir: Path, env: dict[str, str]) -> None:
    """A fresh data dir with the run's boxes: ``stagebox admin box add`` each (a Python
    start-up each), or a copy of the data dir an earlier run with the same boxes made."""
    if setup.template in b.templates:
        shutil.copytree(b.templates[setup.template][0], data_dir)
        return
    target = data_dir
    if setup.template is not None:
        target = b.work / "runs" / "_templates" / setup.template / "data"
        shutil.rmtree(target.parent, ignore_errors=True)
    for box in [("init",)] + [("box", "add", *box) for box in setup.add]:
        cmd = stagebox_cmd("admin", "--data-dir", str(target), *box)
        added = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if added.returncode != 0:
            raise RunFailed(f"{' '.join(cmd[2:])} exit {added.returncode}:\n{_tail(added.stderr)}")
    if setup.template is not None:
        b.templates[setup.template] = (target, "")
        shutil.copytree(target, data_dir)


def stagebox_ingest(b: Bench, bag: Bag, label: str, boxes: Callable[[Path], Boxes]) -> Record:
    """``stagebox ingest run --once --workers 1 --profile none`` on a fresh data dir whose
    receiving box holds only ``bag``; the worker is the measured client."""
    run_dir = b.fresh_dir(label.replace(" ", "_"))  # a box's path may not hold spaces
    data_dir = run_dir / "data"
    setup = boxes(run_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STAGEBOX_", "AWS_"))}
    # A failed attempt ends the run at once rather than after a backoff.
    env.update(setup.env, STAGEBOX_INGEST_RETRIES="0")
    _add_boxes(b, setup, data_dir, env)
    cmd = stagebox_cmd(
        "ingest", "--data-dir", str(data_dir), "run", *setup.options,
        "--once", "--workers", "1", "--profile", "none",
    )  # fmt: skip
    os.sync()
    out, err = run_dir / "ingest.out", run_dir / "ingest.err"
    m = run_measured(cmd, stdout=out, stderr=err, env=env, server=setup.server, timeout=TIMEOUT)
    if m.exit_code != 0:
        raise RunFailed(
            f"stagebox ingest run ({label}) exit {m.exit_code}, jobs "
            f"{_jobs_brief(data_dir, env)}:\n{_tail(err.read_text())}"
        )
    job = _check_job(bag, label, data_dir, env)
    shutil.rmtree(run_dir)
    read = job["bytes_read"]
    assert isinstance(read, int)
    return record(
        m,
        files=bag.spec.files,
        bytes=bag.tar_bytes,
        bytes_read=read,
        read_ratio=read / bag.tar_bytes,
        bytes_staged=job["bytes_staged"],
        workload=bag.spec.title,
    )
