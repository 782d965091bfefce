"""One measured run of one side: stagebox upload, scp, rsync, cp+sha256sum.

Every run starts from fresh state and is checked after the clock stops: a stagebox run gets
its own server data dir, server process and client journal (``STAGEBOX_STATE_DIR``), and
its ``--json`` totals must say every file was verified; an scp/rsync run gets an empty
destination whose contents are counted afterwards. Dirty pages are flushed (``sync``)
before the clock starts so one run's write-back does not land in the next one's time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.measure import Measurement, run_measured
from benchmarks.servers import Sshd, StageboxServer
from benchmarks.workloads import count_files
from stagebox.server.process import stagebox_cmd

Record = dict[str, Any]


class RunFailed(RuntimeError):
    """A run did not do what it was asked; the case stops and the report says why."""


@dataclass(frozen=True)
class Profile:
    name: str
    big_bytes: int
    small_files: int
    small_folders: int
    small_bytes: int
    mem_bytes: int
    warmups: int
    runs: int
    mem_warmups: int
    mem_runs: int


@dataclass
class Bench:
    """What every case needs: the profile, the work dir and the shared sshd."""

    profile: Profile
    work: Path
    sshd: Sshd | None = None
    sshd_error: str | None = None
    keep: list[Path] = field(default_factory=list)

    @property
    def workloads(self) -> Path:
        return self.work / "workloads"

    def fresh_dir(self, label: str) -> Path:
        path = self.work / "runs" / label
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def need_sshd(self) -> Sshd:
        if self.sshd is None:
            raise RunFailed(f"no sshd: {self.sshd_error}")
        return self.sshd


@cache
def stagebox_help() -> str:
    """The help of every stagebox command group, to probe for features."""
    text = []
    for args in ((), ("serve",), ("upload",), ("admin",)):
        out = subprocess.run(stagebox_cmd(*args, "--help"), capture_output=True, text=True)
        text.append(out.stdout)
    return "\n".join(text)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def record(m: Measurement, **extra: Any) -> Record:
    return {
        "wall_s": m.wall_s,
        "client_cpu_s": m.client_cpu_s,
        "server_cpu_s": m.server_cpu_s,
        "cpu_s": m.cpu_s,
        "client_peak_rss": m.client_peak_rss,
        "server_peak_rss": m.server_peak_rss,
        "exit_code": m.exit_code,
        "rss_samples": m.samples,
        **extra,
    }


def stagebox_upload(b: Bench, src: Path, files: int, nbytes: int, label: str) -> Record:
    """``stagebox upload SRC --dataset`` to a fresh server; every file must be verified."""
    run_dir = b.fresh_dir(label)
    server = StageboxServer(run_dir / "server-data")
    token = server.add_uploader("bench")
    server.start()
    try:
        state = run_dir / "client-state"
        state.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "STAGEBOX_TOKEN"}
        env["STAGEBOX_STATE_DIR"] = str(state)
        dataset = f"bench-{label}"
        cmd = stagebox_cmd(
            "upload",
            str(src),
            "--server",
            server.url,
            "--token",
            token,
            "--dataset",
            dataset,
            "--json",
        )
        os.sync()
        out, err = run_dir / "client.json", run_dir / "client.err"
        m = run_measured(cmd, stdout=out, stderr=err, env=env, server=server.process)
    finally:
        server.stop()
    try:
        totals = json.loads(out.read_text())["totals"]
    except (OSError, ValueError, KeyError) as exc:
        raise RunFailed(
            f"stagebox upload ({label}) exit {m.exit_code}, no JSON report ({exc}):\n"
            f"{_tail(err)}\n-- server log --\n{_tail(server.log_path)}"
        ) from exc
    expected = {"files": files, "verified": files, "skipped": 0, "failed": 0}
    got = {k: totals.get(k) for k in expected}
    if m.exit_code != 0 or got != expected:
        failures = [
            f"{f.get('path')}: {f.get('error')}"
            for f in json.loads(out.read_text())["files"]
            if f.get("state") == "failed"
        ][:5]
        raise RunFailed(
            f"stagebox upload ({label}) exit {m.exit_code}, totals {totals}, expected {expected}"
            f"\nfirst failures: {failures}\n{_tail(err)}\n-- server log --\n"
            f"{_tail(server.log_path)}"
        )
    shutil.rmtree(run_dir)
    return record(
        m,
        files=files,
        bytes=nbytes,
        bytes_sent=totals.get("bytes_sent"),
        client_reported_s=totals.get("seconds"),
    )


def _to_sshd(
    b: Bench, label: str, command: Callable[[Sshd, Path], list[str]]
) -> tuple[Measurement, Path, Path, Path]:
    """Run an ssh peer tool into an empty folder on the local sshd, measured.

    Returns the measurement, the destination, the run dir and the stderr file.
    """
    sshd = b.need_sshd()
    run_dir = b.fresh_dir(label)
    dest = run_dir / "dest"
    dest.mkdir()
    os.sync()
    err = run_dir / "client.err"
    m = run_measured(
        command(sshd, dest),
        stdout=run_dir / "client.out",
        stderr=err,
        server=sshd.process,
        drain_server_children=True,
    )
    return m, dest, run_dir, err


def scp_copy(b: Bench, path: Path, label: str) -> Record:
    """``scp`` one file into an empty folder on the local sshd."""
    m, dest, run_dir, err = _to_sshd(
        b,
        label,
        lambda sshd, dest: [
            "scp", "-q", "-P", str(sshd.port), *sshd.ssh_options(), str(path), sshd.remote(dest)
        ],
    )  # fmt: skip
    got = dest / path.name
    size = path.stat().st_size
    if m.exit_code != 0 or not got.exists() or got.stat().st_size != size:
        raise RunFailed(f"scp ({label}) exit {m.exit_code}, {got} not {size} bytes:\n{_tail(err)}")
    shutil.rmtree(run_dir)
    return record(m, files=1, bytes=size)


def rsync_tree(b: Bench, src: Path, files: int, nbytes: int, label: str) -> Record:
    """``rsync -a -e ssh`` of a tree into an empty folder on the local sshd."""
    m, dest, run_dir, err = _to_sshd(
        b,
        label,
        lambda sshd, dest: [
            "rsync", "-a", "-e", sshd.ssh_command(), f"{src}/", sshd.remote(dest) + "/"
        ],
    )  # fmt: skip
    got = count_files(dest)
    if m.exit_code != 0 or got != (files, nbytes):
        raise RunFailed(
            f"rsync ({label}) exit {m.exit_code}, got (files, bytes) {got}, "
            f"expected {(files, nbytes)}:\n{_tail(err)}"
        )
    shutil.rmtree(run_dir)
    return record(m, files=files, bytes=nbytes)


def cp_then_sha256(b: Bench, path: Path, label: str) -> Record:
    """The local limit: ``cp`` the file, then ``sha256sum`` the copy (two timed commands)."""
    run_dir = b.fresh_dir(label)
    copy = run_dir / path.name
    os.sync()
    cp = run_measured(
        ["cp", str(path), str(copy)], stdout=run_dir / "cp.out", stderr=run_dir / "cp.err"
    )
    sha = run_measured(
        ["sha256sum", str(copy)], stdout=run_dir / "sha.out", stderr=run_dir / "sha.err"
    )
    if cp.exit_code != 0 or sha.exit_code != 0:
        raise RunFailed(f"cp/sha256sum ({label}) exit {cp.exit_code}/{sha.exit_code}")
    digest = (run_dir / "sha.out").read_text().split()[0]
    shutil.rmtree(run_dir)
    both = Measurement(
        wall_s=cp.wall_s + sha.wall_s,
        exit_code=0,
        client_cpu_s=cp.client_cpu_s + sha.client_cpu_s,
        client_peak_rss=max(cp.client_peak_rss, sha.client_peak_rss),
        server_cpu_s=None,
        server_peak_rss=None,
        samples=cp.samples + sha.samples,
    )
    size = path.stat().st_size
    return record(both, files=1, bytes=size, cp_s=cp.wall_s, sha256_s=sha.wall_s, sha256=digest)
