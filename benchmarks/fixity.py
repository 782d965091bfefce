"""The sides of the rerun, verify and audit cases: what a client or server does to prove
bytes stay stored, without sending them again.

- rerun: ``stagebox upload`` over a tree it already uploaded (same server, same journal),
  against a no-op ``rsync -a`` into a destination that already holds the tree. Whether a
  side read file contents is told by the files' access times: before each run every file's
  atime is set below its mtime (mtime kept), and under ``relatime`` any read of the file's
  data (``read``, ``mmap``, from disk or from the page cache alike) then moves it, while
  ``stat`` and ``open`` do not. ``read_bytes`` (block-device reads) says little on its own
  while the tree is in the page cache; ``rchar`` (bytes returned by read syscalls) is set
  against the tree's size and a baseline run.
- verify: ``stagebox verify`` against ``openssl dgst -sha256`` over the same files, both
  checked against the digests the harness computed itself.
- audit: a ``stagebox upload`` to a server whose store holds objects due an audit, with the
  background audit on (its default rate) and off; the server's ``read_bytes`` during the
  timed upload tells how much the audit read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import proc_io, run_measured
from benchmarks.servers import StageboxServer
from benchmarks.sides import (
    Bench,
    Record,
    RunFailed,
    ServerSetup,
    _tail,
    fresh_server,
    record,
    server_template,
)
from benchmarks.workloads import BLOCK, count_files, human_size, is_ready, mark
from stagebox.server.process import stagebox_cmd

ATIME_BACK_NS = 10 * 10**9  # the mark: atime 10 s before mtime


def _files(tree: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(tree):
        for name in names:
            yield Path(dirpath) / name


def mark_unread(tree: Path) -> int:
    """Set every file's atime to 10 s before its mtime (the mtime is kept, so neither
    rsync's quick check nor stagebox's journal sees a change); returns the file count."""
    n = 0
    for path in _files(tree):
        st = path.stat()
        os.utime(path, ns=(st.st_mtime_ns - ATIME_BACK_NS, st.st_mtime_ns))
        n += 1
    return n


def files_read(tree: Path) -> int:
    """Files whose data was read since ``mark_unread``: their atime left the mark."""
    return sum(
        1
        for path in _files(tree)
        if (st := path.stat()).st_atime_ns != st.st_mtime_ns - ATIME_BACK_NS
    )


def atime_reason(folder: Path) -> str | None:
    """Why a read would not move a marked atime here (noatime, or a filesystem without
    atimes); None when it does."""
    probe = folder / ".atime-probe"
    probe.write_bytes(b"x" * 4096)
    try:
        st0 = probe.stat()
        os.utime(probe, ns=(st0.st_mtime_ns - ATIME_BACK_NS, st0.st_mtime_ns))
        probe.read_bytes()
        st = probe.stat()
        if st.st_atime_ns == st.st_mtime_ns - ATIME_BACK_NS:
            return f"a read does not update atime under {folder} (mounted noatime?)"
        return None
    finally:
        probe.unlink()


def _client_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STAGEBOX_TOKEN"}
    env["STAGEBOX_STATE_DIR"] = str(state)
    return env


def _run_json(cmd: list[str], env: dict[str, str], what: str) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    try:
        return dict(json.loads(out.stdout))
    except ValueError as exc:
        raise RunFailed(f"{what}: exit {out.returncode}, no JSON:\n{out.stderr[-3000:]}") from exc


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in _files(path))


# -- rerun ------------------------------------------------------------------------------


@dataclass
class RerunStage:
    """One server and one client journal for the case, the tree uploaded once (untimed)."""

    server: StageboxServer
    token: str
    dataset: str
    state: Path
    baseline_rchar: int  # rchar of a stagebox upload of a one-file tree already stored

    def upload_cmd(self, src: Path, dataset: str | None = None) -> list[str]:
        return stagebox_cmd(
            "upload", str(src), "--server", self.server.url, "--token", self.token,
            "--dataset", dataset or self.dataset, "--json",
        )  # fmt: skip


@contextmanager
def rerun_stage(b: Bench, tree: Path, files: int) -> Iterator[RerunStage]:
    """A server holding ``tree`` stored (uploaded once), and the journal of that upload;
    the baseline: the same command over a one-file tree uploaded just before, twice."""
    run_dir = b.fresh_dir("rerun-stagebox-server")
    state = run_dir / "client-state"
    state.mkdir()
    env = _client_env(state)
    with fresh_server(b, run_dir) as (server, token):
        stage = RerunStage(server, token, "bench-rerun", state, 0)
        print(f"  setting up: first upload of {files:,} files (not timed)", flush=True)
        first = _run_json(stage.upload_cmd(tree), env, "first upload")["totals"]
        if (first.get("files"), first.get("verified")) != (files, files):
            raise RunFailed(f"first upload: totals {first}, expected {files} verified")
        one = run_dir / "one"
        one.mkdir()
        (one / "one.bin").write_bytes(os.urandom(4096))
        _run_json(stage.upload_cmd(one, "bench-rerun-baseline"), env, "baseline upload")
        out, err = run_dir / "baseline.json", run_dir / "baseline.err"
        m = run_measured(stage.upload_cmd(one, "bench-rerun-baseline"), stdout=out, stderr=err)
        totals = json.loads(out.read_text())["totals"]
        if m.exit_code != 0 or totals.get("skipped") != 1:
            raise RunFailed(f"baseline rerun: exit {m.exit_code}, totals {totals}")
        stage.baseline_rchar = m.client_io.get("rchar", 0)
        yield stage
    shutil.rmtree(run_dir, ignore_errors=True)


def stagebox_rerun(
    b: Bench, stage: RerunStage, tree: Path, files: int, nbytes: int, label: str
) -> Record:
    """A rerun of the first upload: every file must be skipped, 0 bytes sent, none read."""
    run_dir = b.fresh_dir(label)
    mark_unread(tree)
    out, err = run_dir / "client.json", run_dir / "client.err"
    os.sync()
    m = run_measured(
        stage.upload_cmd(tree),
        stdout=out,
        stderr=err,
        env=_client_env(stage.state),
        server=stage.server.process,
    )
    read = files_read(tree)
    try:
        totals = json.loads(out.read_text())["totals"]
    except (OSError, ValueError, KeyError) as exc:
        raise RunFailed(f"stagebox rerun ({label}) exit {m.exit_code}:\n{_tail(err)}") from exc
    expected = {"files": files, "verified": 0, "skipped": files, "failed": 0, "bytes_sent": 0}
    got = {k: totals.get(k) for k in expected}
    if m.exit_code != 0 or got != expected:
        raise RunFailed(
            f"stagebox rerun ({label}) exit {m.exit_code}, totals {totals}, expected {expected}"
            f"\n{_tail(err)}\n-- server log --\n{_tail(stage.server.log_path)}"
        )
    io = m.client_io
    rchar = io.get("rchar", 0)
    shutil.rmtree(run_dir)
    return record(
        m,
        files=files,
        bytes=nbytes,
        bytes_sent=totals["bytes_sent"],
        client_reported_s=totals.get("seconds"),
        files_read=read,
        read_bytes=io.get("read_bytes"),
        rchar=rchar,
        syscr=io.get("syscr"),
        rchar_beyond_baseline=rchar - stage.baseline_rchar,
        rchar_beyond_baseline_per_tree=(rchar - stage.baseline_rchar) / nbytes,
        journal_bytes=_dir_bytes(stage.state),
    )


def rsync_filled(b: Bench, tree: Path, files: int, nbytes: int) -> Path:
    """A destination on the harness's sshd that already holds ``tree`` (one rsync, untimed)."""
    sshd = b.need_sshd()
    dest = b.fresh_dir("rerun-rsync-dest") / "dest"
    dest.mkdir()
    cmd = ["rsync", "-a", "-e", sshd.ssh_command(), f"{tree}/", sshd.remote(dest) + "/"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or count_files(dest) != (files, nbytes):
        raise RunFailed(f"first rsync: exit {done.returncode}, {count_files(dest)}: {done.stderr}")
    return dest


def rsync_noop(b: Bench, tree: Path, dest: Path, files: int, nbytes: int, label: str) -> Record:
    """``rsync -a -i`` into ``dest``, which holds the tree: it must change nothing (its
    itemized list is empty) and read no file's data."""
    sshd = b.need_sshd()
    run_dir = b.fresh_dir(label)
    mark_unread(tree)
    out, err = run_dir / "client.out", run_dir / "client.err"
    cmd = ["rsync", "-a", "-i", "-e", sshd.ssh_command(), f"{tree}/", sshd.remote(dest) + "/"]
    os.sync()
    m = run_measured(
        cmd,
        stdout=out,
        stderr=err,
        server=sshd.process,
        drain_server_children=True,
        groups={"server": sshd.cpu_group} if sshd.cpu_group else None,
    )
    read = files_read(tree)
    changes = out.read_text().strip()
    if m.exit_code != 0 or changes or count_files(dest) != (files, nbytes):
        raise RunFailed(
            f"rsync no-op ({label}) exit {m.exit_code}, changed {changes[:500]!r}, dest "
            f"{count_files(dest)}:\n{_tail(err)}"
        )
    io = m.client_io
    shutil.rmtree(run_dir)
    return record(
        m,
        files=files,
        bytes=nbytes,
        files_read=read,
        read_bytes=io.get("read_bytes"),
        rchar=io.get("rchar"),
        syscr=io.get("syscr"),
    )


# -- verify -----------------------------------------------------------------------------


def digests_of(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by its path relative to it (a check, never
    timed; it also leaves the files in the page cache)."""
    found = {}
    for path in _files(folder):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(BLOCK // 16):
                h.update(chunk)
        found[str(path.relative_to(folder))] = h.hexdigest()
    return found


@dataclass
class VerifyStage:
    server: StageboxServer
    token: str
    state: Path


@contextmanager
def verify_stage(b: Bench, uploads: dict[str, tuple[Path, int]]) -> Iterator[VerifyStage]:
    """One server holding each ``dataset -> (folder, files)`` uploaded (untimed)."""
    run_dir = b.fresh_dir("verify-server")
    state = run_dir / "client-state"
    state.mkdir()
    with fresh_server(b, run_dir) as (server, token):
        stage = VerifyStage(server, token, state)
        for dataset, (folder, files) in uploads.items():
            print(f"  setting up: upload {folder.name} as {dataset} (not timed)", flush=True)
            cmd = stagebox_cmd(
                "upload", str(folder), "--server", server.url, "--token", token,
                "--dataset", dataset, "--json",
            )  # fmt: skip
            totals = _run_json(cmd, _client_env(state), f"upload of {dataset}")["totals"]
            if (totals.get("files"), totals.get("verified")) != (files, files):
                raise RunFailed(f"upload of {dataset}: totals {totals}")
        yield stage
    shutil.rmtree(run_dir, ignore_errors=True)


def stagebox_verify(
    b: Bench,
    stage: VerifyStage,
    folder: Path,
    dataset: str,
    expected: dict[str, str],
    nbytes: int,
    label: str,
) -> Record:
    """``stagebox verify FOLDER --dataset D --json``: every file stored, with the sha256
    the harness computed."""
    run_dir = b.fresh_dir(label)
    out, err = run_dir / "client.json", run_dir / "client.err"
    cmd = stagebox_cmd(
        "verify", str(folder), "--server", stage.server.url, "--token", stage.token,
        "--dataset", dataset, "--json",
    )  # fmt: skip
    os.sync()
    m = run_measured(
        cmd, stdout=out, stderr=err, env=_client_env(stage.state), server=stage.server.process
    )
    try:
        report = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        raise RunFailed(f"stagebox verify ({label}) exit {m.exit_code}:\n{_tail(err)}") from exc
    totals = report.get("totals", {})
    files = len(expected)
    got = {
        str(Path(f["path"]).relative_to(folder)): f["sha256"]
        for f in report.get("files", [])
        if f.get("state") == "stored"
    }
    if m.exit_code != 0 or not report.get("ok") or totals.get("stored") != files:
        raise RunFailed(f"stagebox verify ({label}) exit {m.exit_code}, totals {totals}")
    if got != expected:
        wrong = sorted(k for k in expected if got.get(k) != expected[k])[:5]
        raise RunFailed(f"stagebox verify ({label}): digests differ from the harness's: {wrong}")
    shutil.rmtree(run_dir)
    return record(m, files=files, bytes=nbytes)


OPENSSL_LINE = re.compile(r"^(?:SHA2-256|SHA256)\((.*)\)= ([0-9a-f]{64})$")
XARGS_S = 1 << 20  # the command-line size for xargs: 10,000 relative paths fit in one


def openssl_dgst(
    b: Bench, folder: Path, expected: dict[str, str], nbytes: int, label: str
) -> Record:
    """``find . -type f -print0 | xargs -0 openssl dgst -sha256`` in ``folder``: one openssl
    process over every file (each batch xargs starts says so on stderr; there must be one),
    its digests those the harness computed."""
    argv_bytes = sum(len(f"./{k}") + 1 for k in expected)
    if argv_bytes > XARGS_S // 2:
        raise RunFailed(f"{argv_bytes} bytes of paths would not fit one openssl command line")
    script = (
        f'cd "$1" && find . -type f -print0 | xargs -0 -s {XARGS_S} '
        "sh -c 'echo batch >&2; exec openssl dgst -sha256 \"$@\"' sh"
    )
    run_dir = b.fresh_dir(label)
    out, err = run_dir / "client.out", run_dir / "client.err"
    os.sync()
    m = run_measured(["sh", "-c", script, "sh", str(folder)], stdout=out, stderr=err)
    got = {}
    for line in out.read_text().splitlines():
        if match := OPENSSL_LINE.match(line):
            got[match.group(1).removeprefix("./")] = match.group(2)
    batches = err.read_text().split().count("batch")
    if m.exit_code != 0 or got != expected or batches != 1:
        raise RunFailed(
            f"openssl dgst ({run_dir.name}) exit {m.exit_code}, {len(got)} digests of "
            f"{len(expected)} ({'equal' if got == expected else 'differ'}), {batches} "
            f"openssl processes:\n{_tail(err)}"
        )
    shutil.rmtree(run_dir)
    return record(m, files=len(expected), bytes=nbytes, openssl_processes=batches)


# -- audit ------------------------------------------------------------------------------


def object_set(root: Path, count: int, size: int) -> Path:
    """A folder of ``count`` files of ``size`` bytes: one random block, each file stamped
    with its index in its first 8 bytes (no two alike)."""
    folder = root / f"objects-{count}x{human_size(size)}"
    spec: dict[str, object] = {"count": count, "size": size}
    if is_ready(folder, spec):
        return folder
    print(f"  generating {folder} ({count} files of {human_size(size)})", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    block = bytearray(os.urandom(size))
    for i in range(count):
        block[:8] = (i + 1).to_bytes(8, "little")
        (folder / f"object{i:04d}.bin").write_bytes(block)
    mark(folder, spec)
    return folder


AUDIT_ENV = {  # every stored object is due again as soon as it was checked
    "STAGEBOX_AUDIT_INTERVAL_DAYS": "1e-9",
    "STAGEBOX_AUDIT_CHECK_INTERVAL": "1",
}


def audit_setup(enabled: bool) -> ServerSetup:
    return ServerSetup(
        name="default",  # the same template: the uploader only
        env={**AUDIT_ENV, "STAGEBOX_AUDIT_ENABLED": "true" if enabled else "false"},
    )


@dataclass
class AuditStore:
    """A data dir whose store holds ``objects`` stored objects (``nbytes`` in all)."""

    data: Path
    token: str
    objects: int
    nbytes: int


def audit_store(b: Bench, folder: Path, count: int, nbytes: int) -> AuditStore:
    """Upload ``folder`` once (untimed) to a server with the audit off; its data dir is
    the store every run of the case starts from."""
    run_dir = b.fresh_dir("audit-store")
    template, token = server_template(b, ServerSetup())
    server = StageboxServer(run_dir / "server-data", env={"STAGEBOX_AUDIT_ENABLED": "false"})
    shutil.copytree(template, server.data_dir)
    state = run_dir / "client-state"
    state.mkdir()
    print(f"  setting up: store of {count} objects, {human_size(nbytes)} (not timed)", flush=True)
    server.start()
    try:
        cmd = stagebox_cmd(
            "upload", str(folder), "--server", server.url, "--token", token,
            "--dataset", "audit-store", "--json",
        )  # fmt: skip
        totals = _run_json(cmd, _client_env(state), "store upload")["totals"]
    finally:
        server.stop()
    if (totals.get("files"), totals.get("verified")) != (count, count):
        raise RunFailed(f"store upload: totals {totals}, expected {count} verified")
    stored = _stored_objects(server.data_dir)
    if stored != count:
        raise RunFailed(f"store: {stored} stored replicas in the catalog, expected {count}")
    return AuditStore(server.data_dir, token, count, nbytes)


def _stored_objects(data: Path) -> int:
    with sqlite3.connect(f"file:{data / 'catalog.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM replicas WHERE state = 'stored'").fetchone()[0])


def audit_rows(data: Path) -> int:
    with sqlite3.connect(f"file:{data / 'catalog.db'}?mode=ro", uri=True, timeout=30) as db:
        return int(db.execute("SELECT count(*) FROM audits").fetchone()[0])


def copy_store(store: AuditStore, dest: Path) -> None:
    """The store's data dir at ``dest``: stored objects hard-linked (they are only read:
    no stored key is written twice), everything else (the catalog) copied; then the
    objects are dropped from the page cache (``POSIX_FADV_DONTNEED``) so the audit reads
    them from the disk, as it would a store larger than memory."""

    def link_or_copy(src: str, dst: str) -> object:
        if Path(src).is_relative_to(store.data / "store"):
            os.link(src, dst)
            return dst
        return shutil.copy2(src, dst)

    shutil.copytree(store.data, dest, copy_function=link_or_copy)
    for path in _files(dest / "store"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def stagebox_upload_audited(
    b: Bench,
    store: AuditStore,
    folder: Path,
    nbytes: int,
    label: str,
    enabled: bool,
    settle_s: float,
) -> Record:
    """``stagebox upload`` of ``folder`` to a fresh server on a copy of the store, with
    the background audit on or off (default rate either way); the server's I/O and the
    audits recorded during the timed upload say whether the audit was reading."""
    if "STAGEBOX_AUDIT_MAX_MB_S" in os.environ:
        raise RunFailed("STAGEBOX_AUDIT_MAX_MB_S is set: the case measures the default rate")
    run_dir = b.fresh_dir(label)
    state = run_dir / "client-state"
    state.mkdir()
    setup = audit_setup(enabled)
    server = StageboxServer(run_dir / "server-data", env=dict(setup.env))
    copy_store(store, server.data_dir)
    out, err = run_dir / "client.json", run_dir / "client.err"
    cmd = stagebox_cmd(
        "upload", str(folder), "--server", "", "--token", store.token,
        "--dataset", f"bench-{run_dir.name}", "--json",
    )  # fmt: skip
    server.start()
    try:
        cmd[cmd.index("--server") + 1] = server.url
        time.sleep(settle_s)  # both sides alike: the audit (if on) is reading by now
        os.sync()
        io0, rows0 = proc_io(server.process.pid), audit_rows(server.data_dir)
        m = run_measured(cmd, stdout=out, stderr=err, env=_client_env(state), server=server.process)
        io1, rows1 = proc_io(server.process.pid), audit_rows(server.data_dir)
    finally:
        server.stop()
    try:
        totals = json.loads(out.read_text())["totals"]
    except (OSError, ValueError, KeyError) as exc:
        raise RunFailed(f"stagebox upload ({label}) exit {m.exit_code}:\n{_tail(err)}") from exc
    if m.exit_code != 0 or (totals.get("files"), totals.get("verified")) != (1, 1):
        raise RunFailed(
            f"stagebox upload ({label}) exit {m.exit_code}, totals {totals}\n{_tail(err)}"
            f"\n-- server log --\n{_tail(server.log_path)}"
        )
    read = io1.get("read_bytes", 0) - io0.get("read_bytes", 0)
    rchar = io1.get("rchar", 0) - io0.get("rchar", 0)
    shutil.rmtree(run_dir)
    return record(
        m,
        files=1,
        bytes=nbytes,
        bytes_sent=totals.get("bytes_sent"),
        client_reported_s=totals.get("seconds"),
        audit_enabled=enabled,
        server_read_bytes=read,
        server_rchar=rchar,
        server_read_mb_s=read / 1e6 / m.wall_s,
        audits_recorded=rows1 - rows0,
    )
