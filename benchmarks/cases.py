"""The cases: each is a plan (sides, unit, ratio, targets) plus a function that runs it.

Sides are alternated run by run (stagebox, peer, stagebox, peer, ...) so a noisy moment
hits both; the first ``warmups`` rounds are recorded but not counted. A new case is one
``plan_*``/``run_*`` pair and one entry in ``CASES``; a case whose feature is missing (its
``probe`` answers a reason, or it has no ``run`` yet) is listed as "not available". A
side that cannot run here (its tool missing), and in the quick profile every peer but the
first, is left out with a note in the case's ``notes`` saying so.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from shutil import which
from typing import Any

from benchmarks.fixity import (
    AUDIT_ENV,
    atime_reason,
    audit_store,
    digests_of,
    object_set,
    openssl_dgst,
    rerun_stage,
    rsync_filled,
    rsync_noop,
    stagebox_rerun,
    stagebox_upload_audited,
    stagebox_verify,
    verify_stage,
)
from benchmarks.ingest import (
    SIZES,
    bag_tar,
    local_boxes,
    moto_boxes,
    needs_ingest,
    stagebox_ingest,
    tar_then_sha256,
)
from benchmarks.s3 import (
    aws_s3_cp,
    moto_reason,
    rclone_s3,
    real_command,
    s3_stage,
    stagebox_s3_upload,
)
from benchmarks.servers import SSHD, SftpdStage, SftpStage
from benchmarks.sides import (
    Bench,
    Profile,
    Record,
    RunFailed,
    cp_then_sha256,
    in_stagebox_help,
    on_staging_sshd,
    rclone_copy,
    rsync_tree,
    scp_copy,
    scp_tree,
    sftp_put,
    stagebox_sftp_upload,
    stagebox_sftp_uploads_at_once,
    stagebox_upload,
)
from benchmarks.tus import TusNodeServer, curl_to_stagebox, curl_to_tus_node, tus_node_reason
from benchmarks.workloads import (
    GiB,
    MiB,
    big_file,
    human_size,
    linked_copies,
    sha256_of,
    small_tree,
)


@dataclass(frozen=True)
class Target:
    """``value op threshold``; the value is the median of the per-pair ratios (of ``pair``,
    by default the case's first pair), or (with ``side``) the worst counted run's ``field``
    divided by ``scale``."""

    label: str
    op: str  # ">=" or "<="
    threshold: float
    unit: str = "x"
    side: str | None = None
    field: str = ""
    scale: float = 1.0
    pair: tuple[str, str] | None = None  # (ours, peer) of a ratio target; default the first


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
    notes: list[str] = field(default_factory=list)  # e.g. a peer left out, and why
    duration_s: float = 0.0  # the whole case: set-up, workloads, runs, checks
    runs: list[Record] = field(default_factory=list)
    # (ours, peer) sides whose ratios are reported; empty: the first side against each other
    pairs: list[tuple[str, str]] = field(default_factory=list)


SideRun = Callable[[str], Record]


@dataclass(frozen=True)
class Case:
    name: str
    plan: Callable[[Profile], CaseResult]
    run: Callable[[Bench, CaseResult], None] | None = None  # None: not written yet
    probe: Callable[[Bench], str | None] = lambda b: None  # why it cannot run here


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:5.1f} MiB"


def peers(p: Profile, first: str, others: list[str], notes: list[str]) -> list[str]:
    """The case's first peer (the one its target names) and, unless the profile runs only
    that one (quick), the others; what is left out is said in ``notes``."""
    if p.all_peers or not others:
        return [first, *others]
    notes.append(f"{', '.join(others)} left out in the {p.name} profile (--full runs them)")
    return [first]


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


# -- http 1 GiB: stagebox upload vs scp, and vs curl (tus) to stagebox and to @tus/server ---


TUS_SIDES = ["curl to stagebox", "curl to @tus/server"]


def plan_http_big(p: Profile) -> CaseResult:
    return CaseResult(
        name="http-big",
        title=(
            f"http {human_size(p.big_bytes)}: stagebox upload vs scp, and vs curl as a stock tus "
            "client (POST + one PATCH) to stagebox's /files/ and to @tus/server (Node, FileStore)"
        ),
        sides=["stagebox", "scp", *TUS_SIDES],
        ratio_of="throughput",
        targets=[Target("http: stagebox throughput >= 2x scp throughput", ">=", 2.0)],
        params={"file_bytes": p.big_bytes, "warmups": p.warmups, "runs": p.runs},
    )


def node_dir(b: Bench) -> Path:
    return b.work / "node"


@contextmanager
def tus_node(b: Bench, result: CaseResult) -> Iterator[TusNodeServer | None]:
    """@tus/server for the case (None, with a note and its side left out, where it cannot
    be installed or started); stopped on leaving."""
    if "curl to @tus/server" not in result.sides:  # no curl
        yield None
        return
    reason = tus_node_reason(node_dir(b))
    node = None if reason else TusNodeServer(node_dir(b), b.fresh_dir(f"{result.name}-node"))
    if node is not None:
        print("  setting up: @tus/server (node)", flush=True)
        try:
            node.start()
        except (RuntimeError, OSError) as exc:
            node, reason = None, f"@tus/server did not start: {exc}"
    if node is None:
        result.sides.remove("curl to @tus/server")
        result.notes.append(f"curl to @tus/server side not available: {reason}")
        print(f"  note: {result.notes[-1]}", flush=True)
    try:
        yield node
    finally:
        if node is not None:
            node.stop()


def run_http_big(b: Bench, result: CaseResult) -> None:
    size = b.profile.big_bytes
    folder = big_file(b.workloads, size, repeat_block=False)
    path = folder / "data.bin"
    digest = sha256_of(path)  # what curl's upload must be stored with
    if which("curl") is None:
        result.sides = result.sides[:2]
        result.notes.append("curl sides not available: curl not found (make system-deps)")
    with tus_node(b, result) as node:
        sides = [
            ("stagebox", lambda label: stagebox_upload(b, folder, 1, size, label)),
            ("scp", lambda label: scp_copy(b, path, label)),
            ("curl to stagebox", lambda label: curl_to_stagebox(b, path, label, digest)),
        ]
        if node is not None:
            sides.append(
                ("curl to @tus/server", lambda label: curl_to_tus_node(b, path, label, node))
            )
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


def sftp_stage(b: Bench) -> SftpStage:
    """The staging sshd and approved uploader the sftp cases share, set up (untimed) by
    the first of them and stopped by ``Bench.close`` when the harness ends: the set-up
    (sshd, box, register, approve, first contact) takes ~12 s, and every run starts from
    its snapshot anyway."""
    if b.sftp is not None:
        return b.sftp
    if b.sftp_error is not None:
        raise RunFailed(b.sftp_error)
    stage = SftpStage(b.work / "sftp" / "stage")
    print("  setting up: staging sshd, box, register, approve, first contact", flush=True)
    b.closers.append(stage.stop)
    try:
        stage.start()
    except (RuntimeError, OSError, KeyError, StopIteration, ValueError) as exc:
        b.sftp_error = f"sftp setup failed: {exc}"
        raise RunFailed(b.sftp_error) from exc
    b.sftp = stage
    return stage


RCLONE = which("rclone") is not None
TOOLS = {"rsync": "rsync -a -e ssh", "rclone": "rclone copy"}  # side -> what its title says
NO_RCLONE = "rclone side not available: rclone not found (make bench-deps installs it)"


def _peer(fn: Callable[[str], Record]) -> Callable[[str], Record]:
    return lambda label: on_staging_sshd(fn(label))


def plan_sftp_big(p: Profile) -> CaseResult:
    # rclone is optional (make bench-deps installs it): its side is left out when missing.
    notes = [] if RCLONE else [NO_RCLONE]
    others = ["scp", "rsync", *(["rclone"] if RCLONE else [])]
    sides = ["stagebox", *peers(p, "sftp put", others, notes)]
    return CaseResult(
        name="sftp-big",
        title=(
            f"sftp {human_size(p.big_bytes)}: stagebox upload --method sftp vs "
            f"{', '.join(TOOLS.get(s, s) for s in sides[1:])}, one staging sshd"
        ),
        sides=sides,
        ratio_of="throughput",
        targets=[Target("sftp: stagebox throughput >= 0.9x sftp put throughput", ">=", 0.9)],
        params={"file_bytes": p.big_bytes, "warmups": p.warmups, "runs": p.runs},
        notes=notes,
    )


def run_sftp_big(b: Bench, result: CaseResult) -> None:
    size = b.profile.big_bytes
    folder = big_file(b.workloads, size, repeat_block=False)
    path = folder / "data.bin"
    stage = sftp_stage(b)
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
    notes: list[str] = []
    sides = ["stagebox", *peers(p, "rsync", ["scp -r"], notes)]
    return CaseResult(
        name="sftp-small",
        title=(
            f"sftp small files: {p.small_files:,} x {human_size(p.small_bytes)} in "
            f"{p.small_folders} folders, stagebox upload --method sftp vs "
            f"{', '.join(TOOLS.get(s, s) for s in sides[1:])}"
        ),
        sides=sides,
        unit="files/s",
        ratio_of="wall_s",
        targets=[Target("sftp small files: stagebox time <= 2x rsync time", "<=", 2.0)],
        params=small_params(p),
        notes=notes,
    )


def run_sftp_small(b: Bench, result: CaseResult) -> None:
    p = b.profile
    tree = small_tree(b.workloads, p.small_files, p.small_folders, p.small_bytes)
    n, nbytes = p.small_files, p.small_files * p.small_bytes
    stage = sftp_stage(b)
    sshd = stage.sshd
    sides = [
        ("stagebox", lambda label: stagebox_sftp_upload(b, stage, tree, n, nbytes, label)),
        ("rsync", _peer(lambda label: rsync_tree(b, tree, n, nbytes, label, sshd))),
        ("scp -r", _peer(lambda label: scp_tree(b, tree, n, nbytes, label, sshd))),
    ]
    sides = [side for side in sides if side[0] in result.sides]
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
    stage = sftp_stage(b)
    sides = [("stagebox", lambda label: stagebox_sftp_upload(b, stage, folder, 1, size, label))]
    alternate(b, result, sides, b.profile.mem_warmups, b.profile.sftp_mem_runs)


# -- sftpd: stagebox upload --method sftp to its built-in endpoint vs OpenSSH into sshd ----

AES128_GCM = "aes128-gcm@openssh.com"  # what stagebox's asyncssh client prefers
SFTP_PUT_GCM = "sftp put -c aes128-gcm"  # the target's peer
SFTP_PUT_DEFAULT = "sftp put"  # OpenSSH's default cipher (see the negotiated one)
SFTPD_CLIENTS = 5  # sftpd-memory: uploads in flight at once, one uploader each


def _where(path: Path, reason: str | None, what: str) -> str:
    if reason is None:
        return f"{what} on tmpfs ({path})"
    return f"{what} on the work dir's disk ({path}), not tmpfs: {reason}"


def sftpd_stage(b: Bench, result: CaseResult) -> SftpdStage:
    """The built-in endpoint and approved uploader sftpd-big and sftpd-small share, on
    tmpfs (room for one stored big file and a failed run's), set up (untimed) by the first
    of them and stopped by ``Bench.close``; every run starts from its snapshot anyway."""
    if b.sftpd is None:
        if b.sftpd_error is not None:
            raise RunFailed(b.sftpd_error)
        root, reason = b.scratch("sftpd-stage", 2 * b.profile.big_bytes)
        stage = SftpdStage(root)
        stage.where = _where(root, reason, "the staging box and the store")
        print("  setting up: stagebox serve --sftp-port, box, register, approve", flush=True)
        b.closers.append(stage.stop)
        try:
            stage.start()
        except (RuntimeError, OSError, KeyError, StopIteration, ValueError) as exc:
            b.sftpd_error = f"sftpd setup failed: {exc}"
            raise RunFailed(b.sftpd_error) from exc
        b.sftpd = stage
    result.notes.append(b.sftpd.where)
    print(f"  note: {result.notes[-1]}", flush=True)
    return b.sftpd


@contextmanager
def peer_dest(b: Bench, result: CaseResult, need: int) -> Iterator[Path]:
    """Where the case's peers write (on tmpfs if it has room for ``need`` bytes), removed
    when the case ends."""
    root, reason = b.scratch(f"{result.name}-peers", need)
    result.notes.append(_where(root, reason, "the peers' destination folders"))
    print(f"  note: {result.notes[-1]}", flush=True)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def plan_sftpd_big(p: Profile) -> CaseResult:
    notes: list[str] = []
    sides = ["stagebox", *peers(p, SFTP_PUT_GCM, [SFTP_PUT_DEFAULT], notes)]
    default = ", and sftp put with its default cipher" if SFTP_PUT_DEFAULT in sides else ""
    return CaseResult(
        name="sftpd-big",
        title=(
            f"sftpd {human_size(p.big_bytes)}: stagebox upload --method sftp to its built-in "
            f"endpoint (stagebox serve --sftp-port) vs OpenSSH sftp put -c {AES128_GCM}"
            f"{default} into sshd; destinations on tmpfs"
        ),
        sides=sides,
        ratio_of="throughput",
        targets=[
            Target(
                "sftpd: stagebox throughput >= 1.0x sftp put -c aes128-gcm throughput", ">=", 1.0
            )
        ],
        params={
            "file_bytes": p.big_bytes,
            "warmups": p.warmups,
            "runs": p.runs,
            "ciphers": {SFTP_PUT_GCM: AES128_GCM, SFTP_PUT_DEFAULT: "OpenSSH's default"},
        },
        notes=notes,
    )


def run_sftpd_big(b: Bench, result: CaseResult) -> None:
    size = b.profile.big_bytes
    folder = big_file(b.workloads, size, repeat_block=False)
    path = folder / "data.bin"
    sshd = b.need_sshd()
    stage = sftpd_stage(b, result)
    with peer_dest(b, result, size) as dest:
        sides = [
            ("stagebox", lambda label: stagebox_sftp_upload(b, stage, folder, 1, size, label)),
            (SFTP_PUT_GCM, lambda label: sftp_put(b, path, label, sshd, AES128_GCM, dest)),
            (SFTP_PUT_DEFAULT, lambda label: sftp_put(b, path, label, sshd, None, dest)),
        ]
        sides = [side for side in sides if side[0] in result.sides]
        alternate(b, result, sides, b.profile.warmups, b.profile.runs)


def plan_sftpd_small(p: Profile) -> CaseResult:
    return CaseResult(
        name="sftpd-small",
        title=(
            f"sftpd small files: {p.small_files:,} x {human_size(p.small_bytes)} in "
            f"{p.small_folders} folders, stagebox upload --method sftp to its built-in "
            "endpoint vs rsync -a -e ssh into sshd; destinations on tmpfs"
        ),
        sides=["stagebox", "rsync"],
        unit="files/s",
        ratio_of="wall_s",
        targets=[Target("sftpd small files: stagebox time <= 1.5x rsync time", "<=", 1.5)],
        params=small_params(p),
    )


def run_sftpd_small(b: Bench, result: CaseResult) -> None:
    p = b.profile
    tree = small_tree(b.workloads, p.small_files, p.small_folders, p.small_bytes)
    n, nbytes = p.small_files, p.small_files * p.small_bytes
    sshd = b.need_sshd()
    stage = sftpd_stage(b, result)
    with peer_dest(b, result, 2 * nbytes) as dest:  # 4 KiB files: a block each, and inodes
        sides = [
            ("stagebox", lambda label: stagebox_sftp_upload(b, stage, tree, n, nbytes, label)),
            ("rsync", lambda label: rsync_tree(b, tree, n, nbytes, label, sshd, dest)),
        ]
        alternate(b, result, sides, p.warmups, p.runs)


def plan_sftpd_memory(p: Profile) -> CaseResult:
    n, size = SFTPD_CLIENTS, human_size(p.mem_bytes)
    return CaseResult(
        name="sftpd-memory",
        title=(
            f"sftpd memory: {n} stagebox upload --method sftp of {size} each at once ({n} "
            "uploaders) to the built-in endpoint, peak RSS of the endpoint (stagebox serve "
            "--sftp-port) and of each client"
        ),
        sides=["stagebox"],
        targets=[
            Target(
                "sftpd memory: endpoint (stagebox serve --sftp-port) peak RSS <= 150 MiB",
                "<=",
                150,
                "MiB",
                side="stagebox",
                field="server_peak_rss",
                scale=MiB,
            ),
            Target(
                f"sftpd memory: each client's peak RSS <= 100 MiB, {n} at once",
                "<=",
                100,
                "MiB",
                side="stagebox",
                field="client_peak_rss",
                scale=MiB,
            ),
        ],
        params={
            "file_bytes": p.mem_bytes,
            "clients": n,
            "warmups": p.mem_warmups,
            "runs": p.sftpd_mem_runs,
            "note": (
                "one file hard-linked into a dataset folder per client; client peak RSS is "
                "the largest of the clients' (each in client_peak_rss_each); wall time runs "
                "from the first spawn to the last exit"
            ),
        },
    )


def run_sftpd_memory(b: Bench, result: CaseResult) -> None:
    p, n = b.profile, SFTPD_CLIENTS
    folder = big_file(b.workloads, p.mem_bytes, repeat_block=True)
    srcs = linked_copies(folder, n)
    need = n * p.mem_bytes  # staged, then renamed into the store: once each
    root, reason = b.scratch(result.name, need + 256 * MiB)
    result.notes.append(_where(root, reason, "the staging box and the store"))
    print(f"  note: {result.notes[-1]}", flush=True)
    stage = SftpdStage(root / "stage", uploaders=n)
    try:
        free = shutil.disk_usage(root).free
        if free < need + GiB:
            raise RunFailed(f"{root}: {free / GiB:.1f} GiB free, {n} uploads need {need / GiB:.1f}")
        print(f"  setting up: stagebox serve --sftp-port, box, {n} uploaders", flush=True)
        try:
            stage.start()
        except (RuntimeError, OSError, KeyError, StopIteration, ValueError) as exc:
            raise RunFailed(f"sftpd setup failed: {exc}") from exc
        sides = [
            (
                "stagebox",
                lambda label: stagebox_sftp_uploads_at_once(b, stage, srcs, p.mem_bytes, label),
            )
        ]
        alternate(b, result, sides, p.mem_warmups, p.sftpd_mem_runs)
    finally:
        stage.stop()
        shutil.rmtree(root, ignore_errors=True)


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
        ("stagebox", lambda label: stagebox_ingest(b, big, label, local_boxes(b, big))),
        ("tar -xf + sha256sum", lambda label: tar_then_sha256(b, big, label)),
    ]
    alternate(b, result, sides, b.profile.warmups, b.profile.runs)
    small = bag_tar(b.workloads, sizes.small)
    local = local_boxes(b, small)
    once = [("stagebox small", lambda label: stagebox_ingest(b, small, label, local))]
    alternate(b, result, once, 0, 1)  # memory only
    s3 = bag_tar(b.workloads, sizes.s3)
    with moto_boxes(b, s3, result.name) as moto:
        once = [("stagebox s3", lambda label: stagebox_ingest(b, s3, label, moto))]
        alternate(b, result, once, 0, 1)  # memory only: moto's speed is not stagebox's


# -- s3: stagebox upload into an S3 staging box vs rclone / aws s3 cp, one moto server ------


AWS = real_command("aws")


def plan_s3(p: Profile) -> CaseResult:
    found = [*(["rclone"] if RCLONE else []), *(["aws s3 cp"] if AWS else [])]
    notes = [] if RCLONE else [NO_RCLONE]
    if AWS is None:
        notes.append("aws s3 cp side not available: no aws CLI on PATH (optional)")
    sides = ["stagebox", *(peers(p, found[0], found[1:], notes) if found else [])]
    return CaseResult(
        name="s3",
        title=(
            f"s3 {human_size(p.big_bytes)}: stagebox upload into an S3 staging box vs "
            f"{', '.join(TOOLS.get(s, s) for s in sides[1:]) or 'no peer'}, one moto server"
        ),
        sides=sides,
        ratio_of="wall_s",
        params={"file_bytes": p.big_bytes, "warmups": p.warmups, "runs": p.runs},
        notes=notes,
    )


def needs_s3(b: Bench) -> str | None:
    if not (RCLONE or AWS):
        return "no peer: neither rclone nor the aws CLI found (make bench-deps installs rclone)"
    return moto_reason()


def run_s3(b: Bench, result: CaseResult) -> None:
    size = b.profile.big_bytes
    folder = big_file(b.workloads, size, repeat_block=False)
    path = folder / "data.bin"
    with s3_stage(b, result.name) as stage:
        sides = [
            ("stagebox", lambda label: stagebox_s3_upload(b, stage, folder, size, label)),
            ("rclone", lambda label: rclone_s3(b, stage, folder, size, label)),
            ("aws s3 cp", lambda label: aws_s3_cp(b, stage, path, label, AWS or "aws")),
        ]
        sides = [side for side in sides if side[0] in result.sides]
        alternate(b, result, sides, b.profile.warmups, b.profile.runs)


# -- rerun: stagebox upload over an unchanged, uploaded tree vs a no-op rsync ------------


def plan_rerun(p: Profile) -> CaseResult:
    return CaseResult(
        name="rerun",
        title=(
            f"rerun: stagebox upload of an unchanged tree it already uploaded ({p.small_files:,}"
            f" x {human_size(p.small_bytes)} in {p.small_folders} folders; same server and "
            "journal) vs a no-op rsync -a -e ssh into a destination already holding the tree"
        ),
        sides=["stagebox", "rsync"],
        unit="files/s",
        ratio_of="wall_s",
        targets=[
            Target("rerun: stagebox time <= 2x the time of a no-op rsync", "<=", 2.0),
            Target(
                "rerun: files whose data the client read (their atime moved) = 0",
                "<=",
                0,
                "files",
                side="stagebox",
                field="files_read",
            ),
            Target(
                "rerun: client read_bytes (/proc/<pid>/io) <= 1 MiB",
                "<=",
                1,
                "MiB",
                side="stagebox",
                field="read_bytes",
                scale=MiB,
            ),
        ],
        params=small_params(p),
    )


def run_rerun(b: Bench, result: CaseResult) -> None:
    p = b.profile
    tree = small_tree(b.workloads, p.small_files, p.small_folders, p.small_bytes)
    n, nbytes = p.small_files, p.small_files * p.small_bytes
    reason = atime_reason(tree.parent)
    if reason:
        raise RunFailed(f"cannot tell which files a side read: {reason}")
    dest = rsync_filled(b, tree, n, nbytes)
    with rerun_stage(b, tree, n) as stage:
        result.params["baseline_rchar"] = stage.baseline_rchar
        sides = [
            ("stagebox", lambda label: stagebox_rerun(b, stage, tree, n, nbytes, label)),
            ("rsync", lambda label: rsync_noop(b, tree, dest, n, nbytes, label)),
        ]
        alternate(b, result, sides, p.warmups, p.runs)


# -- verify: stagebox verify vs openssl dgst -sha256 over the same files -----------------

VERIFY_SIDES = ["stagebox small", "openssl small", "stagebox big", "openssl big"]
VERIFY_PAIRS = [("stagebox small", "openssl small"), ("stagebox big", "openssl big")]


def plan_verify(p: Profile) -> CaseResult:
    small = f"{p.small_files:,} x {human_size(p.small_bytes)}"
    return CaseResult(
        name="verify",
        title=(
            f"verify: stagebox verify of files it stored, (small) {small} in "
            f"{p.small_folders} folders and (big) one {human_size(p.big_bytes)} file, vs "
            "openssl dgst -sha256 over the same files (one process), page cache warm"
        ),
        sides=list(VERIFY_SIDES),
        pairs=list(VERIFY_PAIRS),
        ratio_of="wall_s",
        targets=[
            Target(
                f"verify: stagebox time <= 1.5x openssl dgst time, {small}",
                "<=",
                1.5,
                pair=VERIFY_PAIRS[0],
            ),
            Target(
                f"verify: stagebox time <= 1.5x openssl dgst time, {human_size(p.big_bytes)}",
                "<=",
                1.5,
                pair=VERIFY_PAIRS[1],
            ),
        ],
        params={**small_params(p), "big_file_bytes": p.big_bytes},
    )


def run_verify(b: Bench, result: CaseResult) -> None:
    p = b.profile
    tree = small_tree(b.workloads, p.small_files, p.small_folders, p.small_bytes)
    folder = big_file(b.workloads, p.big_bytes, repeat_block=False)
    # the harness's own digests: what both sides must find; reading them warms the cache
    small, big = digests_of(tree), digests_of(folder)
    n, nbytes = p.small_files, p.small_files * p.small_bytes
    uploads = {"bench-verify-small": (tree, n), "bench-verify-big": (folder, 1)}
    with verify_stage(b, uploads) as stage:
        sides = [
            (
                "stagebox small",
                lambda label: stagebox_verify(
                    b, stage, tree, "bench-verify-small", small, nbytes, label
                ),
            ),
            ("openssl small", lambda label: openssl_dgst(b, tree, small, nbytes, label)),
            (
                "stagebox big",
                lambda label: stagebox_verify(
                    b, stage, folder, "bench-verify-big", big, p.big_bytes, label
                ),
            ),
            ("openssl big", lambda label: openssl_dgst(b, folder, big, p.big_bytes, label)),
        ]
        alternate(b, result, sides, p.warmups, p.runs)


# -- audit: an upload's throughput with the background audit reading, and without -------

AUDIT_SETTLE_S = 2.0  # after the server is up, before the clock starts (both sides)
AUDIT_RATE = 25e6  # the default STAGEBOX_AUDIT_MAX_MB_S, in bytes/s


def plan_audit(p: Profile) -> CaseResult:
    store = p.audit_objects * p.audit_object_bytes
    return CaseResult(
        name="audit",
        title=(
            f"audit: stagebox upload of {human_size(p.big_bytes)} (http) to a server whose "
            f"store holds {p.audit_objects} due objects of {human_size(p.audit_object_bytes)} "
            f"({human_size(store)}), background audit at its default rate vs audit off"
        ),
        sides=["audit on", "audit off"],
        ratio_of="throughput",
        targets=[
            Target("audit: upload throughput with the audit on >= 0.90x with it off", ">=", 0.9)
        ],
        params={
            "file_bytes": p.big_bytes,
            "store_objects": p.audit_objects,
            "store_object_bytes": p.audit_object_bytes,
            "server_env": {**AUDIT_ENV, "STAGEBOX_AUDIT_ENABLED": "true | false"},
            "settle_s": AUDIT_SETTLE_S,
            "warmups": p.warmups,
            "runs": p.audit_runs,
        },
    )


def run_audit(b: Bench, result: CaseResult) -> None:
    p = b.profile
    size = b.profile.big_bytes
    folder = big_file(b.workloads, size, repeat_block=False)
    objects = object_set(b.workloads, p.audit_objects, p.audit_object_bytes)
    store = audit_store(b, objects, p.audit_objects, p.audit_objects * p.audit_object_bytes)
    try:
        sides = [
            (
                side,
                lambda label, on=on: stagebox_upload_audited(
                    b, store, folder, size, label, on, AUDIT_SETTLE_S
                ),
            )
            for side, on in (("audit on", True), ("audit off", False))
        ]
        alternate(b, result, sides, p.warmups, p.audit_runs)
    finally:
        shutil.rmtree(store.data.parent, ignore_errors=True)
    check_audit_read(result)


def check_audit_read(result: CaseResult) -> None:
    """The audit really read during every timed upload with it on, and never with it off.

    What the audit read is the server's rchar (bytes its read calls returned, page cache
    or not) beyond the median of the audit-off runs, whose rchar is the upload's own (the
    request bodies it took off the sockets): it must be at least half of what the audit's
    rate allows over the upload. ``server_read_bytes`` (from the disk) is recorded beside.
    """
    off = [r["server_rchar"] for r in result.runs if not r["audit_enabled"]]
    if not off:
        return
    upload_rchar = statistics.median(off)
    for rec in result.runs:
        rec["audit_read_bytes"] = rec["server_rchar"] - upload_rchar
        rec["audit_read_mb_s"] = rec["audit_read_bytes"] / 1e6 / rec["wall_s"]
    for rec in result.runs:
        wanted = 0.5 * AUDIT_RATE * rec["wall_s"]
        if rec["audit_enabled"] and rec["audit_read_bytes"] < wanted:
            raise RunFailed(
                f"{rec['side']} run {rec['index']}: the server read {rec['audit_read_bytes']:,.0f}"
                f" bytes beyond the upload's own, under half of what the audit's rate allows "
                f"over the upload ({wanted:,.0f}): the audit was not reading"
            )
        if not rec["audit_enabled"] and rec["audits_recorded"]:
            raise RunFailed(f"{rec['side']} run {rec['index']}: audits recorded with it off")


# -- probes ------------------------------------------------------------------------------


def needs_feature(word: str) -> Callable[[Bench], str | None]:
    def probe(b: Bench) -> str | None:
        if in_stagebox_help(word):
            return None
        return f"stagebox has no {word} support yet (no '{word}' in any `stagebox ... --help`)"

    return probe


def needs_sshd(b: Bench) -> str | None:
    return None if b.sshd is not None else f"no sshd: {b.sshd_error}"


def needs_verify(b: Bench) -> str | None:
    if which("openssl") is None:
        return "openssl not found (Debian package openssl)"
    return needs_feature("verify")(b)


def needs_sftpd(b: Bench) -> str | None:
    """The built-in endpoint's cases: stagebox's --sftp-port, and sshd for the peers."""
    return needs_feature("--sftp-port")(b) or needs_sshd(b)


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
    Case("sftpd-big", plan_sftpd_big, run_sftpd_big, probe=needs_sftpd),
    Case("sftpd-small", plan_sftpd_small, run_sftpd_small, probe=needs_sftpd),
    Case("sftpd-memory", plan_sftpd_memory, run_sftpd_memory, probe=needs_feature("--sftp-port")),
    Case("s3", plan_s3, run_s3, probe=needs_s3),
    Case("ingest", plan_ingest, run_ingest, probe=needs_ingest),
    Case("rerun", plan_rerun, run_rerun, probe=needs_sshd),
    Case("verify", plan_verify, run_verify, probe=needs_verify),
    Case("audit", plan_audit, run_audit, probe=needs_feature("audit")),
]


def execute(case: Case, b: Bench) -> CaseResult:
    """Run one case; never raises, the result says what happened."""
    started = time.monotonic()
    result = case.plan(b.profile)
    reason = case.probe(b) or (None if case.run else "harness case not written yet")
    if reason or case.run is None:
        result.status, result.reason = "not available", reason or ""
        print(f"== {result.title}: not available ({result.reason})", flush=True)
        return result
    print(f"== {result.title}", flush=True)
    for note in result.notes:
        print(f"  note: {note}", flush=True)
    try:
        case.run(b, result)
    except RunFailed as exc:
        result.status, result.reason = "failed", str(exc)
    except Exception as exc:  # a harness bug must not lose the other cases' results
        result.status, result.reason = "failed", f"{exc!r}\n{traceback.format_exc()}"
    if result.status == "failed":
        print(f"  FAILED: {result.reason}", flush=True)
    result.duration_s = time.monotonic() - started
    print(f"  ({result.name}: {result.duration_s:.0f} s)", flush=True)
    return result
