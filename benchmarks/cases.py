"""The cases: each is a plan (sides, unit, ratio, targets) plus a function that runs it.

Sides are alternated run by run (stagebox, peer, stagebox, peer, ...) so a noisy moment
hits both; the first ``warmups`` rounds are recorded but not counted. A new case is one
``plan_*``/``run_*`` pair and one entry in ``CASES``; a case whose feature is missing (its
``probe`` answers a reason, or it has no ``run`` yet) is listed as "not available".
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from shutil import which
from typing import Any

from benchmarks.ingest import (
    SIZES,
    bag_tar,
    local_boxes,
    moto_boxes,
    needs_ingest,
    stagebox_ingest,
    tar_then_sha256,
)
from benchmarks.servers import SSHD, SftpStage
from benchmarks.sides import (
    Bench,
    Profile,
    Record,
    RunFailed,
    cp_then_sha256,
    on_staging_sshd,
    rclone_copy,
    rsync_tree,
    scp_copy,
    scp_tree,
    sftp_put,
    stagebox_help,
    stagebox_sftp_upload,
    stagebox_upload,
)
from benchmarks.workloads import MiB, big_file, human_size, small_tree


@dataclass(frozen=True)
class Target:
    """``value op threshold``; the value is the median of the per-pair ratios, or (with
    ``side``) the worst counted run's ``field`` divided by ``scale``."""

    label: str
    op: str  # ">=" or "<="
    threshold: float
    unit: str = "x"
    side: str | None = None
    field: str = ""
    scale: float = 1.0


@dataclass
class CaseResult:
    name: str
    title: str
    sides: list[str]
    unit: str = "MB/s"  # what "throughput" means in this case's records
    ratio_of: str | None = None  # "throughput" or "wall_s": stagebox/peer, pair by pair
    targets: list[Target] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"  # ok | failed | not available
    reason: str = ""
    runs: list[Record] = field(default_factory=list)


SideRun = Callable[[str], Record]


@dataclass(frozen=True)
class Case:
    name: str
    plan: Callable[[Profile], CaseResult]
    run: Callable[[Bench, CaseResult], None] | None = None  # None: not written yet
    probe: Callable[[Bench], str | None] = lambda b: None  # why it cannot run here


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:5.1f} MiB"


def alternate(
    b: Bench, result: CaseResult, sides: Sequence[tuple[str, SideRun]], warmups: int, runs: int
) -> None:
    for i in range(warmups + runs):
        counted = i >= warmups
        for side, fn in sides:
            load = os.getloadavg()[0]
            rec = fn(f"{result.name}-{side}-{i}")
            rec["load_1min_before"] = load
            nbytes, files = rec.get("bytes", 0), rec.get("files", 0)
            rate = files if result.unit == "files/s" else nbytes / 1e6
            rec.update(side=side, index=i, warmup=not counted, throughput=rate / rec["wall_s"])
            result.runs.append(rec)
            print(
                f"  {side:>12} {'run ' + str(i - warmups + 1) if counted else 'warm-up':>7}: "
                f"{rec['wall_s']:7.2f} s {rec['throughput']:9.1f} {result.unit:<7} "
                f"cpu {rec['cpu_s']:6.2f} s  peak rss client {rec['client_peak_rss'] / MiB:5.1f}"
                f" MiB, server {_mib(rec['server_peak_rss'])}  load {load:.1f}",
                flush=True,
            )


# -- http 1 GiB: stagebox upload vs scp -------------------------------------------------


def plan_http_big(p: Profile) -> CaseResult:
    return CaseResult(
        name="http-big",
        title=f"http {human_size(p.big_bytes)}: stagebox upload vs scp",
        sides=["stagebox", "scp"],
        ratio_of="throughput",
        targets=[Target("http: stagebox throughput >= 2x scp throughput", ">=", 2.0)],
        params={"file_bytes": p.big_bytes, "warmups": p.warmups, "runs": p.runs},
    )


def run_http_big(b: Bench, result: CaseResult) -> None:
    size = b.profile.big_bytes
    folder = big_file(b.workloads, size, repeat_block=False)
    path = folder / "data.bin"
    sides = [
        ("stagebox", lambda label: stagebox_upload(b, folder, 1, size, label)),
        ("scp", lambda label: scp_copy(b, path, label)),
    ]
    alternate(b, result, sides, b.profile.warmups, b.profile.runs)


# -- small files: stagebox upload vs rsync ----------------------------------------------


def small_params(p: Profile) -> dict[str, Any]:
    """What a small-files case records of its workload and rounds."""
    return {
        "files": p.small_files,
        "folders": p.small_folders,
        "file_bytes": p.small_bytes,
        "warmups": p.warmups,
        "runs": p.runs,
    }


def plan_small_files(p: Profile) -> CaseResult:
    return CaseResult(
        name="small-files",
        title=(
            f"small files: {p.small_files:,} x {human_size(p.small_bytes)} in "
            f"{p.small_folders} folders, stagebox upload vs rsync -a over ssh"
        ),
        sides=["stagebox", "rsync"],
        unit="files/s",
        ratio_of="wall_s",
        targets=[Target("small files: stagebox time <= 3x rsync time", "<=", 3.0)],
        params=small_params(p),
    )


def run_small_files(b: Bench, result: CaseResult) -> None:
    p = b.profile
    tree = small_tree(b.workloads, p.small_files, p.small_folders, p.small_bytes)
    nbytes = p.small_files * p.small_bytes
    sides = [
        ("stagebox", lambda label: stagebox_upload(b, tree, p.small_files, nbytes, label)),
        ("rsync", lambda label: rsync_tree(b, tree, p.small_files, nbytes, label)),
    ]
    alternate(b, result, sides, p.warmups, p.runs)


# -- memory: peak RSS of client and server on a big upload -------------------------------


def plan_memory(p: Profile) -> CaseResult:
    return CaseResult(
        name="memory",
        title=f"memory: stagebox upload of {human_size(p.mem_bytes)}, peak RSS",
        sides=["stagebox"],
        targets=[
            Target(
                "memory: client peak RSS <= 100 MiB",
                "<=",
                100,
                "MiB",
                side="stagebox",
                field="client_peak_rss",
                scale=MiB,
            ),
            Target(
                "memory: server peak RSS <= 150 MiB",
                "<=",
                150,
                "MiB",
                side="stagebox",
                field="server_peak_rss",
                scale=MiB,
            ),
        ],
        params={"file_bytes": p.mem_bytes, "warmups": p.mem_warmups, "runs": p.mem_runs},
    )


def run_memory(b: Bench, result: CaseResult) -> None:
    size = b.profile.mem_bytes
    folder = big_file(b.workloads, size, repeat_block=True)
    sides = [("stagebox", lambda label: stagebox_upload(b, folder, 1, size, label))]
    alternate(b, result, sides, b.profile.mem_warmups, b.profile.mem_runs)


# -- local limit: cp + sha256sum (informational) -----------------------------------------


def plan_local_limit(p: Profile) -> CaseResult:
    return CaseResult(
        name="local-limit",
        title=f"local limit: cp of the {human_size(p.big_bytes)} file, then sha256sum of it",
        sides=["cp+sha256sum"],
        params={"file_bytes": p.big_bytes, "warmups": p.warmups, "runs": p.runs},
    )


def run_local_limit(b: Bench, result: CaseResult) -> None:
    folder = big_file(b.workloads, b.profile.big_bytes, repeat_block=False)
    sides = [("cp+sha256sum", lambda label: cp_then_sha256(b, folder / "data.bin", label))]
    alternate(b, result, sides, b.profile.warmups, b.profile.runs)


# -- sftp: stagebox upload --method sftp vs OpenSSH tools, all to the same staging sshd ----


@contextmanager
def sftp_stage(b: Bench, name: str) -> Iterator[SftpStage]:
    """The case's staging sshd and approved uploader, set up untimed and torn down after."""
    stage = SftpStage(b.work / "sftp" / name)
    print("  setting up: staging sshd, box, register, approve, first contact", flush=True)
    try:
        try:
            stage.start()
        except (RuntimeError, OSError, KeyError, StopIteration, ValueError) as exc:
            raise RunFailed(f"sftp setup failed: {exc}") from exc
        yield stage
    finally:
        stage.stop()


RCLONE = which("rclone") is not None


def _peer(fn: Callable[[str], Record]) -> Callable[[str], Record]:
    return lambda label: on_staging_sshd(fn(label))


def plan_sftp_big(p: Profile) -> CaseResult:
    return CaseResult(
        name="sftp-big",
        title=(
            f"sftp {human_size(p.big_bytes)}: stagebox upload --method sftp vs sftp put, scp, "
            "rsync -a -e ssh, rclone copy, one staging sshd"
        ),
        # rclone is optional (not in make system-deps): its side is left out when missing.
        sides=["stagebox", "sftp put", "scp", "rsync", *(["rclone"] if RCLONE else [])],
        ratio_of="throughput",
        targets=[Target("sftp: stagebox throughput >= 0.9x sftp put throughput", ">=", 0.9)],
        params={"file_bytes": p.big_bytes, "warmups": p.warmups, "runs": p.runs},
    )


def run_sftp_big(b: Bench, result: CaseResult) -> None:
    size = b.profile.big_bytes
    folder = big_file(b.workloads, size, repeat_block=False)
    path = folder / "data.bin"
    with sftp_stage(b, result.name) as stage:
        sshd = stage.sshd
        sides = [
            ("stagebox", lambda label: stagebox_sftp_upload(b, stage, folder, 1, size, label)),
            ("sftp put", _peer(lambda label: sftp_put(b, path, label, sshd))),
            ("scp", _peer(lambda label: scp_copy(b, path, label, sshd))),
            ("rsync", _peer(lambda label: rsync_tree(b, folder, 1, size, label, sshd))),
            ("rclone", _peer(lambda label: rclone_copy(b, folder, 1, size, label, sshd))),
        ]
        sides = [side for side in sides if side[0] in result.sides]
        alternate(b, result, sides, b.profile.warmups, b.profile.runs)


def plan_sftp_small(p: Profile) -> CaseResult:
    return CaseResult(
        name="sftp-small",
        title=(
            f"sftp small files: {p.small_files:,} x {human_size(p.small_bytes)} in "
            f"{p.small_folders} folders, stagebox upload --method sftp vs rsync -a -e ssh, scp -r"
        ),
        sides=["stagebox", "rsync", "scp -r"],
        unit="files/s",
        ratio_of="wall_s",
        targets=[Target("sftp small files: stagebox time <= 2x rsync time", "<=", 2.0)],
        params=small_params(p),
    )


def run_sftp_small(b: Bench, result: CaseResult) -> None:
    p = b.profile
    tree = small_tree(b.workloads, p.small_files, p.small_folders, p.small_bytes)
    n, nbytes = p.small_files, p.small_files * p.small_bytes
    with sftp_stage(b, result.name) as stage:
        sshd = stage.sshd
        sides = [
            ("stagebox", lambda label: stagebox_sftp_upload(b, stage, tree, n, nbytes, label)),
            ("rsync", _peer(lambda label: rsync_tree(b, tree, n, nbytes, label, sshd))),
            ("scp -r", _peer(lambda label: scp_tree(b, tree, n, nbytes, label, sshd))),
        ]
        alternate(b, result, sides, p.warmups, p.runs)


def plan_sftp_memory(p: Profile) -> CaseResult:
    return CaseResult(
        name="sftp-memory",
        title=f"sftp memory: stagebox upload --method sftp of {human_size(p.mem_bytes)}, peak RSS",
        sides=["stagebox"],
        targets=[
            Target(
                "sftp memory: client peak RSS <= 100 MiB",
                "<=",
                100,
                "MiB",
                side="stagebox",
                field="client_peak_rss",
                scale=MiB,
            ),
        ],
        params={"file_bytes": p.mem_bytes, "warmups": p.mem_warmups, "runs": p.sftp_mem_runs},
    )


def run_sftp_memory(b: Bench, result: CaseResult) -> None:
    size = b.profile.mem_bytes
    folder = big_file(b.workloads, size, repeat_block=True)
    with sftp_stage(b, result.name) as stage:
        sides = [("stagebox", lambda label: stagebox_sftp_upload(b, stage, folder, 1, size, label))]
        alternate(b, result, sides, b.profile.mem_warmups, b.profile.sftp_mem_runs)


# -- ingest: stagebox ingest run of a tarred bag vs tar -xf + sha256sum -------------------


def plan_ingest(p: Profile) -> CaseResult:
    sizes = SIZES[p.name]
    big, small, s3 = sizes.big, sizes.small, sizes.s3

    def worker_rss(side: str, where: str) -> Target:
        label = f"ingest: worker peak RSS <= 200 MiB, {where}"
        return Target(label, "<=", 200, "MiB", side=side, field="client_peak_rss", scale=MiB)

    return CaseResult(
        name="ingest",
        title=(
            f"ingest: stagebox ingest run of a tarred BagIt {big.title} on local boxes vs "
            f"tar -xf + sha256sum of every file; the worker's (client's) peak RSS also for a "
            f"{small.title} and on S3 boxes (moto) for a {s3.title}"
        ),
        sides=["stagebox", "tar -xf + sha256sum", "stagebox small", "stagebox s3"],
        ratio_of="wall_s",
        targets=[
            Target("ingest: stagebox time <= 2x tar -xf + sha256sum time", "<=", 2.0),
            Target(
                "ingest: bytes read from receiving <= 1.02x the tar",
                "<=",
                1.02,
                side="stagebox",
                field="read_ratio",
            ),
            worker_rss("stagebox", f"local boxes, {big.title}"),
            worker_rss("stagebox small", f"local boxes, {small.title}"),
            worker_rss("stagebox s3", f"S3 boxes on moto, {s3.title}"),
        ],
        params={
            "bags": {"big": asdict(big), "small": asdict(small), "s3": asdict(s3)},
            "warmups": p.warmups,
            "runs": p.runs,
            "small_and_s3_runs": 1,
            "note": (
                "stagebox small and stagebox s3 run once each, for memory only; on moto the "
                "time is not a target (moto keeps objects in memory and is slow)"
            ),
        },
    )


def run_ingest(b: Bench, result: CaseResult) -> None:
    sizes = SIZES[b.profile.name]
    big = bag_tar(b.workloads, sizes.big)
    sides = [
        ("stagebox", lambda label: stagebox_ingest(b, big, label, local_boxes(big))),
        ("tar -xf + sha256sum", lambda label: tar_then_sha256(b, big, label)),
    ]
    alternate(b, result, sides, b.profile.warmups, b.profile.runs)
    small = bag_tar(b.workloads, sizes.small)
    local = local_boxes(small)
    once = [("stagebox small", lambda label: stagebox_ingest(b, small, label, local))]
    alternate(b, result, once, 0, 1)  # memory only
    s3 = bag_tar(b.workloads, sizes.s3)
    with moto_boxes(b, s3, result.name) as moto:
        once = [("stagebox s3", lambda label: stagebox_ingest(b, s3, label, moto))]
        alternate(b, result, once, 0, 1)  # memory only: moto's speed is not stagebox's


# -- planned cases: listed, not run ------------------------------------------------------


def planned(name: str, title: str, sides: list[str]) -> Callable[[Profile], CaseResult]:
    return lambda p: CaseResult(name=name, title=title, sides=sides)


def needs_feature(word: str) -> Callable[[Bench], str | None]:
    def probe(b: Bench) -> str | None:
        if word.lower() in stagebox_help().lower():
            return None
        return f"stagebox has no {word} support yet (no '{word}' in any `stagebox ... --help`)"

    return probe


def needs_sshd(b: Bench) -> str | None:
    return None if b.sshd is not None else f"no sshd: {b.sshd_error}"


def needs_staging_host(b: Bench) -> str | None:
    """The staging sshd needs root (it adds the staging account) and OpenSSH's sshd."""
    if os.geteuid() != 0:
        return "the staging sshd sets up a staging account and needs root"
    if not SSHD.exists():
        return f"{SSHD} not found (make system-deps installs openssh-server)"
    return needs_feature("sftp")(b)


CASES: list[Case] = [
    Case("http-big", plan_http_big, run_http_big, probe=needs_sshd),
    Case("small-files", plan_small_files, run_small_files, probe=needs_sshd),
    Case("memory", plan_memory, run_memory),
    Case("local-limit", plan_local_limit, run_local_limit),
    Case("sftp-big", plan_sftp_big, run_sftp_big, probe=needs_staging_host),
    Case("sftp-small", plan_sftp_small, run_sftp_small, probe=needs_staging_host),
    Case("sftp-memory", plan_sftp_memory, run_sftp_memory, probe=needs_staging_host),
    Case(
        "s3",
        planned("s3", "s3: stagebox with an S3 box vs rclone copy", ["stagebox", "rclone"]),
        probe=needs_feature("s3"),
    ),
    Case("ingest", plan_ingest, run_ingest, probe=needs_ingest),
    Case(
        "curl-tus",
        planned("curl-tus", "curl-to-tus: a stock tus client (curl) vs stagebox upload", []),
    ),
]


def execute(case: Case, b: Bench) -> CaseResult:
    """Run one case; never raises, the result says what happened."""
    result = case.plan(b.profile)
    reason = case.probe(b) or (None if case.run else "harness case not written yet")
    if reason or case.run is None:
        result.status, result.reason = "not available", reason or ""
        print(f"== {result.title}: not available ({result.reason})", flush=True)
        return result
    print(f"== {result.title}", flush=True)
    try:
        case.run(b, result)
    except RunFailed as exc:
        result.status, result.reason = "failed", str(exc)
    except Exception as exc:  # a harness bug must not lose the other cases' results
        result.status, result.reason = "failed", f"{exc!r}\n{traceback.format_exc()}"
    if result.status == "failed":
        print(f"  FAILED: {result.reason}", flush=True)
    return result
